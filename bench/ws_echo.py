"""A websocket echo backend for the relay benchmark: ``python bench/ws_echo.py --port 0``.

ComfyUI (and the simulated backend) ignores what clients send on ``/ws``, so a relay cannot be
measured in both directions against it. This tiny aiohttp server plays the backend instead: its
``/ws`` (and ``/api/ws``) sends every text and binary frame straight back, and it answers the
gateway's health probes (``GET /system_stats``, ``GET /prompt``) like an idle ComfyUI. It prints
``READY http://127.0.0.1:PORT`` once listening and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import uvloop
from aiohttp import WSMsgType, web

STATS = json.dumps(
    {
        "system": {"os": "posix", "comfyui_version": "0.3.64", "argv": ["ws_echo.py"]},
        "devices": [],
    }
).encode()
QUEUE = json.dumps({"exec_info": {"queue_remaining": 0}}).encode()


async def echo(request: web.Request) -> web.StreamResponse:
    """Send every frame back as it came."""
    ws = web.WebSocketResponse(max_msg_size=0, compress=False)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def system_stats(request: web.Request) -> web.Response:
    """Answer the health probe."""
    return web.Response(body=STATS, content_type="application/json")


async def prompt(request: web.Request) -> web.Response:
    """Answer the queue probe (idle)."""
    return web.Response(body=QUEUE, content_type="application/json")


async def serve(port: int) -> None:
    """Listen, print READY, wait for SIGTERM/SIGINT."""
    app = web.Application()
    for prefix in ("", "/api"):
        app.router.add_get(prefix + "/ws", echo)
        app.router.add_get(prefix + "/system_stats", system_stats)
        app.router.add_get(prefix + "/prompt", prompt)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    """Parse the port and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
