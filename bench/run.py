"""Benchmark: direct → backend, gateway → backend and nginx → backend, side by side (issue 7).

Usage (from the repository root)::

    python bench/run.py                 # every scenario, 3 runs each (~10 minutes)
    python bench/run.py --quick         # smoke pass: 1 run, short durations (~2 minutes)
    python bench/run.py --only small_get,ws --runs 5
    python -m bench                     # the same

Needs ``wrk`` and ``nginx`` (Debian: ``apt-get install -y nginx wrk``) and, for the page-load
scenario, ``pip install comfyui-frontend-package`` (the simulated backend then serves the real
ComfyUI frontend). Everything runs on 127.0.0.1; every process is stopped by its PID at the end.

One run starts, each as its own process: the simulated ComfyUI backend in fast mode (no job
delay), the gateway exactly as a user starts it (``comfyui-gateway --config FILE --port P``,
default health checks, JSON access log to a file), nginx (1 worker, config generated from
``bench/nginx.conf.tmpl``), the 20-line aiohttp pass-through proxy of ``bench/minimal_proxy.py``
(the reference point of issue 7's targets), and for the websocket scenario an echo backend
(``bench/ws_echo.py``) with its own gateway. Load comes from other processes: ``wrk`` (one
thread) for HTTP, ``bench/ws_load.py`` for websockets, ``bench/clients.py`` for the upload, the
page load, the failover hammer and the idle websockets. Targets are interleaved within each
repetition so that noise from other work on the machine spreads evenly. Each figure is the
median of the runs with the min-max spread; ratios compare the gateway's median with the
others'.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # ``python bench/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    BENCH,
    BenchError,
    Proc,
    Procs,
    free_port,
    http_post_json,
    median,
    raise_nofile,
    require_tools,
    run_client,
    spread,
    use_current_env,
    use_runtime_install,
    wrk,
)

SCENARIOS = ("small_get", "prompt", "view", "upload", "ws", "memory", "failover", "pageload")
TARGETS = ("direct", "gateway", "nginx", "minimal")
HEALTH_TIMEOUT = 2.0  # gateway defaults (config/gateway.yaml): health.timeout and health.fall
HEALTH_FALL = 3
VIEW_SIZE = 8 * 1024 * 1024
UPLOAD_SIZE = 100 * 1024 * 1024
IDLE_WS = 1000
PROMPT = {
    "prompt": {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
}


# -- configuration of the participants ------------------------------------------------------


def gateway_config(servers: Sequence[tuple[str, str]], *, max_connections: int = 100) -> str:
    """Return a gateway YAML config for ``servers`` ((id, url), the first preferred).

    Everything else is the default (health checks every 2 s, timeout 2 s, fall 3, ...).
    """
    lines = ["listen: {host: 127.0.0.1, port: 0}", "servers:"]
    for i, (server_id, url) in enumerate(servers):
        lines += [
            f"  - id: {server_id}",
            f"    url: {url}",
            f"    priority: {100 * (i + 1)}",
            f"    max_connections: {max_connections}",
        ]
    lines.append(f"active: {servers[0][0]}")
    return "\n".join(lines) + "\n"


def nginx_server_block(
    name: str,
    port: int,
    upstreams: Sequence[str],
    *,
    extra: str = "",
    backup: bool = False,
    read_timeout: str = "3600s",
) -> str:
    """Return one ``upstream`` + ``server`` block proxying ``127.0.0.1:port`` to ``upstreams``."""
    servers = []
    for i, url in enumerate(upstreams):
        hostport = url.split("://", 1)[1].rstrip("/")
        flags = " backup" if backup and i > 0 else ""
        servers.append(f"        server {hostport} max_fails=1 fail_timeout=10s{flags};")
    return f"""
    upstream {name} {{
{chr(10).join(servers)}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{name};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-ID $request_id;
            add_header X-Request-ID $request_id;
            proxy_read_timeout {read_timeout};
            proxy_send_timeout 3600s;
{extra}
        }}
    }}
