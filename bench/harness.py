"""Plumbing of the benchmark: processes, ``/proc`` readings, ``wrk`` runs, statistics.

Every process the benchmark starts is a :class:`Proc`: started with its output in a log file of
the run's temporary directory, addressed by its own PID, and stopped (SIGTERM, then SIGKILL) by
:class:`Procs` in a ``finally``. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process did not start, a tool is missing)."""


# -- tools ------------------------------------------------------------------------------------

INSTALL_HINT = {
    "nginx": "apt-get install -y nginx",
    "wrk": "apt-get install -y wrk",
}


def require_tools(names: Iterable[str]) -> None:
    """Raise :class:`BenchError` naming how to install every missing tool."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        hints = "; ".join(
            f"{n}: `{INSTALL_HINT.get(n, 'apt-get install -y ' + n)}`" for n in missing
        )
        raise BenchError(
            f"missing tool(s): {', '.join(missing)}. Install them (as root, Debian): "
            f"`apt-get update && apt-get install -y {' '.join(missing)}` ({hints})"
        )


GATEWAY_SCRIPT: list[str] = []
"""The gateway's command, once :func:`use_runtime_install` or :func:`use_current_env` chose."""


def gateway_command() -> list[str]:
    """Return how the benchmark starts the gateway (see :func:`use_runtime_install`)."""
    if GATEWAY_SCRIPT:
        return GATEWAY_SCRIPT
    script = shutil.which("comfyui-gateway")
    return [script] if script else [sys.executable, "-m", "gateway"]


def use_current_env() -> str:
    """Run the gateway from this environment (test tools and all); return a description."""
    GATEWAY_SCRIPT[:] = gateway_command()
    return f"this environment ({' '.join(GATEWAY_SCRIPT)})"


def use_runtime_install(repo: Path, cache: Path) -> str:
    """Run the gateway as deployed: ``pip install '.[speed]'`` into a virtualenv of its own.

    That is what the Dockerfile does: runtime dependencies only (no test tools, whose extras
    change the gateway's memory: structlog imports ``rich`` when it is installed) and compiled
    bytecode. The virtualenv is kept in ``cache`` and rebuilt when the sources change.
    """
    digest = hashlib.sha256()
    for path in sorted([repo / "pyproject.toml", *(repo / "gateway").rglob("*")]):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes())
    venv = cache / f"venv-{digest.hexdigest()[:16]}"
    script = venv / "bin" / "comfyui-gateway"
    if not script.exists():
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        print(f"installing the gateway into {venv} (pip install '.[speed]')", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{repo}[speed]"],
            check=True,
            env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        )
    GATEWAY_SCRIPT[:] = [str(script)]
    return f"`pip install '.[speed]'` in a virtualenv of its own ({venv.name})"


