"""Strings the dashboard did not write stay text (issue 8 §4), checked in a real browser.

The dashboard's own tests cover a server *named* like markup; this one covers what a hostile or
compromised *backend* controls: its ``comfyui_version`` and device names in ``/system_stats``,
shown on every card, plus a markup name and a markup URL path for the server. The page runs in
headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright). Two layers are checked:
no element carrying a handler or an inline script ever enters the DOM (the dashboard writes API
strings with ``textContent``), and nothing ran (``window.__pwned`` stays empty; the page's CSP,
``script-src 'self'``, would also block inline handlers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.security.gateway_proc import child_env, free_port, gateway_command

CHROMIUM = Path(os.environ.get("GATEWAY_CHROMIUM", "/usr/bin/chromium"))
VERSION = '0.3.64"><img src=x onerror="window.__pwned.push(\'version\')">'
DEVICE = "cuda:0 <script>window.__pwned.push('device')</script>"
NAME = "<svg onload=\"window.__pwned.push('name')\"></svg>GPU"
PATH = "/<img src=y onerror=window.__pwned.push('url')>"
INJECTED = "document.querySelectorAll('[onerror],[onload],script:not([src])').length"


def stub_backend() -> web.Application:
    """A ComfyUI look-alike whose /system_stats carries markup."""

    async def system_stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "system": {"comfyui_version": VERSION, "os": "posix", "argv": ["main.py"]},
                "devices": [
                    {
                        "name": DEVICE,
                        "type": "cuda",
                        "index": 0,
                        "vram_total": 8 << 30,
                        "vram_free": 4 << 30,
                    }
                ],
            }
        )

    async def prompt(request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": 0}})

    async def ws(request: web.Request) -> web.StreamResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        await socket_.send_json({"type": "status", "data": {"status": {}, "sid": "x"}})
        async for _ in socket_:
            pass
        return socket_

    async def anything(request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        if tail.endswith("system_stats"):
            return await system_stats(request)
        if tail.endswith("prompt"):
            return await prompt(request)
        if tail.endswith("ws"):
            return await ws(request)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


@contextlib.contextmanager
def serve_in_thread(app: web.Application) -> Iterator[int]:
    """Serve ``app`` on 127.0.0.1 from a thread with its own loop; yield the port."""
    ready = threading.Event()
    stop: dict[str, Any] = {}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def run() -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.SockSite(runner, sock)
        loop.run_until_complete(site.start())
        stop["loop"], stop["runner"] = loop, runner
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True, name="stub-backend")
    thread.start()
    assert ready.wait(10)
    try:
        yield port
    finally:
        stop["loop"].call_soon_threadsafe(stop["loop"].stop)
        thread.join(10)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gateway exited"
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/gateway/healthz", timeout=1) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.05)  # bounded polling of another process
    raise TimeoutError("gateway not ready")


@pytest.mark.slow
def test_backend_controlled_strings_render_as_text(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with serve_in_thread(stub_backend()) as backend_port:
        config = {
            "servers": [
                {
                    "id": "hostile",
                    "name": NAME,
                    "url": f"http://127.0.0.1:{backend_port}{PATH}",
                }
            ],
            "health": {"interval": 0.2, "fast_interval": 0.1, "rise": 1},
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = (tmp_path / "gateway.log").open("wb")
        proc = subprocess.Popen(
            [*gateway_command(), "--config", str(path), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
        try:
            wait_healthy(url, proc)
            with sync_api.sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=str(CHROMIUM),
                    args=["--headless", "--no-sandbox", "--disable-gpu"],
                )
                try:
                    page = browser.new_page()
                    dialogs: list[str] = []
                    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                    page.add_init_script("window.__pwned = [];")
                    page.goto(f"{url}/gateway/")
                    expect = sync_api.expect
                    expect(page.get_by_text(NAME, exact=True)).to_be_visible(timeout=15_000)
                    expect(page.get_by_text(VERSION, exact=True)).to_be_visible(timeout=15_000)
                    expect(page.get_by_text(DEVICE)).to_be_visible(timeout=15_000)
                    expect(page.get_by_text(PATH, exact=False)).to_be_visible(timeout=15_000)
                    assert page.evaluate("window.__pwned") == []
                    assert dialogs == []
                    assert page.evaluate(INJECTED) == 0
                    # Positive control: the same payload, injected as markup, is counted.
                    page.evaluate(
                        "document.body.insertAdjacentHTML('beforeend', "
                        "'<img src=x onerror=\"window.__pwned.push(1)\">')"
                    )
                    assert page.evaluate(INJECTED) == 1
                finally:
                    browser.close()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()