"""


def nginx_config(prefix: Path, blocks: Sequence[str]) -> str:
    """Fill ``bench/nginx.conf.tmpl``."""
    text = (BENCH / "nginx.conf.tmpl").read_text(encoding="utf-8")
    values = {
        "prefix": str(prefix),
        "user": "user root;" if os.geteuid() == 0 else "",
        "servers": "".join(blocks),
    }
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


# -- results ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a metric of a scenario, measured for several targets."""

    scenario: str
    metric: str
    unit: str
    higher_is_better: bool = True
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, target: str, value: float) -> None:
        """Record one run's value for ``target``."""
        self.values.setdefault(target, []).append(value)

    def med(self, target: str) -> float | None:
        """Return the median for ``target``, or None."""
        vals = self.values.get(target)
        return median(vals) if vals else None


class Results:
    """Every row, in the order first recorded."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}

    def row(self, scenario: str, metric: str, unit: str, higher: bool = True) -> Row:
        """Return (creating it) the row of ``scenario``/``metric``."""
        key = (scenario, metric)
        if key not in self.rows:
            self.rows[key] = Row(scenario, metric, unit, higher)
        return self.rows[key]

    def get(self, scenario: str, metric: str, target: str) -> float | None:
        """Return one median, or None."""
        row = self.rows.get((scenario, metric))
        return row.med(target) if row else None

    def as_json(self) -> dict[str, object]:
        """Return everything recorded, for ``--json``."""
        return {
            f"{r.scenario} | {r.metric}": {"unit": r.unit, "values": r.values}
            for r in self.rows.values()
        }


def fmt(value: float | None) -> str:
    """Format a number with about 3 significant digits."""
    if value is None:
        return "-"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell(values: list[float] | None) -> str:
    """Return ``median (min-max)`` (just the value when there is one run)."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0])
    lo, hi = spread(values)
    return f"{fmt(median(values))} ({fmt(lo)}-{fmt(hi)})"


def ratio(a: float | None, b: float | None) -> str:
    """Return ``a / b`` as ``n.nnx``."""
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def markdown_table(results: Results) -> str:
    """Return the results as a Markdown table."""
    head = (
        "| scenario | metric | direct | gateway | nginx | minimal aiohttp | "
        "gw ÷ direct | gw ÷ nginx | gw ÷ minimal |"
    )
    lines = [head, "|" + "---|" * 9]
    for row in results.rows.values():
        gw = row.med("gateway")
        lines.append(
            f"| {row.scenario} | {row.metric} ({row.unit}) | "
            + " | ".join(cell(row.values.get(t)) for t in TARGETS)
            + f" | {ratio(gw, row.med('direct'))} | {ratio(gw, row.med('nginx'))} | "
            f"{ratio(gw, row.med('minimal'))} |"
        )
    return "\n".join(lines)


