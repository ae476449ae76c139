"""HTTP forwarding against stub backends: streaming, paths, headers, errors."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from yarl import URL

from gateway.keys import REGISTRY
from gateway.registry import ServerState
from tests.conftest import server_url, wait_for_state

MB = 1024 * 1024


def echo_app(gate: asyncio.Event | None = None, chunk_seen: asyncio.Event | None = None):
    """A backend that echoes what it received, plus streaming endpoints controlled by events."""
    app = web.Application(client_max_size=200 * MB)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "raw_path": request.raw_path,
                "method": request.method,
                "length": len(body),
                "headers": dict(request.headers.items()),
                "header_lists": {k: request.headers.getall(k) for k in request.headers},
            }
        )

    async def slow_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 8 * MB
        await response.prepare(request)
        await response.write(b"a" * MB)
        assert gate is not None
        await gate.wait()  # the rest only once the client proved it got the first part
        for _ in range(7):
            await response.write(b"b" * MB)
        return response

    async def slow_upload(request: web.Request) -> web.Response:
        first = await request.content.readany()
        assert chunk_seen is not None
        chunk_seen.set()  # the gateway forwarded the start before the client finished sending
        total = len(first)
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"length": total})

    async def cookies(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    async def boom(request: web.Request) -> web.Response:
        return web.Response(status=500, text="backend error")

    app.router.add_get("/stream", slow_stream)
    app.router.add_post("/upload/slow", slow_upload)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/boom", boom)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def test_percent_encoded_path_and_query_reach_backend_byte_for_byte(start_app, make_gateway):
    backend = await start_app(echo_app())
    gw = await make_gateway([server_url(backend)])
    raw = "/api/userdata/workflows%2Fa%20b.json?x=%20y&z=%2F&empty=&flag"
    # encoded=True: the test client itself must not normalise what it sends.
    resp = await gw.session.get(URL(f"http://127.0.0.1:{gw.port}{raw}", encoded=True))
    assert resp.status == 200
    assert (await resp.json())["raw_path"] == raw


async def test_hop_by_hop_stripped_and_forwarded_headers_added(start_app, make_gateway):
    backend = await start_app(echo_app())
    gw = await make_gateway([server_url(backend)])
    resp = await gw.get(
        "/x",
        headers={
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-Forwarded-For": "6.6.6.6",
            "X-Request-ID": "req-123",
            "Comfy-User": "alice",
        },
    )
    seen = (await resp.json())["headers"]
    lowered = {k.lower(): v for k, v in seen.items()}
    for hop in ("x-secret-hop", "keep-alive", "proxy-authorization", "origin"):
        assert hop not in lowered
    assert lowered["x-forwarded-for"] == "127.0.0.1"  # untrusted client value dropped
    assert lowered["x-forwarded-proto"] == "http"
    assert lowered["x-forwarded-host"] == f"127.0.0.1:{gw.port}"
    assert lowered["x-request-id"] == "req-123"
    assert lowered["comfy-user"] == "alice"
    assert resp.headers["X-Request-ID"] == "req-123"


async def test_duplicate_response_headers_survive(start_app, make_gateway):
    backend = await start_app(echo_app())
    gw = await make_gateway([server_url(backend)])
    resp = await gw.get("/cookies")
    assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]


async def test_download_streams_before_backend_finishes(start_app, make_gateway):
    gate = asyncio.Event()
    backend = await start_app(echo_app(gate=gate))
    gw = await make_gateway([server_url(backend)])
    resp = await gw.get("/stream")
    assert resp.headers["Content-Length"] == str(8 * MB)
    got = 0
    async with asyncio.timeout(10):
        while got < MB:  # the first megabyte arrives while the backend still waits on `gate`
            got += len(await resp.content.readany())
    gate.set()
    rest = await resp.read()
    assert got + len(rest) == 8 * MB


async def test_upload_streams_before_client_finishes(start_app, make_gateway):
    chunk_seen = asyncio.Event()
    backend = await start_app(echo_app(chunk_seen=chunk_seen))
    gw = await make_gateway([server_url(backend)])

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * MB
        await asyncio.wait_for(chunk_seen.wait(), 10)  # the backend got data before the end
        for _ in range(99):
            yield b"y" * MB

    resp = await gw.post("/upload/slow", data=body())
    assert resp.status == 200
    assert (await resp.json())["length"] == 100 * MB


async def test_head_has_no_body_and_keeps_length(start_app, make_gateway):
    backend = await start_app(echo_app())
    gw = await make_gateway([server_url(backend)])
    get = await gw.get("/cookies")
    head = await gw.head("/cookies")
    assert head.status == 200
    assert await head.read() == b""
    assert head.headers["Content-Length"] == get.headers["Content-Length"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_refused_connection_answers_502_json_naming_backend(start_app, make_gateway):
    backend = await start_app(echo_app())
    # Slow checks: the refusal is seen by the request before the health checker notices it.
    gw = await make_gateway([server_url(backend)], health={"interval": 60, "down_interval": 60})
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0"))
    await backend.close()
    resp = await gw.get("/system_stats")
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["type"] == "upstream_unreachable"
    assert error["backend"] == "b0"
    assert "connect" in error["message"]


async def test_every_backend_down_answers_503_json(make_gateway):
    gw = await make_gateway([f"http://127.0.0.1:{_closed_port()}"])
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.status("b0").state is ServerState.DOWN)
    resp = await gw.get("/system_stats")
    assert resp.status == 503
    error = (await resp.json())["error"]
    assert error["type"] == "no_backend_available"
    assert "down" in error["message"]


async def test_backend_timeout_answers_504_json(start_app, make_gateway):
    hang = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await hang.wait()
        return web.Response()

    app = web.Application()
    app.router.add_get("/slow", never)
    backend = await start_app(app)
    servers = [
        {
            "id": "b0",
            "name": "slow",
            "url": server_url(backend),
            "timeouts": {"connect": 1, "read": 0.2},
        }
    ]
    gw = await make_gateway([server_url(backend)], servers=servers)
    resp = await gw.get("/slow")
    hang.set()
    assert resp.status == 504
    error = (await resp.json())["error"]
    assert error["type"] == "upstream_timeout"
    assert error["backend"] == "b0"


async def test_client_disconnect_cancels_upstream_request(start_app, make_gateway):
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return web.Response()

    app = web.Application()
    app.router.add_get("/slow", slow)
    backend = await start_app(app)
    # The backend must notice its client (the gateway) going away.
    backend.runner._kwargs["handler_cancellation"] = True  # type: ignore[union-attr]
    gw = await make_gateway([server_url(backend)])
    request = asyncio.get_running_loop().create_task(gw.get("/slow"))
    await asyncio.wait_for(started.wait(), 10)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await asyncio.wait_for(cancelled.wait(), 10)


async def test_oversized_body_refused_with_413(start_app, make_gateway):
    backend = await start_app(echo_app())
    gw = await make_gateway([server_url(backend)], proxy={"max_body_size": 4096})
    resp = await gw.post("/upload/image", data=b"z" * 10_000)
    assert resp.status == 413
    assert (await resp.json())["error"]["type"] == "request_too_large"


async def test_backend_5xx_is_passed_through(start_app, make_gateway):
    backend = await start_app(echo_app())
    gw = await make_gateway([server_url(backend)])
    resp = await gw.get("/boom")
    assert resp.status == 500
    assert await resp.text() == "backend error"


async def test_backend_credentials_are_sent_to_their_backend(start_app, make_gateway):
    backend = await start_app(echo_app())
    servers = [
        {
            "id": "b0",
            "name": "auth",
            "url": server_url(backend),
            "auth": {"bearer_token": "s3cret", "query_token": "qt", "headers": {"X-Api-Key": "k"}},
        }
    ]
    gw = await make_gateway([server_url(backend)], servers=servers)
    resp = await gw.get("/object_info?x=1")
    data = await resp.json()
    assert data["raw_path"] == "/object_info?x=1&token=qt"
    assert data["headers"]["Authorization"] == "Bearer s3cret"
    assert data["headers"]["X-Api-Key"] == "k"


async def test_backend_credentials_never_go_to_another_backend(start_app, make_gateway):
    first, second = await start_app(echo_app()), await start_app(echo_app())
    servers = [
        {
            "id": "b0",
            "name": "auth",
            "url": server_url(first),
            "auth": {"bearer_token": "s3cret", "query_token": "qt"},
        },
        {"id": "b1", "name": "plain", "url": server_url(second)},
    ]
    gw = await make_gateway([], servers=servers, active="b1")
    data = await (await gw.get("/x")).json()
    assert data["raw_path"] == "/x"
    assert "s3cret" not in json.dumps(data)