def raise_nofile(target: int = 65536) -> int:
    """Raise this process's open-file limit (inherited by children); return the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """Return user+system CPU time of ``pid`` (``/proc/PID/stat`` utime+stime), seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """Return one ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


def rss_bytes(pid: int) -> int:
    """Return the resident set size of ``pid`` now."""
    return status_kb(pid, "VmRSS") * 1024


def reset_peak_rss(pid: int) -> None:
    """Reset ``VmHWM`` of ``pid`` to its current RSS (``echo 5 > /proc/PID/clear_refs``)."""
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def peak_rss_bytes(pid: int) -> int:
    """Return ``VmHWM`` (peak RSS since start or the last :func:`reset_peak_rss`)."""
    return status_kb(pid, "VmHWM") * 1024


def children_of(pid: int) -> list[int]:
    """Return the PIDs whose parent is ``pid``."""
    kids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


# -- processes --------------------------------------------------------------------------------


@dataclass
class Proc:
    """One started process, its log file, and the PIDs to measure (itself, nginx's worker)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    measure_pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """Return the PID of the started process."""
        return self.popen.pid

    @property
    def pids(self) -> list[int]:
        """Return the PIDs whose CPU and memory are this process's (nginx: its worker)."""
        return self.measure_pids or [self.pid]

    def cpu(self) -> float:
        """Return the CPU seconds used so far by :attr:`pids`."""
        return sum(cpu_seconds(p) for p in self.pids)

    def rss(self) -> int:
        """Return the RSS of :attr:`pids`, bytes."""
        return sum(rss_bytes(p) for p in self.pids)

    def reset_peak(self) -> None:
        """Reset the peak RSS of :attr:`pids`."""
        for p in self.pids:
            reset_peak_rss(p)

    def peak(self) -> int:
        """Return the peak RSS of :attr:`pids` since :meth:`reset_peak`, bytes."""
        return sum(peak_rss_bytes(p) for p in self.pids)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process (by PID) if it still runs."""
        if self.popen.poll() is None:
            os.kill(self.pid, sig)

    def stop(self) -> None:
        """Terminate the process by PID (thaw, SIGTERM, then SIGKILL) and reap it."""
        extra = [p for p in self.measure_pids if p != self.pid]
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        for pid in extra:  # nginx's worker, should the master have died without it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        """Return the end of the log file (for error messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Procs:
    """Start processes into one directory; :meth:`stop_all` stops each by its PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Proc] = []

    def spawn(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> Proc:
        """Start ``argv`` with stdout+stderr in ``WORKDIR/NAME.log``."""
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env={**os.environ, **(env or {})},
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        """Stop one process and forget it."""
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        """Stop every process still running, newest first."""
        for proc in reversed(self.started):
            with contextlib.suppress(Exception):
                proc.stop()
        self.started.clear()

    # -- the participants ---------------------------------------------------------------

    def wait_ready_line(self, proc: Proc) -> str:
        """Wait for ``READY http://HOST:PORT`` in the log; return the URL."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                break
            match = re.search(r"^READY (\S+)", proc.log.read_text(errors="replace"), re.M)
            if match:
                proc.url = match.group(1)
                return proc.url
            time.sleep(0.05)
        raise BenchError(f"{proc.name} did not start:\n{proc.tail()}")

    def backend(
        self, name: str, data_dir: Path, *, port: int = 0, max_upload_mb: int = 256
    ) -> Proc:
        """Start a simulated ComfyUI backend in fast mode (no job delay)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        proc = self.spawn(
            name,
            [
                sys.executable,
                "-m",
                "gateway.testing",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--fast",
                "--name",
                name,
                "--data-dir",
                str(data_dir),
                "--max-upload-size",
                str(max_upload_mb),
            ],
        )
        self.wait_ready_line(proc)
        return proc

    def ws_echo(self, name: str = "ws-echo") -> Proc:
        """Start the websocket echo backend (``bench/ws_echo.py``)."""
        proc = self.spawn(name, [sys.executable, str(BENCH / "ws_echo.py"), "--port", "0"])
        self.wait_ready_line(proc)
        return proc

    def gateway(self, name: str, config: str, *, port: int | None = None) -> Proc:
        """Write ``config`` (YAML) and start ``comfyui-gateway --config FILE --port P``."""
        port = port or free_port()
        path = self.workdir / f"{name}.yaml"
        path.write_text(config, encoding="utf-8")
        proc = self.spawn(
            name,
            [
                *gateway_command(),
                "--config",
                str(path),
                "--port",
                str(port),
                "--log-format",
                "json",
            ],
        )
        proc.url = f"http://127.0.0.1:{port}"
        wait_http(proc, proc.url + "/gateway/readyz", also=proc.url + "/system_stats")
        return proc

    def minimal_proxy(self, upstream: str) -> Proc:
        """Start the 20-line aiohttp pass-through proxy (``bench/minimal_proxy.py``)."""
        port = free_port()
        proc = self.spawn(
            "minimal", [sys.executable, str(BENCH / "minimal_proxy.py"), upstream, str(port)]
        )
        proc.url = f"http://127.0.0.1:{port}"
        wait_http(proc, proc.url + "/system_stats")
        return proc

    def nginx(self, name: str, conf: str, probe_path: str = "/system_stats") -> Proc:
        """Start nginx (master + 1 worker) on a generated config; measure its worker."""
        prefix = self.workdir / name
        prefix.mkdir(parents=True, exist_ok=True)
        conf_path = prefix / "nginx.conf"
        conf_path.write_text(conf, encoding="utf-8")
        proc = self.spawn(
            name,
            ["nginx", "-p", str(prefix), "-c", str(conf_path), "-e", str(prefix / "error.log")],
        )
        port = re.search(r"listen\s+127\.0\.0\.1:(\d+)", conf)
        assert port is not None
        proc.url = f"http://127.0.0.1:{port.group(1)}"
        wait_http(proc, proc.url + probe_path)
        deadline = time.monotonic() + 5
        while not (workers := children_of(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not workers:
            raise BenchError(f"nginx started no worker:\n{proc.tail()}")
        proc.measure_pids = workers
        return proc


def wait_http(proc: Proc, url: str, *, also: str | None = None) -> None:
    """Wait until ``url`` answers 200 (or ``also`` does, when ``url`` is 404)."""
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            break
        for candidate in (url, also):
            if candidate is None:
                continue
            try:
                with urllib.request.urlopen(candidate, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = f"{candidate}: HTTP {exc.code}"
            except OSError as exc:
                last = f"{candidate}: {exc}"
        time.sleep(0.1)
    raise BenchError(f"{proc.name} not ready ({last}):\n{proc.tail()}")


def http_post_json(url: str, body: bytes) -> int:
    """POST a JSON body; return the status (used to reset a backend's queue and history)."""
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def run_client(argv: Sequence[str], timeout: float) -> str:
    """Run a load client (a separate process) to completion; return its stdout."""
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"{argv[1:3]} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


# -- wrk --------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


@dataclass
class WrkResult:
    """What one ``wrk --latency`` run reported."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    bytes_read: float
    errors: int


def _latency(text: str, pct: str) -> float:
    match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    if not match:
        raise BenchError(f"no {pct}% latency in wrk output:\n{text}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(text: str) -> WrkResult:
    """Parse ``wrk --latency`` output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m), ([\d.]+)(B|KB|MB|GB) read", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not done or not rps:
        raise BenchError(f"unexpected wrk output:\n{text}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return WrkResult(
        requests=int(done.group(1)),
        seconds=float(done.group(2)) * _UNITS_MS[done.group(3)] / 1000,
        rps=float(rps.group(1)),
        p50_ms=_latency(text, "50"),
        p99_ms=_latency(text, "99"),
        bytes_read=float(done.group(4)) * _SIZE[done.group(5)],
        errors=errors,
    )


def wrk(
    url: str, *, connections: int, seconds: float, script: Path | None = None, timeout_s: int = 10
) -> WrkResult:
    """Run ``wrk -t1 -cN -dDs --latency`` against ``url`` (one load thread: 2-core machine)."""
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s",
        "--latency",
    ]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr}")
    return parse_wrk(done.stdout)


# -- statistics -------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Return the median."""
    return statistics.median(values)


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Return (min, max)."""
    return min(values), max(values)