def check_targets(results: Results) -> list[tuple[str, str, bool | None]]:
    """Return issue 7's targets as (target, evidence, passed); None when not measured."""
    r = results.get
    out: list[tuple[str, str, bool | None]] = []

    def check(name: str, value: float | None, limit: float | None, *, most: bool) -> None:
        if value is None or limit is None or value != value:  # NaN: never happened
            out.append((name, "not measured" if value is None else "never", None))
            return
        passed = value <= limit if most else value >= limit
        out.append((name, f"{fmt(value)} vs {'<=' if most else '>='} {fmt(limit)}", passed))

    def times(factor: float, value: float | None) -> float | None:
        return None if value is None else factor * value

    sg = "small GET c=16"
    gw = r(sg, "throughput", "gateway")
    check(
        "small GET c=16: >= 1.5 x minimal aiohttp proxy (req/s)",
        gw,
        times(1.5, r(sg, "throughput", "minimal")),
        most=False,
    )
    check(
        "small GET c=16: >= 35% of nginx (req/s)",
        gw,
        times(0.35, r(sg, "throughput", "nginx")),
        most=False,
    )
    check(
        "small GET c=16: CPU <= 100 us per request",
        r(sg, "proxy CPU per request", "gateway"),
        100.0,
        most=True,
    )
    p99g, p99d = r(sg, "p99 latency", "gateway"), r(sg, "p99 latency", "direct")
    added = None if p99g is None or p99d is None else p99g - p99d
    check("small GET c=16: added p99 <= 3 ms (ms)", added, 3.0, most=True)
    for scenario, label in (
        ("view 8 MB c=4", "8 MB /view >= 90% of nginx (MB/s)"),
        ("ws relay JSON", "websocket JSON messages >= 90% of nginx (msg/s)"),
        ("ws relay 1 MB binary", "websocket 1 MB frames >= 90% of nginx (MB/s)"),
    ):
        check(
            label,
            r(scenario, "throughput", "gateway"),
            times(0.9, r(scenario, "throughput", "nginx")),
            most=False,
        )
    check(
        "100 MB upload: RSS growth < 20 MB (MB)",
        r("upload 100 MB", "peak RSS growth", "gateway"),
        20.0,
        most=True,
    )
    check(
        "RSS under load <= 60 MB (MB)",
        r("memory", "RSS under load (peak, small GET c=64)", "gateway"),
        60.0,
        most=True,
    )
    check(
        "<= 30 KB per idle websocket, both halves (KB)",
        r("memory", f"per idle websocket ({IDLE_WS} clients)", "gateway"),
        30.0,
        most=True,
    )
    check(
        "failover, refused: first success <= 1 s (s)",
        r("failover: refused", "first success after kill", "gateway"),
        1.0,
        most=True,
    )
    limit = HEALTH_TIMEOUT * HEALTH_FALL + 1
    check(
        f"failover, hung: first success <= health timeout x fall + 1 = {fmt(limit)} s (s)",
        r("failover: hung", "first success after kill", "gateway"),
        limit,
        most=True,
    )
    for mode in ("refused", "hung"):
        check(
            f"failover, {mode}: zero failed idempotent requests",
            r(f"failover: {mode}", "failed requests", "gateway"),
            0.0,
            most=True,
        )
    return out


# -- the benchmark ----------------------------------------------------------------------------


@dataclass
class Target:
    """One way to reach the backend, and the process whose cost is measured (None: direct)."""

    name: str
    url: str
    proc: Proc | None


