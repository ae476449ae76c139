"""Helpers of the ComfyUI-frontend browser tests (``test_comfy_frontend.py``).

* Simulated backends are :class:`gateway.testing.processes.BackendProcess` children, driven from a
  private asyncio loop in a background thread (Playwright's sync API owns the test thread), so a
  test can SIGKILL one by PID.
* The gateway is the ``comfyui-gateway`` console script in a subprocess, with fast health checks.
* :class:`PageRecorder` keeps what a page did: console errors, uncaught exceptions, HTTP answers,
  failed requests and websockets with their frames.
* Every wait has a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.testing.fake_frontend import BUILTIN_TEMPLATE_WORKFLOW
from gateway.testing.processes import BackendProcess

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("GATEWAY_CHROMIUM", "/usr/bin/chromium"))
FRONTEND_PACKAGE = "comfyui-frontend-package"
FRONTEND_VERSION = "1.27.10"
"""The frontend ComfyUI 0.3.64 pins (the version the simulated backend reports as required)."""

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # The frontend calls a few internet services (release notes, the node registry). Resolve no
    # name at all, so nothing leaves the machine; those calls fail the same way direct and
    # through the gateway.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
START_TIMEOUT = 20.0
"""Seconds the gateway may take to start and see its backends."""
UI_TIMEOUT_MS = 20_000
"""Default Playwright wait (ms): generous for a loaded CI machine, never a fixed sleep."""

#: Health checks fast enough that a killed backend is "down" within about half a second.
FAST_HEALTH = {
    "interval": 0.2,
    "fast_interval": 0.2,
    "down_interval": 0.2,
    "timeout": 0.5,
    "jitter": 0.0,
    "rise": 1,
    "fall": 1,
}


# -- prerequisites -------------------------------------------------------------------------


def require_frontend_tools() -> Any:
    """Return ``playwright.sync_api``; skip (with what to install) when a tool is missing."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"ComfyUI frontend browser tests need Debian's Chromium at {CHROMIUM}: "
            "apt-get install -y chromium chromium-driver"
        )
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("ComfyUI frontend browser tests need Playwright: pip install playwright")
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        pytest.skip(
            "ComfyUI frontend browser tests need the frontend: "
            f"pip install {FRONTEND_PACKAGE}=={FRONTEND_VERSION}"
        )
    return importlib.import_module("playwright.sync_api")


