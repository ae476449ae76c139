"""Websocket load client (runs as its own process): round trips through an echo backend.

``python bench/ws_load.py URL --mode json|binary --seconds S --connections N --window W``

Opens N websockets to URL (``ws://.../ws?clientId=...``), keeps W messages in flight on each,
and counts the echoes that come back within S seconds. ``json``: small ComfyUI-like JSON text
messages (~120 bytes); ``binary``: 1 MiB binary frames (a preview image). Every message crosses
the proxy twice (to the backend and back). Prints one JSON line: messages (round trips),
seconds, msgs_per_s and mb_per_s (payload bytes echoed back per second, MB = 10^6 bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import aiohttp
import uvloop
from aiohttp import WSMsgType

BINARY_SIZE = 1024 * 1024


def payload(mode: str) -> str | bytes:
    """Return the message sent in ``mode``."""
    if mode == "binary":
        return bytes(range(256)) * (BINARY_SIZE // 256)
    return json.dumps(
        {"type": "progress", "data": {"value": 1, "max": 20, "node": "3", "pad": "x" * 40}}
    )


async def one(
    session: aiohttp.ClientSession,
    url: str,
    message: str | bytes,
    window: int,
    start: asyncio.Event,
    ready: list[int],
    stop_at: list[float],
) -> tuple[int, int]:
    """Run one connection; return (round trips, payload bytes echoed) within the window."""
    sep = "&" if "?" in url else "?"
    target = f"{url}{sep}clientId={uuid.uuid4().hex}"
    binary = isinstance(message, bytes)
    size = len(message)
    async with session.ws_connect(target, max_msg_size=0, compress=0, heartbeat=None) as ws:
        ready[0] += 1
        await start.wait()
        send = ws.send_bytes if binary else ws.send_str
        for _ in range(window):
            await send(message)  # type: ignore[arg-type]
        trips = 0
        while True:
            msg = await ws.receive(timeout=30)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                raise RuntimeError(f"websocket ended: {msg}")
            if (
                msg.type == (WSMsgType.BINARY if binary else WSMsgType.TEXT)
                and len(msg.data) == size
            ):
                trips += 1
                if time.monotonic() >= stop_at[0]:
                    break
                await send(message)  # type: ignore[arg-type]
            # anything else (a backend greeting such as ComfyUI's status) is not an echo
        return trips, trips * size


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    """Connect, run the window, report."""
    message = payload(args.mode)
    start = asyncio.Event()
    ready = [0]
    stop_at = [float("inf")]
    async with aiohttp.ClientSession() as session:
        runs = [
            one(session, args.url, message, args.window, start, ready, stop_at)
            for _ in range(args.connections)
        ]
        gathered = asyncio.gather(*runs)
        async with asyncio.timeout(30):
            while ready[0] < args.connections:
                if gathered.done():
                    await gathered  # surfaces the connection error
                await asyncio.sleep(0.01)
        began = time.monotonic()
        stop_at[0] = began + args.seconds
        start.set()
        results = await asyncio.wait_for(gathered, args.seconds + 60)
        elapsed = time.monotonic() - began
    trips = sum(r[0] for r in results)
    moved = sum(r[1] for r in results)
    return {
        "messages": trips,
        "seconds": elapsed,
        "msgs_per_s": trips / elapsed,
        "mb_per_s": moved / elapsed / 1e6,
    }


def main() -> None:
    """Parse arguments, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--mode", choices=["json", "binary"], default="json")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--window", type=int, default=16)
    result = uvloop.run(main_async(parser.parse_args()))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