class Bench:
    """One benchmark run (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = Procs(workdir)
        self.results = Results()
        self.seconds: float = args.seconds
        self.runs: int = args.runs
        self.backend: Proc | None = None
        self.targets: list[Target] = []

    def log(self, text: str) -> None:
        """Progress on stderr (the table goes to stdout)."""
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # -- setup -------------------------------------------------------------------------------

    def start_main(self, scenarios: Sequence[str]) -> None:
        """Start the backend and the three ways to reach it."""
        self.log("starting the simulated backend, the gateway, nginx and the minimal proxy")
        backend = self.backend = self.procs.backend("backend", self.workdir / "backend-data")
        gateway = self.procs.gateway("gateway", gateway_config([("backend", backend.url)]))
        nginx_port = free_port()
        nginx_prefix = self.workdir / "nginx"
        conf = nginx_config(nginx_prefix, [nginx_server_block("comfy", nginx_port, [backend.url])])
        nginx = self.procs.nginx("nginx", conf)
        minimal = self.procs.minimal_proxy(backend.url)
        self.targets = [
            Target("direct", backend.url, None),
            Target("gateway", gateway.url, gateway),
            Target("nginx", nginx.url, nginx),
            Target("minimal", minimal.url, minimal),
        ]
        time.sleep(1.0)  # let the first health checks settle
        for target in self.targets:
            wrk(target.url + "/system_stats", connections=4, seconds=1)  # warm-up
        for target in self.targets:
            proc = target.proc or backend
            self.results.row("memory", "RSS idle", "MB", False).add(target.name, proc.rss() / 1e6)

    def target(self, name: str) -> Target:
        """Return the target called ``name``."""
        return next(t for t in self.targets if t.name == name)

    # -- HTTP scenarios with wrk ------------------------------------------------------------------

    def _wrk_row(
        self, scenario: str, target: Target, path: str, connections: int, script: Path | None
    ) -> tuple[float, float]:
        """Run wrk once; record throughput, latency, errors and CPU; return (rps, seconds)."""
        proc = target.proc
        cpu0 = proc.cpu() if proc else 0.0
        result = wrk(
            target.url + path, connections=connections, seconds=self.seconds, script=script
        )
        cpu1 = proc.cpu() if proc else 0.0
        res = self.results
        res.row(scenario, "throughput", "req/s").add(target.name, result.rps)
        res.row(scenario, "p50 latency", "ms", False).add(target.name, result.p50_ms)
        res.row(scenario, "p99 latency", "ms", False).add(target.name, result.p99_ms)
        if proc is not None and result.requests:
            res.row(scenario, "proxy CPU per request", "µs", False).add(
                target.name, (cpu1 - cpu0) * 1e6 / result.requests
            )
        res.row(scenario, "errors", "count", False).add(target.name, result.errors)
        return result.rps, result.seconds

    def small_get(self) -> None:
        """Small GET /system_stats at 1, 16 and 64 connections."""
        for run in range(self.runs):
            for connections in (1, 16, 64):
                self.log(f"small GET, {connections} connections, run {run + 1}/{self.runs}")
                scenario = f"small GET c={connections}"
                for target in self.targets:
                    if connections == 64 and target.proc is not None:
                        target.proc.reset_peak()
                    self._wrk_row(scenario, target, "/system_stats", connections, None)
                    if connections == 64 and target.proc is not None:
                        self.results.row(
                            "memory", "RSS under load (peak, small GET c=64)", "MB", False
                        ).add(target.name, target.proc.peak() / 1e6)

    def prompt(self) -> None:
        """POST /prompt at 16 connections (the fast backend runs prompts without delay)."""
        script = self.workdir / "prompt.lua"
        body = json.dumps(PROMPT).replace("\\", "\\\\").replace("'", "\\'")
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = '{body}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n',
            encoding="utf-8",
        )
        assert self.backend is not None
        for run in range(self.runs):
            self.log(f"POST /prompt, 16 connections, run {run + 1}/{self.runs}")
            for target in self.targets:
                self._wrk_row("POST /prompt c=16", target, "/prompt", 16, script)
                # Keep the backend's queue and history bounded between targets.
                http_post_json(self.backend.url + "/queue", b'{"clear": true}')
                http_post_json(self.backend.url + "/history", b'{"clear": true}')

    def view(self) -> None:
        """GET /view of an 8 MB file at 4 connections."""
        assert self.backend is not None
        output = self.workdir / "backend-data" / "output"
        output.mkdir(parents=True, exist_ok=True)
        (output / "bench_8m.png").write_bytes(os.urandom(VIEW_SIZE))
        path = "/view?filename=bench_8m.png&type=output&subfolder="
        for run in range(self.runs):
            self.log(f"GET /view 8 MB, 4 connections, run {run + 1}/{self.runs}")
            for target in self.targets:
                proc = target.proc
                cpu0 = proc.cpu() if proc else 0.0
                result = wrk(target.url + path, connections=4, seconds=self.seconds)
                cpu1 = proc.cpu() if proc else 0.0
                res = self.results
                res.row("view 8 MB c=4", "throughput", "MB/s").add(
                    target.name, result.requests * VIEW_SIZE / result.seconds / 1e6
                )
                res.row("view 8 MB c=4", "p99 latency", "ms", False).add(target.name, result.p99_ms)
                if proc is not None and result.requests:
                    res.row("view 8 MB c=4", "proxy CPU per MB", "µs", False).add(
                        target.name, (cpu1 - cpu0) * 1e6 / (result.requests * VIEW_SIZE / 1e6)
                    )
                res.row("view 8 MB c=4", "errors", "count", False).add(target.name, result.errors)

    def upload(self) -> None:
        """A 100 MB upload to /upload/image: MB/s and the proxy's peak RSS growth."""
        assert self.backend is not None
        path = self.workdir / "upload_100m.png"
        with path.open("wb") as fh:
            for _ in range(UPLOAD_SIZE // (4 * 1024 * 1024)):
                fh.write(os.urandom(4 * 1024 * 1024))
        client = [sys.executable, str(BENCH / "clients.py"), "upload"]
        for run in range(self.runs):
            self.log(f"100 MB upload, run {run + 1}/{self.runs}")
            for target in self.targets:
                proc = target.proc or self.backend
                proc.reset_peak()
                before = proc.rss()
                out = json.loads(run_client([*client, target.url, str(path)], timeout=300))
                growth = max(0, proc.peak() - before)
                res = self.results
                res.row("upload 100 MB", "throughput", "MB/s").add(target.name, out["mb_per_s"])
                res.row("upload 100 MB", "peak RSS growth", "MB", False).add(
                    target.name, growth / 1e6
                )
        path.unlink()

    def ws(self) -> None:
        """Websocket relay through an echo backend: small JSON messages and 1 MB frames."""
        echo = self.procs.ws_echo()
        gateway = self.procs.gateway("gateway-ws", gateway_config([("echo", echo.url)]))
        port = free_port()
        conf = nginx_config(
            self.workdir / "nginx-ws", [nginx_server_block("echo", port, [echo.url])]
        )
        nginx = self.procs.nginx("nginx-ws", conf, probe_path="/system_stats")
        targets = [
            Target("direct", echo.url, None),
            Target("gateway", gateway.url, gateway),
            Target("nginx", nginx.url, nginx),
        ]
        modes = (
            ("ws relay JSON", "json", 4, 16),
            ("ws relay 1 MB binary", "binary", 2, 2),
        )
        try:
            for run in range(self.runs):
                for scenario, mode, connections, window in modes:
                    self.log(f"websocket {mode}, run {run + 1}/{self.runs}")
                    for target in targets:
                        proc = target.proc
                        cpu0 = proc.cpu() if proc else 0.0
                        out = json.loads(
                            run_client(
                                [
                                    sys.executable,
                                    str(BENCH / "ws_load.py"),
                                    target.url.replace("http://", "ws://") + "/ws",
                                    "--mode",
                                    mode,
                                    "--seconds",
                                    str(self.seconds),
                                    "--connections",
                                    str(connections),
                                    "--window",
                                    str(window),
                                ],
                                timeout=self.seconds + 120,
                            )
                        )
                        cpu1 = proc.cpu() if proc else 0.0
                        res = self.results
                        if mode == "json":
                            res.row(scenario, "throughput", "msg/s").add(
                                target.name, out["msgs_per_s"]
                            )
                            if proc is not None and out["messages"]:
                                res.row(scenario, "proxy CPU per message", "µs", False).add(
                                    target.name, (cpu1 - cpu0) * 1e6 / out["messages"]
                                )
                        else:
                            res.row(scenario, "throughput", "MB/s").add(
                                target.name, out["mb_per_s"]
                            )
        finally:
            for proc in (nginx, gateway, echo):
                self.procs.stop(proc)

    def memory(self) -> None:
        """RSS with 1,000 idle websocket clients, each with its upstream socket.

        Each run starts its own backend, gateway and nginx: a process that already held 1,000
        sockets keeps the freed memory (Python's allocator, glibc's heap) and would hide the
        next 1,000. Each target first opens and closes a few websockets (lazy imports,
        pools), then RSS is read before and with the 1,000 clients connected.
        """
        for run in range(self.runs):
            self.log(f"{IDLE_WS} idle websockets, run {run + 1}/{self.runs}")
            tag = f"mem-{run}"
            backend = self.procs.backend(f"{tag}-backend", self.workdir / tag / "data")
            gateway = self.procs.gateway(f"{tag}-gateway", gateway_config([("b", backend.url)]))
            port = free_port()
            conf = nginx_config(
                self.workdir / f"{tag}-nginx", [nginx_server_block("mem", port, [backend.url])]
            )
            nginx = self.procs.nginx(f"{tag}-nginx", conf)
            try:
                for target in (
                    Target("direct", backend.url, backend),
                    Target("gateway", gateway.url, gateway),
                    Target("nginx", nginx.url, nginx),
                ):
                    assert target.proc is not None
                    self._idle_websockets(target.url, 20, f"{tag}-warm-{target.name}")
                    time.sleep(1.0)
                    before = target.proc.rss()
                    after = self._idle_websockets(
                        target.url, IDLE_WS, f"{tag}-idle-{target.name}", target.proc
                    )
                    self.results.row(
                        "memory", f"per idle websocket ({IDLE_WS} clients)", "KB", False
                    ).add(target.name, (after - before) / IDLE_WS / 1e3)
                    self.results.row(
                        "memory", f"RSS with {IDLE_WS} idle websockets", "MB", False
                    ).add(target.name, after / 1e6)
            finally:
                for proc in (nginx, gateway, backend):
                    self.procs.stop(proc)

    def _idle_websockets(self, url: str, count: int, name: str, measure: Proc | None = None) -> int:
        """Hold ``count`` idle websockets open; return ``measure``'s RSS while they are."""
        client = self.procs.spawn(
            name,
            [
                sys.executable,
                str(BENCH / "clients.py"),
                "idle-ws",
                url.replace("http://", "ws://") + "/ws",
                str(count),
            ],
        )
        try:
            deadline = time.monotonic() + 120
            while not re.search(r"^OPEN \d+", client.log.read_text(errors="replace"), re.M):
                if client.popen.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"idle websockets failed:\n{client.tail()}")
                time.sleep(0.1)
            time.sleep(1.0)  # greetings sent, buffers settled
            return measure.rss() if measure is not None else 0
        finally:
            self.procs.stop(client)

    def failover(self) -> None:
        """Kill (refused) or freeze (hung) the active backend under an idempotent GET load."""
        for run in range(self.runs):
            for mode in ("refused", "hung"):
                for name in ("gateway", "nginx"):
                    self.log(f"failover ({mode}) through {name}, run {run + 1}/{self.runs}")
                    first, failed = self._failover_once(name, mode, run)
                    scenario = f"failover: {mode}"
                    res = self.results
                    res.row(scenario, "first success after kill", "s", False).add(name, first)
                    res.row(scenario, "failed requests", "count", False).add(name, failed)

    def _failover_once(self, name: str, mode: str, run: int) -> tuple[float, float]:
        tag = f"fo-{mode}-{name}-{run}"
        a = self.procs.backend(f"{tag}-a", self.workdir / tag / "a")
        b = self.procs.backend(f"{tag}-b", self.workdir / tag / "b")
        proxy: Proc
        try:
            if name == "gateway":
                proxy = self.procs.gateway(tag, gateway_config([("a", a.url), ("b", b.url)]))
                wait_servers_up(proxy.url, ("a", "b"))
            else:
                # nginx has no active health checks: a failed or timed-out attempt moves an
                # idempotent request to the backup. proxy_read_timeout gets the gateway's
                # detection budget for a hung backend (health timeout x fall).
                extra = (
                    "            proxy_next_upstream error timeout;\n"
                    "            proxy_connect_timeout 1s;\n"
                )
                port = free_port()
                conf = nginx_config(
                    self.workdir / tag,
                    [
                        nginx_server_block(
                            "pair",
                            port,
                            [a.url, b.url],
                            extra=extra,
                            backup=True,
                            read_timeout=f"{HEALTH_TIMEOUT * HEALTH_FALL:.0f}s",
                        )
                    ],
                )
                proxy = self.procs.nginx(tag, conf)
            pre = 1.5
            post = 4.0 if mode == "refused" else HEALTH_TIMEOUT * HEALTH_FALL + 3
            timeout = 10.0
            records = self.workdir / f"{tag}.jsonl"
            hammer = self.procs.spawn(
                f"{tag}-hammer",
                [
                    sys.executable,
                    str(BENCH / "clients.py"),
                    "hammer",
                    proxy.url + "/system_stats",
                    "--rate",
                    "200",
                    "--seconds",
                    str(pre + post),
                    "--timeout",
                    str(timeout),
                    "--out",
                    str(records),
                ],
            )
            deadline = time.monotonic() + 30
            while "STARTED" not in hammer.log.read_text(errors="replace"):
                if hammer.popen.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"hammer did not start:\n{hammer.tail()}")
                time.sleep(0.01)
            time.sleep(pre)
            a.signal(signal.SIGKILL if mode == "refused" else signal.SIGSTOP)
            killed = time.monotonic()
            hammer.popen.wait(timeout=pre + post + timeout + 60)
            lines = records.read_text(encoding="utf-8").splitlines()
            recs = [json.loads(line) for line in lines]
            after = [r["end"] for r in recs if r["start"] >= killed and r["outcome"] == "200"]
            first = (min(after) - killed) if after else float("nan")
            failed = sum(1 for r in recs if r["outcome"] != "200")
            return first, float(failed)
        finally:
            for proc in list(self.procs.started):
                if proc.name.startswith(tag):
                    self.procs.stop(proc)

    def pageload(self) -> None:
        """The ComfyUI frontend's first page load (all its assets) through each target."""
        client = [sys.executable, str(BENCH / "clients.py"), "pageload"]
        for target in self.targets:  # warm the page cache and every process's buffers
            run_client([*client, target.url], timeout=120)
        for run in range(self.runs):
            self.log(f"frontend page load, run {run + 1}/{self.runs}")
            for target in self.targets:
                out = json.loads(run_client([*client, target.url], timeout=120))
                res = self.results
                res.row("page load", "time", "s", False).add(target.name, out["seconds"])
                res.row("page load", "files", "count").add(target.name, out["files"])
                res.row("page load", "bytes", "MB").add(target.name, out["bytes"] / 1e6)


