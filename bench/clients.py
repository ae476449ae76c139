"""HTTP and websocket load clients of the benchmark, each run as its own process.

``python bench/clients.py upload URL FILE``
    POST FILE to ``URL/upload/image`` as ComfyUI's frontend does (multipart ``image``,
    ``type=input``, ``overwrite=true``), streamed from disk; prints seconds and MB/s.
``python bench/clients.py pageload URL [--connections 6]``
    Load the ComfyUI frontend like a browser's first visit: ``index.html``, every ``src``/
    ``href`` it names, the entry module's preload list (Vite's ``__vite__mapDeps``), every
    static ``import`` of the modules fetched, transitively, and the ``url()`` files of the
    stylesheets; 6 connections, as a browser opens per host. Prints files, bytes, seconds.
``python bench/clients.py hammer URL --rate R --seconds S --timeout T --out FILE``
    Open-loop GETs of an idempotent URL at R per second for S seconds (a hung request does not
    hold the next one back), each with a client timeout of T seconds; every request's start,
    end and outcome go to FILE as JSON lines. Prints ``STARTED`` once the first request left.
``python bench/clients.py idle-ws URL N``
    Open N websockets (``URL?clientId=...``), print ``OPEN N``, then hold them until killed.

MB are 10^6 bytes. Only 127.0.0.1 URLs are used by the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import uvloop
from yarl import URL

# -- upload -----------------------------------------------------------------------------------


async def upload(url: str, path: Path, size: int) -> dict[str, float]:
    """POST ``path`` (``size`` bytes) to ``url/upload/image``; return the timing."""
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with path.open("rb") as handle:
            form = aiohttp.FormData()
            form.add_field("type", "input")
            form.add_field("overwrite", "true")
            form.add_field("image", handle, filename=path.name, content_type="image/png")
            began = time.monotonic()
            async with session.post(url + "/upload/image", data=form) as resp:
                body = await resp.read()
                elapsed = time.monotonic() - began
        if resp.status != 200:
            raise SystemExit(f"upload answered {resp.status}: {body[:300]!r}")
    return {"seconds": elapsed, "bytes": size, "mb_per_s": size / elapsed / 1e6}


# -- page load --------------------------------------------------------------------------------

_HTML_REF = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_JS_IMPORT = re.compile(r"""(?:\bimport|\bfrom)\s*["'](\.{1,2}/[^"']+)["']""")
_VITE_DEPS = re.compile(r"""m\.f=\[([^\]]*)\]""")
_CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+)["']?\s*\)""")


def _refs(kind: str, text: str, entry: bool) -> list[str]:
    if kind == "html":
        return _HTML_REF.findall(text)
    if kind == "js":
        found = _JS_IMPORT.findall(text)
        if entry:  # the entry module preloads these with its first dynamic import
            for deps in _VITE_DEPS.findall(text):
                found += re.findall(r"""["'](\.{1,2}/[^"']+)["']""", deps)
        return found
    if kind == "css":
        return [u for u in _CSS_URL.findall(text) if not u.startswith(("data:", "#"))]
    return []


def _kind(url: URL, content_type: str) -> str:
    path = url.path
    if path.endswith("/") or path.endswith(".html") or "html" in content_type:
        return "html"
    if path.endswith((".js", ".mjs")):
        return "js"
    if path.endswith(".css"):
        return "css"
    return "other"


async def pageload(base: str, connections: int) -> dict[str, float]:
    """Fetch the page and its assets as described in the module docstring."""
    root = URL(base + "/")
    seen: set[str] = set()
    totals = {"files": 0, "bytes": 0, "missing": 0}
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def fetch(url: URL, entry: bool, group: asyncio.TaskGroup) -> None:
            async with session.get(url) as resp:
                body = await resp.read()
                content_type = resp.headers.get("Content-Type", "")
            totals["files"] += 1
            totals["bytes"] += len(body)
            if resp.status != 200:
                totals["missing"] += 1
                return
            kind = _kind(url, content_type)
            if kind == "other":
                return
            text = body.decode("utf-8", errors="replace")
            first_module = kind == "html"
            for ref in _refs(kind, text, entry):
                target = url.join(URL(ref.split("#")[0]))
                if target.origin() != root.origin():
                    continue
                key = str(target.with_fragment(None))
                if key in seen:
                    continue
                seen.add(key)
                is_entry = first_module and target.path.endswith(".js") and "/index-" in key
                group.create_task(fetch(target, is_entry, group))

        began = time.monotonic()
        seen.add(str(root))
        async with asyncio.TaskGroup() as group:
            group.create_task(fetch(root, False, group))
        elapsed = time.monotonic() - began
    return {**totals, "seconds": elapsed}


