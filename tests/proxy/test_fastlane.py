"""The fast lane (gateway/proxy/fastlane.py): plain GETs at the socket level, the rest to aiohttp.

Each behaviour is checked against the full path: the same request is sent once in a form the
lane takes (``/echo``) and once in a form it hands over (``/ech%6F``: aiohttp decodes it to the
same route, the backend too), and what the backend and the client see must match.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from gateway.app import create_app
from gateway.keys import FAST_LANE, REGISTRY
from gateway.observability import access_log
from gateway.observability.logging import configure_logging, reset_logging
from gateway.proxy.observer import TrafficObserver
from tests.conftest import GatewayTestServer, gateway_config, server_url, wait_for_state
from tests.proxy.test_http_rescue import resetting_backend


def echo_backend(name: str = "a") -> web.Application:
    """A backend that answers with the request it saw (headers as a list, in order)."""

    async def echo(request: web.Request) -> web.StreamResponse:
        if request.path == "/system_stats":
            return web.json_response({"system": {}, "devices": []})
        if request.path == "/chunked":
            response = web.StreamResponse(headers={"X-Kind": "chunked"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for i in range(3):
                await response.write(f"part{i};".encode())
            await response.write_eof()
            return response
        if request.path == "/big":
            size = int(request.query.get("size", "0"))
            return web.Response(body=bytes(i % 251 for i in range(size)))
        if request.path == "/cookies":
            response = web.Response(text="ok", headers={"X-Request-ID": "backend-own"})
            response.headers.add("Set-Cookie", "a=1")
            response.headers.add("Set-Cookie", "b=2")
            return response
        return web.json_response(
            {
                "backend": name,
                "method": request.method,
                "target": request.raw_path,
                "headers": [[k.decode(), v.decode()] for k, v in request.raw_headers],
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def raw_exchange(port: int, data: bytes, answers: int = 1) -> list[tuple[bytes, bytes]]:
    """Send ``data`` on one connection; return ``answers`` (head, body) pairs, read in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        out = []
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            headers = parse_head(head)[1]
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding") == "chunked":
                body = b""
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    chunk = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    body += chunk[:-2]
            else:
                body = await reader.read()
            out.append((head, body))
        return out
    finally:
        writer.close()


