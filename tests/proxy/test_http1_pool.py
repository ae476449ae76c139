"""The lean keep-alive pool of :mod:`gateway.proxy.upstream`, against raw and aiohttp backends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.config.models import ServerConfig
from gateway.proxy.upstream import Backend, Ticket
from gateway.tasks import spawn


def backend_for(url: str, **extra: object) -> Backend:
    return Backend(ServerConfig.model_validate({"id": "b0", "name": "b0", "url": url, **extra}))


def headers(backend: Backend) -> CIMultiDict[str]:
    return CIMultiDict({"Host": backend.host_header})


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[..., asyncio.Future[int]]]:
    """Start a raw TCP server driven by a per-connection coroutine; return its port."""
    servers: list[asyncio.Server] = []

    async def start(handle) -> int:  # type: ignore[no-untyped-def]
        async def quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(
                asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError
            ):
                await handle(reader, writer)

        server = await asyncio.start_server(quiet, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
BIG = 4 * 1024 * 1024


async def test_sequential_requests_share_one_connection(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    peers: list[object] = []

    async def handler(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/x", handler)
    server = await aiohttp_server(app)
    backend = backend_for(f"http://127.0.0.1:{server.port}")
    for _ in range(5):
        answer = await backend.http.request("GET", "/x", headers(backend))
        assert answer.status == 200
        assert await answer.read() == b"hi"
    assert len(set(peers)) == 1
    await backend.close()


async def test_idempotent_request_is_retried_once_when_kept_connection_dies(raw_server) -> None:  # type: ignore[no-untyped-def]
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(OK)  # keep-alive, then close under the next request
        await writer.drain()
        if connections == 1:
            await read_request(reader)
        writer.close()

    port = await raw_server(handle)
    backend = backend_for(f"http://127.0.0.1:{port}")
    first = await backend.http.request("GET", "/a", headers(backend))
    assert await first.read() == b"ok"
    second = await backend.http.request("GET", "/b", headers(backend))
    assert await second.read() == b"ok"
    assert connections == 2
    await backend.close()


async def test_non_idempotent_request_is_not_retried(raw_server) -> None:  # type: ignore[no-untyped-def]
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)
        writer.close()  # the POST reached the backend, which went away without answering

    port = await raw_server(handle)
    backend = backend_for(f"http://127.0.0.1:{port}")
    await (await backend.http.request("GET", "/a", headers(backend))).read()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await backend.http.request("POST", "/interrupt", headers(backend))
    assert connections == 1
    await backend.close()


async def test_partly_read_answer_closes_its_connection(raw_server) -> None:  # type: ignore[no-untyped-def]
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"x" * BIG)
            await writer.drain()

    port = await raw_server(handle)
    backend = backend_for(f"http://127.0.0.1:{port}")
    answer = await backend.http.request("GET", "/big", headers(backend))
    await answer.content.readany()
    answer.release()  # the client went away mid-body: the connection must not be reused
    answer = await backend.http.request("GET", "/big", headers(backend))
    assert len(await answer.read()) == BIG
    assert connections == 2
    await backend.close()


async def test_refused_connection_raises_client_connector_error() -> None:
    with socket_closed_port() as port:
        backend = backend_for(f"http://127.0.0.1:{port}")
        with pytest.raises(aiohttp.ClientConnectorError):
            await backend.http.request("GET", "/x", headers(backend))
        await backend.close()


async def test_read_timeout_raises_server_timeout(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)
        writer.close()

    port = await raw_server(handle)
    backend = backend_for(f"http://127.0.0.1:{port}", timeouts={"connect": 1, "read": 0.2})
    with pytest.raises(aiohttp.ServerTimeoutError):
        await backend.http.request("GET", "/slow", headers(backend))
    await backend.close()


async def test_at_most_max_connections_in_use(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    active = peak = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/x", handler)
    server = await aiohttp_server(app)
    backend = backend_for(f"http://127.0.0.1:{server.port}", max_connections=2)

    async def one() -> bytes:
        return await (await backend.http.request("GET", "/x", headers(backend))).read()

    assert await asyncio.gather(*(one() for _ in range(6))) == [b"ok"] * 6
    assert peak == 2
    await backend.close()


async def test_interim_1xx_answers_are_skipped(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK)
        await writer.drain()
        writer.close()

    port = await raw_server(handle)
    backend = backend_for(f"http://127.0.0.1:{port}")
    answer = await backend.http.request("GET", "/x", headers(backend))
    assert answer.status == 200
    assert await answer.read() == b"ok"
    await backend.close()


def test_target_keeps_raw_bytes_and_replaces_a_client_token() -> None:
    backend = backend_for("http://127.0.0.1:1/base", auth={"query_token": "s e&cret"})
    assert backend.target("/view?filename=a%20b.png&token=mine&x") == (
        "/base/view?filename=a%20b.png&x&token=s+e%26cret"
    )
    plain = backend_for("http://[::1]:8188")
    assert plain.target("/x?a=%2F") == "/x?a=%2F"
    assert plain.host_header == "[::1]:8188"


@contextlib.contextmanager
def socket_closed_port():  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


async def test_a_ticket_abandons_a_request_waiting_for_a_slot_or_an_answer(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)  # hung

    port = await raw_server(handle)
    backend = backend_for(f"http://127.0.0.1:{port}", max_connections=1)
    loop = asyncio.get_running_loop()
    answering, slot = Ticket(loop.time()), Ticket(loop.time())
    first = spawn(backend.http.request("GET", "/a", headers(backend), ticket=answering), name="a")
    second = spawn(backend.http.request("GET", "/b", headers(backend), ticket=slot), name="b")
    await asyncio.sleep(0.2)
    assert answering.waiting
    assert slot.waiting
    slot.abandon(LookupError("gave up waiting for a connection"))
    answering.abandon(LookupError("gave up waiting for the answer"))
    for task, message in ((second, "connection"), (first, "answer")):
        with pytest.raises(LookupError, match=message):
            await task
    await backend.close()


async def test_the_retry_opens_a_fresh_connection(raw_server) -> None:  # type: ignore[no-untyped-def]
    """A dead backend kills every kept-alive connection: the retry must not take another."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        await asyncio.sleep(0.05)  # keep both first requests in flight together
        writer.write(OK)
        await writer.drain()
        if connections <= 2:
            await read_request(reader)
            writer.close()  # "died" under the next request, without answering
            return
        while True:
            await read_request(reader)
            writer.write(OK)
            await writer.drain()

    port = await raw_server(handle)
    backend = backend_for(f"http://127.0.0.1:{port}")

    async def one() -> bytes:
        return await (await backend.http.request("GET", "/x", headers(backend))).read()

    assert await asyncio.gather(one(), one()) == [b"ok", b"ok"]  # two kept-alive connections
    assert await one() == b"ok"
    assert connections == 3
    await backend.close()
