"""Request ids, per-request log context and the access log, through a real aiohttp server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import structlog
from aiohttp import WSMsgType, web

from gateway.keys import REQUEST_ID
from gateway.observability import access_log
from gateway.observability.access_log import BACKEND_USED, AccessLogger
from gateway.observability.logging import configure_logging, reset_logging
from gateway.observability.middleware import install_request_context, request_id_from

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    reset_logging()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def make_app() -> web.Application:
    app = web.Application()
    install_request_context(app)
    log = structlog.get_logger("gateway.test")

    async def hello(request: web.Request) -> web.Response:
        log.info("handling", seen_id=request[REQUEST_ID])
        request[BACKEND_USED] = "gpu-a"
        return web.json_response({"request_id": request[REQUEST_ID]})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"chunk")
        await response.write_eof()
        return response

    async def refuse(request: web.Request) -> web.Response:
        raise web.HTTPBadRequest(text="no")

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("handler bug")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        structlog.contextvars.bind_contextvars(client_id="c-1")
        log.info("ws opened")
        async for msg in sock:
            if msg.type is WSMsgType.TEXT:
                await sock.send_str(msg.data)
        return sock

    app.router.add_get("/hello", hello)
    app.router.add_get("/stream", stream)
    app.router.add_get("/refuse", refuse)
    app.router.add_get("/crash", crash)
    app.router.add_get("/ws", ws)
    return app


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("a" * 128, True),
        ("trace:01.x_y-z", True),
        ("a" * 129, False),
        ("", False),
        ("has space", False),
        ("semi;colon", False),
        ("nl\r\nX-Evil: 1", False),
        ("ünïcode", False),
        (None, False),
    ],
)
def test_request_id_validation(given: str | None, kept: bool) -> None:
    got = request_id_from(given)
    if kept:
        assert got == given
    else:
        assert HEX32.match(got)


async def test_client_request_id_is_echoed_and_generated_otherwise(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(make_app())
    resp = await client.get("/hello", headers={"X-Request-ID": "client-chosen.1"})
    assert resp.headers["X-Request-ID"] == "client-chosen.1"
    assert (await resp.json())["request_id"] == "client-chosen.1"

    resp = await client.get("/hello", headers={"X-Request-ID": "bad id!"})
    generated = resp.headers["X-Request-ID"]
    assert HEX32.match(generated)
    assert (await resp.json())["request_id"] == generated

    resp = await client.get("/hello")
    assert HEX32.match(resp.headers["X-Request-ID"])
    assert resp.headers["X-Request-ID"] != generated


@pytest.mark.parametrize(
    ("path", "status"),
    [("/stream", 200), ("/refuse", 400), ("/crash", 500), ("/missing", 404)],
)
async def test_every_answer_carries_the_request_id(aiohttp_client, path: str, status: int) -> None:  # type: ignore[no-untyped-def]
    configure_logging("critical", "json")  # keep the expected 500 traceback quiet
    client = await aiohttp_client(make_app())
    resp = await client.get(path, headers={"X-Request-ID": "rid-1"})
    assert resp.status == status
    assert resp.headers["X-Request-ID"] == "rid-1"


async def test_websocket_handshake_carries_the_request_id(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(make_app())
    async with client.ws_connect("/ws", headers={"X-Request-ID": "ws-rid"}) as sock:
        assert sock._response.headers["X-Request-ID"] == "ws-rid"
        await sock.send_str("ping")
        assert await sock.receive_str() == "ping"


async def test_log_lines_of_a_request_carry_its_context(
    aiohttp_client,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    client = await aiohttp_client(make_app())
    await client.get("/hello?token=secret-in-query", headers={"X-Request-ID": "ctx-1"})
    await client.get("/hello", headers={"X-Request-ID": "ctx-2"})
    await client.get("/crash", headers={"X-Request-ID": "ctx-3"})
    lines = json_lines(capsys.readouterr().out)
    handling = [line for line in lines if line["event"] == "handling"]
    assert [(h["request_id"], h["seen_id"]) for h in handling] == [
        ("ctx-1", "ctx-1"),
        ("ctx-2", "ctx-2"),
    ]
    assert handling[0]["method"] == "GET"
    assert handling[0]["path"] == "/hello"
    (error,) = [line for line in lines if line["event"].startswith("Error handling request")]
    assert error["logger"] == "aiohttp.server"
    assert error["request_id"] == "ctx-3"
    assert error["exception"][0]["exc_type"] == "RuntimeError"
    assert "secret-in-query" not in json.dumps(lines)


async def test_access_log_writes_one_structured_line_per_request(
    aiohttp_server,  # type: ignore[no-untyped-def]
    aiohttp_client,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    server = await aiohttp_server(make_app(), access_log_class=AccessLogger)
    client = await aiohttp_client(server)
    resp = await client.get("/hello?token=abc&clientId=x", headers={"X-Request-ID": "acc-1"})
    body = await resp.read()
    await client.get("/missing")
    async with client.ws_connect("/ws", headers={"X-Request-ID": "acc-ws"}) as sock:
        await sock.send_str("hi")
        await sock.receive_str()
    await client.close()  # the websocket's access line is written when its handler returns
    access_log.flush()  # lines are batched (out within FLUSH_WITHIN seconds)

    lines = [line for line in json_lines(capsys.readouterr().out) if line["event"] == "request"]
    first = lines[0]
    assert first["logger"] == "gateway.access"
    assert first["level"] == "info"
    assert first["method"] == "GET"
    assert first["path"] == "/hello"
    assert first["status"] == 200
    assert first["request_id"] == "acc-1"
    assert first["server"] == "gpu-a"
    assert first["remote"] == "127.0.0.1"
    assert first["bytes_sent"] > len(body)  # headers included
    assert 0 <= first["duration_s"] < 5
    missing = lines[1]
    assert missing["status"] == 404
    assert "server" not in missing
    assert HEX32.match(missing["request_id"])
    ws = next(line for line in lines if line["path"] == "/ws")
    assert ws["status"] == 101
    assert ws["request_id"] == "acc-ws"
    assert ws["client_id"] == "c-1"  # bound inside the handler, merged from the context
    assert len(lines) == 3


async def test_access_log_can_be_turned_off(
    aiohttp_server,  # type: ignore[no-untyped-def]
    aiohttp_client,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json", access_log=False)
    server = await aiohttp_server(make_app(), access_log_class=AccessLogger)
    client = await aiohttp_client(server)
    await client.get("/hello")
    lines = json_lines(capsys.readouterr().out)
    assert [line["event"] for line in lines] == ["handling"]