# -- failover hammer ----------------------------------------------------------------------------


async def hammer(url: str, rate: float, seconds: float, timeout: float, out: Path) -> dict:
    """Issue open-loop GETs; write one JSON line per request; return a summary."""
    records: list[tuple[float, float, str, str]] = []
    connector = aiohttp.TCPConnector(limit=0)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def one() -> None:
            began = time.monotonic()
            detail = ""
            try:
                async with session.get(url) as resp:
                    body = await resp.read()
                    outcome = str(resp.status)
                    if resp.status != 200:
                        detail = body[:300].decode(errors="replace")
            except TimeoutError:
                outcome = "timeout"
            except aiohttp.ClientError as exc:
                outcome, detail = type(exc).__name__, str(exc)
            records.append((began, time.monotonic(), outcome, detail))

        start = time.monotonic()
        n = 0
        async with asyncio.TaskGroup() as group:
            while (now := time.monotonic()) < start + seconds:
                due = start + n / rate
                if due > now:
                    await asyncio.sleep(due - now)
                group.create_task(one())
                if n == 0:
                    print("STARTED", flush=True)
                n += 1
    with out.open("w", encoding="utf-8") as fh:
        for began, ended, outcome, detail in records:
            line = {"start": began, "end": ended, "outcome": outcome, "detail": detail}
            fh.write(json.dumps(line) + "\n")
    ok = sum(1 for r in records if r[2] == "200")
    return {"requests": len(records), "ok": ok, "failed": len(records) - ok}


# -- idle websockets ------------------------------------------------------------------------------


async def idle_ws(url: str, count: int) -> None:
    """Open ``count`` websockets, say so, hold them until the process is killed."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        sep = "&" if "?" in url else "?"

        async def open_one() -> None:
            ws = await session.ws_connect(
                f"{url}{sep}clientId={uuid.uuid4().hex}", heartbeat=None, compress=0
            )
            sockets.append(ws)

        batch = 50
        for first in range(0, count, batch):
            await asyncio.gather(*(open_one() for _ in range(min(batch, count - first))))

        async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for _ in ws:  # greetings, pings (answered by autoping)
                pass

        print(f"OPEN {len(sockets)}", flush=True)
        await asyncio.gather(*(drain(ws) for ws in sockets), return_exceptions=True)


def main() -> None:
    """Dispatch the subcommand."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upload")
    up.add_argument("url")
    up.add_argument("file", type=Path)
    page = sub.add_parser("pageload")
    page.add_argument("url")
    page.add_argument("--connections", type=int, default=6)
    ham = sub.add_parser("hammer")
    ham.add_argument("url")
    ham.add_argument("--rate", type=float, default=200)
    ham.add_argument("--seconds", type=float, default=10)
    ham.add_argument("--timeout", type=float, default=10)
    ham.add_argument("--out", type=Path, required=True)
    idle = sub.add_parser("idle-ws")
    idle.add_argument("url")
    idle.add_argument("count", type=int)
    args = parser.parse_args()
    if args.command == "upload":
        result = uvloop.run(upload(args.url, args.file, args.file.stat().st_size))
    elif args.command == "pageload":
        result = uvloop.run(pageload(args.url, args.connections))
    elif args.command == "hammer":
        result = uvloop.run(hammer(args.url, args.rate, args.seconds, args.timeout, args.out))
    else:
        uvloop.run(idle_ws(args.url, args.count))
        return
    print(json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: the numbers are out


if __name__ == "__main__":
    main()