def parse_head(head: bytes) -> tuple[int, dict[str, str], list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    pairs = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
    return status, {k.lower(): v for k, v in pairs}, [(k.lower(), v) for k, v in pairs]


async def start_gateway(aiohttp_server: Any, urls: list[str], **overrides: Any):  # type: ignore[no-untyped-def]
    app = create_app(gateway_config(urls, **overrides))
    server: GatewayTestServer = await aiohttp_server(app)
    registry = app[REGISTRY]
    await wait_for_state(registry, lambda: registry.serving_id is not None)
    return app, server


def seen_headers(body: bytes) -> list[tuple[str, str]]:
    return sorted((k.lower(), v) for k, v in json.loads(body)["headers"])


HEADER_SETS = [
    b"Host: gw.example:8188\r\nUser-Agent: t\r\nAccept: */*\r\n",
    b"Host: h\r\nConnection: keep-alive, X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: 5\r\n"
    b"TE: trailers\r\nReferer: http://h/x\r\nSec-Fetch-Mode: cors\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n"
    b"Forwarded: for=1.2.3.4\r\nProxy-Authorization: Basic x\r\n",
    b"Host: h\r\nX-Request-ID: client-id-1\r\nAuthorization: Bearer client\r\nX-Dup: 1\r\n"
    b"X-Dup: 2\r\nCookie: a=1\r\n",
    b"Host: h\r\nX-Request-ID: not valid!\r\nAccept-Encoding: gzip\r\n",
]


async def test_upstream_headers_match_the_full_path(aiohttp_server: Any) -> None:
    backend = await aiohttp_server(echo_backend())
    for trust in (False, True):
        app, gw = await start_gateway(
            aiohttp_server,
            [],
            servers=[
                {
                    "id": "b0",
                    "name": "a",
                    "url": server_url(backend),
                    "auth": {"headers": {"X-Api-Key": "k"}, "bearer_token": "backend-token"},
                }
            ],
            proxy={"trust_forwarded_headers": trust},
        )
        lane = app[FAST_LANE]
        for headers in HEADER_SETS:
            answered, handed = lane.answered, lane.handed_over
            ((fast_head, fast_body),) = await raw_exchange(
                gw.port, b"GET /echo?x=1 HTTP/1.1\r\n" + headers + b"\r\n"
            )
            assert (lane.answered, lane.handed_over) == (answered + 1, handed)
            ((_, full_body),) = await raw_exchange(
                gw.port, b"GET /ech%6F?x=1 HTTP/1.1\r\n" + headers + b"\r\n"
            )
            assert lane.handed_over == handed + 1
            fast, full = seen_headers(fast_body), seen_headers(full_body)
            fast_ids = [v for k, v in fast if k == "x-request-id"]
            full_ids = [v for k, v in full if k == "x-request-id"]
            assert len(fast_ids) == len(full_ids) == 1
            if b"client-id-1" in headers:
                assert fast_ids == full_ids == ["client-id-1"]
            else:  # fresh ids: 32 hex digits each, and what the client got back
                assert len(fast_ids[0]) == len(full_ids[0]) == 32
                assert parse_head(fast_head)[1]["x-request-id"] == fast_ids[0]
            strip = [(k, v) for k, v in fast if k != "x-request-id"]
            assert strip == [(k, v) for k, v in full if k != "x-request-id"], headers
            assert ("authorization", "Bearer backend-token") in fast  # the backend's wins
            assert json.loads(fast_body)["target"] == "/echo?x=1"
        await gw.close()


async def test_answer_heads_match_the_full_path(aiohttp_server: Any) -> None:
    backend = await aiohttp_server(echo_backend())
    _, gw = await start_gateway(aiohttp_server, [server_url(backend)])
    for path in ("chunked", "big?size=300000", "big?size=10", "cookies"):
        escaped = path.replace("c", "%63", 1).replace("b", "%62", 1)
        request = f"GET /{{}} HTTP/1.1\r\nHost: h\r\nX-Request-ID: rid-{path[:3]}\r\n\r\n"
        ((fast_head, fast_body),) = await raw_exchange(gw.port, request.format(path).encode())
        ((full_head, full_body),) = await raw_exchange(gw.port, request.format(escaped).encode())
        assert fast_body == full_body, path
        f_status, _, f_pairs = parse_head(fast_head)
        s_status, _, s_pairs = parse_head(full_head)
        assert f_status == s_status == 200

        def comparable(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
            # Date ticks; the full path re-frames small answers (reads them whole: a length)
            # where the lane streams them as the backend framed them.
            return sorted(
                (k, v) for k, v in pairs if k not in ("date", "content-length", "transfer-encoding")
            )

        assert comparable(f_pairs) == comparable(s_pairs), path
    ((head, _),) = await raw_exchange(gw.port, b"GET /cookies HTTP/1.1\r\nHost: h\r\n\r\n")
    pairs = parse_head(head)[2]
    assert [v for k, v in pairs if k == "set-cookie"] == ["a=1", "b=2"]
    assert [v for k, v in pairs if k == "x-request-id"] == ["backend-own"]
    await gw.close()


async def test_pipelined_requests_are_answered_in_order_across_a_hand_over(
    aiohttp_server: Any,
) -> None:
    backend = await aiohttp_server(echo_backend())
    app, gw = await start_gateway(aiohttp_server, [server_url(backend)])
    lane = app[FAST_LANE]
    requests = (
        b"GET /echo?n=1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /echo?n=2 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /echo?n=3 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}"
        b"GET /echo?n=4 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    answers = await raw_exchange(gw.port, requests, answers=4)
    targets = [json.loads(body)["target"] for _, body in answers]
    methods = [json.loads(body)["method"] for _, body in answers]
    assert targets == ["/echo?n=1", "/echo?n=2", "/echo?n=3", "/echo?n=4"]
    assert methods == ["GET", "GET", "POST", "GET"]
    assert lane.answered >= 2
    assert lane.handed_over == 1
    await gw.close()


async def test_malformed_requests_get_aiohttps_answers(aiohttp_server: Any) -> None:
    backend = await aiohttp_server(echo_backend())
    app, gw = await start_gateway(aiohttp_server, [server_url(backend)])
    for bad in (
        b"GET /echo HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
        b"GET /echo HTTP/1.1\nHost: h\n\n",
        b"GET /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ):
        ((head, _),) = await raw_exchange(gw.port, bad)
        assert parse_head(head)[0] == 400, bad
    assert app[FAST_LANE].answered == 0
    await gw.close()


async def test_a_reset_get_is_retried_once_then_handed_to_the_next_backend(
    aiohttp_server: Any,
) -> None:
    """A backend that resets GETs (health probes answered): two attempts there, then the next."""
    dropped: list[bytes] = []
    dying = await asyncio.start_server(resetting_backend(dropped), "127.0.0.1", 0)
    backend = await aiohttp_server(echo_backend("b"))
    servers = [
        {"id": "b0", "name": "a", "url": f"http://127.0.0.1:{dying.sockets[0].getsockname()[1]}"},
        {"id": "b1", "name": "b", "url": server_url(backend), "priority": 10},
    ]
    app = create_app(gateway_config([], servers=servers, active="b0"))
    failures: list[tuple[str, str]] = []
    app[FAST_LANE].observer.add(_Failures(failures))  # type: ignore[attr-defined]
    try:
        gw = await aiohttp_server(app)
        registry = app[REGISTRY]
        await wait_for_state(
            registry, lambda: all(s.state.value == "up" for s in registry.statuses().values())
        )
        ((head, body),) = await raw_exchange(gw.port, b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n")
        assert parse_head(head)[0] == 200
        assert json.loads(body)["backend"] == "b"
        assert dropped == [b"GET /echo HTTP/1.1"] * 2  # the retry on a fresh connection, then b
        assert failures == [("b0", "reset")]  # reported once: by the lane, not again
        assert app[FAST_LANE].handed_over == 1
        await gw.close()
    finally:
        dying.close()
        await dying.wait_closed()


class _Failures(TrafficObserver):
    def __init__(self, into: list[tuple[str, str]]) -> None:
        self.into = into

    def upstream_failed(self, backend: str, kind: str, detail: str) -> None:  # type: ignore[override]
        self.into.append((backend, kind))


async def test_a_read_timeout_answers_504(aiohttp_server: Any) -> None:
    async def slow(request: web.Request) -> web.Response:
        if request.path != "/system_stats":
            await asyncio.sleep(30)
        return web.json_response({"system": {}, "devices": []})

    app_b = web.Application()
    app_b.router.add_route("GET", "/{tail:.*}", slow)
    backend = await aiohttp_server(app_b)
    servers = [
        {"id": "b0", "name": "a", "url": server_url(backend), "timeouts": {"read": 1.0}},
    ]
    _, gw = await start_gateway(aiohttp_server, [], servers=servers)
    ((head, body),) = await raw_exchange(gw.port, b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
    assert parse_head(head)[0] == 504
    assert json.loads(body)["error"] == {
        "type": "upstream_timeout",
        "message": "backend 'b0' did not answer in time",
        "backend": "b0",
    }
    await gw.close()


async def test_access_line_of_a_fast_request(aiohttp_server: Any, capsys: Any) -> None:
    configure_logging("info", "json")
    try:
        backend = await aiohttp_server(echo_backend())
        app = create_app(gateway_config([server_url(backend)]))
        gw = await aiohttp_server(app, access_log_class=access_log.AccessLogger)
        registry = app[REGISTRY]
        await wait_for_state(registry, lambda: registry.serving_id is not None)
        capsys.readouterr()
        await raw_exchange(
            gw.port, b"GET /echo?token=secret HTTP/1.1\r\nHost: h\r\nX-Request-ID: acc-9\r\n\r\n"
        )
        access_log.flush()
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
        (line,) = [x for x in lines if x.get("event") == "request"]
        assert line["logger"] == "gateway.access"
        assert line["path"] == "/echo"  # never the query
        assert line["status"] == 200
        assert line["request_id"] == "acc-9"
        assert line["server"] == "b0"
        assert line["remote"] == "127.0.0.1"
        assert line["bytes_sent"] > 0
        assert app[FAST_LANE].answered == 1
        await gw.close()
    finally:
        reset_logging()


async def test_graceful_shutdown_finishes_answers_in_progress(aiohttp_server: Any) -> None:
    from gateway.serve import GatewayRunner
    from gateway.tasks import spawn

    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        if request.path == "/slow":
            started.set()
            await asyncio.sleep(0.5)
        return web.json_response({"system": {}, "devices": []})

    app_b = web.Application()
    app_b.router.add_route("GET", "/{tail:.*}", slow)
    backend = await aiohttp_server(app_b)
    app = create_app(gateway_config([server_url(backend)]))
    runner = GatewayRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    registry = app[REGISTRY]
    await wait_for_state(registry, lambda: registry.serving_id is not None)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    answer = spawn(raw_exchange(port, b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"), name="slow-get")
    await asyncio.wait_for(started.wait(), 5)
    await runner.cleanup()  # while /slow is still being answered
    ((head, body),) = await asyncio.wait_for(answer, 5)
    status, headers, _ = parse_head(head)
    assert status == 200
    assert headers["connection"] == "close"  # the lane stops keeping connections alive
    assert json.loads(body) == {"system": {}, "devices": []}
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # the idle one was closed
    idle_writer.close()


async def test_a_slow_client_pauses_the_backend(aiohttp_server: Any) -> None:
    """Flow control: what a client does not read stays in the backend, not in the gateway."""
    backend = await aiohttp_server(echo_backend())
    app, gw = await start_gateway(aiohttp_server, [server_url(backend)])
    size = 32 * 1024 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /big?size=%d HTTP/1.1\r\nHost: h\r\n\r\n" % size)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert parse_head(head)[1]["content-length"] == str(size)
    (front,) = app[FAST_LANE].fronts
    # Not reading: the lane pauses the backend connection once this client's buffer is full.
    for _ in range(500):  # bounded: 5 s
        if front._conn is not None and front._conn._paused:
            break
        await asyncio.sleep(0.01)
    assert front._conn._paused
    assert front._transport.get_write_buffer_size() < 4 * 1024 * 1024
    body = await asyncio.wait_for(reader.readexactly(size), 30)
    assert body[:251] == bytes(range(251))
    writer.close()
    await gw.close()
