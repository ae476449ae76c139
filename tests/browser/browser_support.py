"""Processes and helpers of the browser tests (imported by ``conftest.py`` and the tests).

* Backends are ``python -m gateway.testing --port 0`` processes (they print ``READY <url>``), so
  a test can kill one by PID.
* The gateway is ``python -m gateway --config <yaml> --port <port>`` in a subprocess, awaited on
  ``GET /gateway/healthz`` (bounded).
* Everything waits on conditions with deadlines; nothing sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

CHROMIUM = Path(os.environ.get("GATEWAY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
"""Seconds a backend or the gateway may take to start."""
UI_TIMEOUT_MS = 15_000
"""Default Playwright wait (ms): generous for a loaded CI machine, never a fixed sleep."""

# Health checks fast enough that a killed backend is "down" within about a second.
TEST_HEALTH = {
    "interval": 0.5,
    "fast_interval": 0.2,
    "down_interval": 0.5,
    "timeout": 1.0,
    "jitter": 0.0,
    "rise": 1,
    "fall": 2,
}

# -- tools ---------------------------------------------------------------------------------


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip(
            f"browser tests need Debian's Chromium at {CHROMIUM}: "
            "apt-get install -y chromium chromium-driver"
        )


def import_playwright() -> Any:
    """Return ``playwright.sync_api``, installing the package with pip when it is missing."""
    try:
        return importlib.import_module("playwright.sync_api")
    except ImportError:
        pass
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "playwright>=1.40"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"could not install playwright with pip:\n{result.stderr[-2000:]}")
    importlib.invalidate_caches()
    return importlib.import_module("playwright.sync_api")


def free_port() -> int:
    """Return a TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """Terminate a child process (SIGTERM, then SIGKILL), reaping it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("COMFYUI_GATEWAY_ADMIN_TOKEN", None)
    env.pop("COMFYUI_GATEWAY_CONFIG", None)
    return env


# -- processes -------------------------------------------------------------------------------


@dataclass
class Backend:
    """One simulated ComfyUI process."""

    name: str
    url: str
    proc: subprocess.Popen[str]

    @property
    def pid(self) -> int:
        """Return the process id."""
        return self.proc.pid

    def kill(self) -> None:
        """Kill the process by PID (SIGKILL: no goodbye, like a crashed server)."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(5)


def start_backend(name: str) -> Backend:
    """Start ``python -m gateway.testing --port 0`` and wait for its ``READY <url>`` line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.testing", "--port", "0", "--name", name],
        cwd=REPO,
        env=_child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True, name=f"backend-{name}-stdout").start()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line.startswith("READY "):
            return Backend(name, line.split()[1].rstrip("/"), proc)
    stop(proc)
    raise RuntimeError(f"simulated backend {name!r} did not print READY in {START_TIMEOUT} s")


@dataclass
class PageWatch:
    """What a page did that a test may assert on: JS errors, console errors, alert dialogs."""

    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@dataclass
class Gateway:
    """One gateway process and its config file."""

    url: str
    config_path: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    token: str | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def dashboard(self) -> str:
        """Return the dashboard URL."""
        return f"{self.url}/gateway/"

    def api(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        """Call the admin API (as a script would, with the token when there is one)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/gateway/api/{path}", data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        if raw:
            return text
        return json.loads(text) if text else None

    def log(self) -> str:
        """Return what the gateway printed so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Call ``predicate`` until it is true (bounded); fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(delay)  # back-off between probes of a condition, not a fixed wait
        delay = min(delay * 2, 0.25)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def start_gateway(
    tmp_path: Path,
    servers: list[dict[str, Any]],
    *,
    active: str | None = None,
    admin: dict[str, Any] | None = None,
    failover: dict[str, Any] | None = None,
) -> Gateway:
    """Write a config with ``servers`` and start ``python -m gateway`` on a free port."""
    config: dict[str, Any] = {"servers": servers, "health": dict(TEST_HEALTH)}
    if active:
        config["active"] = active
    if admin:
        config["admin"] = admin
    if failover:
        config["failover"] = failover
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = tmp_path / "gateway.log"
    for _attempt in range(3):  # a free port may be taken between probe and bind: retry
        port = free_port()
        with log_path.open("wb") as log:
            command = [
                sys.executable,
                "-m",
                "gateway",
                "--config",
                str(config_path),
                "--port",
                str(port),
                "--log-format",
                "console",
                "--log-level",
                "warning",
            ]
            proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=_child_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        gateway = Gateway(
            f"http://127.0.0.1:{port}",
            config_path,
            proc,
            log_path,
            token=(admin or {}).get("token"),
        )

        def healthy(gateway: Gateway = gateway) -> bool:
            if gateway.proc.poll() is not None:
                return True  # exited: stop waiting, reported below
            try:
                with urllib.request.urlopen(f"{gateway.url}/gateway/healthz", timeout=1) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        try:
            wait_until(healthy, START_TIMEOUT, "the gateway's /gateway/healthz")
        except TimeoutError:
            stop(proc)
            raise RuntimeError(f"the gateway did not start:\n{gateway.log()}") from None
        if proc.poll() is None:
            return gateway
        if "address already in use" not in gateway.log().lower():
            raise RuntimeError(f"the gateway exited at start:\n{gateway.log()}")
    raise RuntimeError("could not find a free port for the gateway")