def wait_servers_up(url: str, servers: Sequence[str], timeout: float = 30.0) -> None:
    """Wait until the gateway's metrics say every one of ``servers`` is up."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url + "/metrics", timeout=2) as resp:
                text = resp.read().decode()
            up = {
                m.group(1)
                for m in re.finditer(r'comfyui_gateway_server_up\{server="([^"]+)"\} 1', text)
            }
            if all(s in up for s in servers):
                return
        time.sleep(0.2)
    raise BenchError(f"servers {servers} not all up at {url}")


# -- report -----------------------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
        text = (done.stdout or done.stderr).strip()
        return text.splitlines()[0] if text else "?"
    return "?"


def machine() -> dict[str, str]:
    """Return what the results depend on: hardware, kernel, versions."""
    import aiohttp

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "ram": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "uvloop": uv,
        "nginx": _first_line(["nginx", "-v"]).replace("nginx version: ", ""),
        "wrk": _first_line(["wrk", "-v"]).split(" [")[0],
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def report(results: Results, info: dict[str, str], command: str) -> str:
    """Return the Markdown report: machine, command, table, targets."""
    lines = ["## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += ["", "## Command", "", f"    {command}", "", "## Results", "", markdown_table(results)]
    lines += [
        "",
        "## Targets (issue 7)",
        "",
        "| target | measured vs limit | result |",
        "|---|---|---|",
    ]
    for name, evidence, passed in check_targets(results):
        verdict = "not measured" if passed is None else ("pass" if passed else "**FAIL**")
        lines.append(f"| {name} | {evidence} | {verdict} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Return the command line."""
    parser = argparse.ArgumentParser(
        prog="python bench/run.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="1 run of 2 s each: a smoke pass")
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios among: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--runs", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="per wrk run (default 5)")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    parser.add_argument("--json", type=Path, help="write every measured value to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    parser.add_argument(
        "--gateway-from",
        choices=("install", "env"),
        default="install",
        help="run the gateway from its own `pip install '.[speed]'` virtualenv, as deployed "
        "(default; cached in bench/.runtime), or from this environment",
    )
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    unknown = [s for s in args.only.split(",") if s and s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose among {', '.join(SCENARIOS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the report."""
    args = parse_args(argv)
    scenarios = [s for s in SCENARIOS if not args.only or s in args.only.split(",")]
    try:
        require_tools(["wrk", "nginx"])
    except BenchError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    raise_nofile()
    repo = Path(__file__).resolve().parent.parent
    if args.gateway_from == "install":
        gateway_from = use_runtime_install(repo, repo / "bench" / ".runtime")
    else:
        gateway_from = use_current_env()
    info = machine()
    info["gateway"] = gateway_from
    command = "python bench/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:]))
    workdir = Path(tempfile.mkdtemp(prefix="comfyui-gateway-bench-"))
    os.chmod(workdir, 0o755)  # nginx's worker reads its temp dirs there
    bench = Bench(args, workdir)
    started = time.monotonic()
    try:
        bench.start_main(scenarios)
        for scenario in scenarios:
            getattr(bench, scenario)()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.procs.stop_all()
        if args.keep:
            print(f"logs and configs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info["duration"] = f"{time.monotonic() - started:.0f} s"
    text = report(bench.results, info, command.strip())
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(bench.results.as_json(), indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