def frontend_version() -> str:
    """Return the installed ``comfyui-frontend-package`` version (for messages)."""
    try:
        return importlib.metadata.version(FRONTEND_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# -- a private event loop for BackendProcess -------------------------------------------------


class LoopThread:
    """An asyncio loop in a daemon thread; :meth:`run` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="frontend-tests-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the loop and return its result (bounded by ``timeout``)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


# -- the gateway process -------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Call ``predicate`` until it is true (bounded); raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)  # back-off between probes of a condition, not a fixed wait
        delay = min(delay * 2, 0.2)


def gateway_command() -> list[str]:
    """The ``comfyui-gateway`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("comfyui-gateway")
    found = str(script) if script.exists() else shutil.which("comfyui-gateway")
    return [found] if found else [sys.executable, "-m", "gateway"]


def get_json(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


@dataclass
class GatewayProcess:
    """One ``comfyui-gateway`` process."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def readyz(self) -> dict[str, Any]:
        """``GET /gateway/readyz``: healthy server ids, serving and preferred."""
        return dict(get_json(f"{self.url}/gateway/readyz"))

    def log(self) -> str:
        """What the gateway printed so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it does not exit."""
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """Terminate a child process by PID (SIGTERM, then SIGKILL) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def start_gateway(directory: Path, servers: list[dict[str, Any]], active: str) -> GatewayProcess:
    """Write a config and start ``comfyui-gateway --config <yaml> --port <free port>``."""
    config = {"servers": servers, "active": active, "health": dict(FAST_HEALTH)}
    config_path = directory / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = directory / "gateway.log"
    env = dict(os.environ)
    for name in ("COMFYUI_GATEWAY_ADMIN_TOKEN", "COMFYUI_GATEWAY_CONFIG"):
        env.pop(name, None)
    for _attempt in range(3):  # a free port may be taken between probe and bind: retry
        port = free_port()
        with log_path.open("wb") as log:
            command = [
                *gateway_command(),
                "--config",
                str(config_path),
                "--port",
                str(port),
                "--log-format",
                "console",
                "--log-level",
                "warning",
            ]
            proc = subprocess.Popen(command, cwd=directory, env=env, stdout=log, stderr=log)
        gateway = GatewayProcess(f"http://127.0.0.1:{port}", proc, log_path)

        def started(gateway: GatewayProcess = gateway) -> bool:
            if gateway.proc.poll() is not None:
                return True  # exited: reported below
            try:
                get_json(f"{gateway.url}/gateway/healthz", timeout=1.0)
            except (urllib.error.URLError, OSError, ValueError):
                return False
            return True

        try:
            wait_until(started, START_TIMEOUT, "the gateway's /gateway/healthz")
        except TimeoutError:
            stop_process(proc)
            raise RuntimeError(f"the gateway did not start:\n{gateway.log()}") from None
        if proc.poll() is None:
            return gateway
        if "address already in use" not in gateway.log().lower():
            raise RuntimeError(f"the gateway exited at start:\n{gateway.log()}")
    raise RuntimeError("could not find a free port for the gateway")


@dataclass
class Stack:
    """Two simulated backends (``a`` preferred, ``b``) behind one gateway."""

    loop: LoopThread
    backends: dict[str, BackendProcess]
    gateway: GatewayProcess

    def wait_serving(self, serving: str, healthy: set[str], timeout: float = START_TIMEOUT) -> None:
        """Wait until the gateway serves from ``serving`` and sees exactly ``healthy`` up."""
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                last = self.gateway.readyz()
            return last.get("serving") == serving and set(last.get("healthy") or ()) == healthy

        try:
            wait_until(check, timeout, f"serving={serving!r} with {sorted(healthy)} up")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last readyz: {last}\n{self.gateway.log()}") from None

    def kill(self, name: str) -> None:
        """SIGKILL a backend by its PID (a crash: no goodbye) and reap it."""
        self.loop.run(self.backends[name].kill(), timeout=10)

    def stop(self) -> None:
        """Stop the gateway, then every backend (by PID), then the loop."""
        self.gateway.stop()
        for backend in self.backends.values():
            with contextlib.suppress(Exception):
                self.loop.run(backend.stop(), timeout=15)
        self.loop.close()


def start_stack(tmp: Path) -> Stack:
    """Start backends ``a`` and ``b`` and a gateway preferring ``a``; wait until both are up."""
    loop = LoopThread()
    backends: dict[str, BackendProcess] = {}
    try:
        for name in ("a", "b"):
            data_dir = tmp / f"backend-{name}"
            data_dir.mkdir()
            backend = BackendProcess(name, data_dir=data_dir, job_duration=0.2)
            backends[name] = backend
            loop.run(backend.start())
        servers = [
            {"id": name, "name": f"Backend {name.upper()}", "url": b.url, "priority": 10 * i}
            for i, (name, b) in enumerate(backends.items())
        ]
        gateway_dir = tmp / "gateway"
        gateway_dir.mkdir()
        stack = Stack(loop, backends, start_gateway(gateway_dir, servers, active="a"))
    except BaseException:
        for backend in backends.values():
            with contextlib.suppress(Exception):
                loop.run(backend.stop(), timeout=15)
        loop.close()
        raise
    try:
        stack.wait_serving("a", {"a", "b"})
    except BaseException:
        stack.stop()
        raise
    return stack


# -- what a page did -------------------------------------------------------------------------------


def same_origin_path(url: str, origin: str) -> str:
    """``url`` without ``origin`` (path and query) when it is on ``origin``, else ``url``."""
    if url.startswith(origin):
        return url[len(origin) :] or "/"
    return url


@dataclass
class SocketRecord:
    """One websocket the page opened, and the text frames it received (decoded)."""

    url: str
    handle: Any
    frames: list[dict[str, Any]] = field(default_factory=list)
    binary_frames: int = 0
    closed: bool = False


@dataclass
class PageRecorder:
    """Console errors, page errors, HTTP answers, failed requests and websockets of a page."""

    origin: str
    console_errors: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    responses: list[tuple[str, str, int]] = field(default_factory=list)
    failed_requests: list[tuple[str, str, str]] = field(default_factory=list)
    sockets: list[SocketRecord] = field(default_factory=list)

    def attach(self, page: Any) -> PageRecorder:
        """Start recording ``page``'s events."""
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("response", self._on_response)
        page.on("requestfailed", self._on_request_failed)
        page.on("websocket", self._on_websocket)
        return self

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            where = same_origin_path(message.location.get("url") or "", self.origin)
            self.console_errors.append((message.text, where))

    def _on_response(self, response: Any) -> None:
        url = response.url
        if url.startswith(("blob:", "data:")):
            return
        path = same_origin_path(url, self.origin)
        self.responses.append((response.request.method, path, response.status))

    def _on_request_failed(self, request: Any) -> None:
        path = same_origin_path(request.url, self.origin)
        self.failed_requests.append((request.method, path, request.failure or ""))

    def _on_websocket(self, ws: Any) -> None:
        record = SocketRecord(same_origin_path(ws.url, self.origin.replace("http", "ws", 1)), ws)
        self.sockets.append(record)

        def on_frame(payload: Any) -> None:
            if isinstance(payload, bytes):
                record.binary_frames += 1
                return
            with contextlib.suppress(ValueError):
                record.frames.append(json.loads(payload))

        def on_close(_ws: Any) -> None:
            record.closed = True

        ws.on("framereceived", on_frame)
        ws.on("close", on_close)

    # -- views ----------------------------------------------------------------------------------

    def error_keys(self) -> set[tuple[str, str]]:
        """Console errors and uncaught exceptions as comparable ``(message, where)`` keys."""
        keys = {(text, where) for text, where in self.console_errors}
        keys |= {(f"uncaught: {text}", "") for text in self.page_errors}
        return keys

    def http_failures(self, since: int = 0) -> dict[tuple[str, str], int]:
        """``{(method, same-origin path): status}`` for the 4xx/5xx answers after ``since``."""
        return {
            (method, path): status
            for method, path, status in self.responses[since:]
            if status >= 400 and path.startswith("/")
        }

    def statuses(self) -> dict[tuple[str, str], set[int]]:
        """``{(method, path): {statuses}}`` of every same-origin answer."""
        out: dict[tuple[str, str], set[int]] = {}
        for method, path, status in self.responses:
            if path.startswith("/"):
                out.setdefault((method, path), set()).add(status)
        return out

    def frames(self, kind: str) -> list[dict[str, Any]]:
        """Every received text frame of this ``type``, over all sockets."""
        return [f for s in self.sockets for f in s.frames if f.get("type") == kind]


def model_free_workflow(filename_prefix: str) -> dict[str, Any]:
    """The UI-format EmptyImage → ImageInvert → SaveImage workflow, saving as the given prefix."""
    workflow = copy.deepcopy(BUILTIN_TEMPLATE_WORKFLOW)
    # Laid out to be seen in a 1280x900 screenshot beside the Queue sidebar.
    positions = {"EmptyImage": [300, 150], "ImageInvert": [660, 150], "SaveImage": [900, 150]}
    for node in workflow["nodes"]:
        node["pos"] = positions[node["type"]]
        if node["type"] == "SaveImage":
            node["widgets_values"] = [filename_prefix]
        if node["type"] == "EmptyImage":
            node["widgets_values"] = [256, 256, 1, 0x1E90FF]  # inverted: orange
    workflow["extra"] = {"ds": {"scale": 1, "offset": [0, 0]}}
    return workflow


def origin_of(url: str) -> str:
    """``scheme://host:port`` of a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
