"""A hung backend: idempotent requests waiting on it move to the next backend once it is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.keys import REGISTRY
from tests.conftest import server_url, wait_for_state


def backend_app(name: str, hung: asyncio.Event, seen: list[str]) -> web.Application:
    """A backend answering its name, or nothing at all once ``hung`` is set (health included)."""

    async def handle(request: web.Request) -> web.Response:
        if request.path not in ("/system_stats", "/prompt"):  # health probes
            seen.append(f"{request.method} {request.path}")
        if hung.is_set():
            await asyncio.sleep(30)
        return web.json_response({"backend": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def resetting_backend(dropped: list[bytes]) -> Callable[..., Awaitable[None]]:
    """A raw backend answering health probes and resetting every other request (noted)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith((b"GET /system_stats ", b"GET /prompt ")):  # health probes
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 2\r\n\r\n{}"
                    )
                    await writer.drain()
                    continue
                dropped.append(head.split(b"\r\n", 1)[0])
                writer.transport.abort()  # reset, no answer
                return
        except (ConnectionError, asyncio.IncompleteReadError):
            return

    return handle


async def start_pair(start_app, make_gateway, read_timeout: float = 30.0):  # type: ignore[no-untyped-def]
    hung, seen_a, seen_b = asyncio.Event(), [], []
    a = await start_app(backend_app("a", hung, seen_a))
    b = await start_app(backend_app("b", asyncio.Event(), seen_b))
    servers = [
        {
            "id": "b0",
            "name": "a",
            "url": server_url(a),
            "priority": 0,
            "timeouts": {"connect": 1, "read": read_timeout},
        },
        {"id": "b1", "name": "b", "url": server_url(b), "priority": 10},
    ]
    gw = await make_gateway([], servers=servers, active="b0")
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.serving_id == "b0")
    return gw, hung, seen_a, seen_b


async def test_waiting_get_moves_to_the_next_backend_when_its_backend_hangs(
    start_app,  # type: ignore[no-untyped-def]
    make_gateway,  # type: ignore[no-untyped-def]
) -> None:
    gw, hung, seen_a, seen_b = await start_pair(start_app, make_gateway)
    assert (await (await gw.get("/object_info")).json())["backend"] == "a"
    hung.set()
    began = time.monotonic()
    resp = await gw.get("/object_info")
    assert resp.status == 200
    assert (await resp.json())["backend"] == "b"
    assert time.monotonic() - began < 10  # not the 30 s read timeout
    assert seen_a == ["GET /object_info", "GET /object_info"]  # sent to a, then moved
    assert seen_b == ["GET /object_info"]


async def test_non_idempotent_request_is_never_moved(
    start_app,  # type: ignore[no-untyped-def]
    make_gateway,  # type: ignore[no-untyped-def]
) -> None:
    gw, hung, _, seen_b = await start_pair(start_app, make_gateway, read_timeout=2.5)
    hung.set()
    resp = await gw.post("/free")  # no body, but POST: it may have had an effect on a
    assert resp.status == 504
    assert (await resp.json())["error"]["backend"] == "b0"
    assert seen_b == []


async def test_unanswered_get_goes_to_the_next_backend_when_its_connection_is_reset(
    start_app,  # type: ignore[no-untyped-def]
    make_gateway,  # type: ignore[no-untyped-def]
) -> None:
    """A backend dying under a GET (connection closed before any answer): the next one answers."""
    dropped: list[bytes] = []
    dying = await asyncio.start_server(resetting_backend(dropped), "127.0.0.1", 0)
    port = dying.sockets[0].getsockname()[1]
    seen_b: list[str] = []
    b = await start_app(backend_app("b", asyncio.Event(), seen_b))
    servers = [
        {"id": "b0", "name": "a", "url": f"http://127.0.0.1:{port}", "priority": 0},
        {"id": "b1", "name": "b", "url": server_url(b), "priority": 10},
    ]
    try:
        gw = await make_gateway([], servers=servers, active="b0")
        registry = gw.app[REGISTRY]
        await wait_for_state(registry, lambda: registry.serving_id == "b0")
        resp = await gw.get("/object_info")
        assert resp.status == 200
        assert (await resp.json())["backend"] == "b"
        assert dropped == [b"GET /object_info HTTP/1.1"] * 2  # the pool's own retry, then b
        post = await gw.post("/free")  # not idempotent: never sent twice, never moved
        assert post.status == 502
        assert dropped[2:] == [b"POST /free HTTP/1.1"]
        assert seen_b == ["GET /object_info"]
    finally:
        dying.close()
