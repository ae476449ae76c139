"""Malformed traffic at the proxy port, with raw sockets (issue 8 §2c).

Invalid HTTP, oversized request lines and headers, bodies over ``proxy.max_body_size``,
conflicting ``Content-Length``/``Transfer-Encoding`` (request smuggling), slow clients, invalid
websocket frames and oversized websocket messages. For each: a clean error answer (or close
code), nothing ambiguous forwarded to the backend (it records every request it gets), no crash,
and, at the end, the gateway's task count and this process's open file descriptors back to
their baseline while the gateway still serves.

What the gateway answers (documented here, checked below):

* malformed request line or headers, obs-fold, bad ``Content-Length``: **400** (aiohttp's parser);
* a request line or a header field over 65536 bytes: **400** (aiohttp reports ``LineTooLong`` as
  400, not 431);
* ``Content-Length`` together with ``Transfer-Encoding``, two different ``Content-Length``, an
  unknown or misplaced transfer coding: **400**, and the connection is closed;
* a body over ``proxy.max_body_size``: **413** JSON, before the body is read when its length is
  declared, and as soon as the limit is passed for a chunked body;
* an invalid websocket frame: close **1002** (protocol error), invalid UTF-8 **1007**, a message
  over ``proxy.ws_max_message_size``: **1009**; the client's upstream sockets are closed too.

Leniencies of aiohttp's server the gateway inherits (not refused, and harmless behind it because
the gateway re-frames everything it forwards): a request line without a version is taken as
HTTP/0.9; ``Transfer-Encoding: chunked`` is honoured in an HTTP/1.0 request and after
``identity``; an unmasked client websocket frame is accepted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
import uuid
from typing import Any

import pytest

from gateway import tasks as gateway_tasks
from gateway.app import WS_RELAY
from gateway.testing import example_prompt
from tests.conftest import wait_for_state
from tests.security.gateway_proc import Seen, recording_backend

LIMIT = 1024 * 1024


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or ``timeout``); return what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = b""
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while not _complete(out) and (chunk := await reader.read(65536)):
                out += chunk
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return out


def _complete(raw: bytes) -> bool:
    """Return True once ``raw`` holds one whole response with a Content-Length."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1."), raw[:200]
    return int(raw.split(b" ", 2)[1])


@pytest.fixture
async def gateway(start_app: Any, file_gateway: Any) -> Any:
    seen: list[Seen] = []
    backend = await start_app(recording_backend("rec", seen, job_duration=0.05))
    client, _ = await file_gateway(
        {
            "servers": [{"id": "b0", "name": "B0", "url": f"http://127.0.0.1:{backend.port}"}],
            "health": {"interval": 0.5, "fast_interval": 0.05, "rise": 1},
            "proxy": {"max_body_size": LIMIT, "ws_max_message_size": LIMIT},
        }
    )
    # Warm up: the backend is up and one request went through (its pooled connection exists).
    async with asyncio.timeout(10):
        while True:
            if (await client.get("/system_stats")).status == 200:
                break
            await asyncio.sleep(0.05)  # bounded: health checks run every 50 ms
    client.seen = seen
    return client


def forwarded(seen: list[Seen]) -> list[str]:
    return [s.path_qs for s in seen if "X-Forwarded-For" in s.headers]


async def settle(client: Any, tasks: int, fds: int) -> tuple[int, int]:
    """Wait (bounded polling) until tasks and fds are back to their baseline; return them."""
    relay = client.app[WS_RELAY]
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        now = (gateway_tasks.running_tasks(), open_fds())
        if now[0] <= tasks and now[1] <= fds and relay.connected_clients() == 0:
            break
        await asyncio.sleep(0.05)  # bounded polling of in-process state
    return gateway_tasks.running_tasks(), open_fds()


GARBAGE = {
    "binary": b"\x00\x01\x02GARBAGE\r\n\r\n",
    "bad-version": b"GET /system_stats HTTP/9.9\r\nHost: x\r\n\r\n",
    "bad-method": b"G(T /system_stats HTTP/1.1\r\nHost: x\r\n\r\n",
    "header-no-colon": b"GET /system_stats HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    "header-space-before-colon": b"GET /system_stats HTTP/1.1\r\nHost : x\r\n\r\n",
    "nul-in-header": b"GET /system_stats HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "obs-fold": b"GET /system_stats HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
    "bare-lf": b"GET /system_stats HTTP/1.1\nHost: x\n\n",
    "cl-negative": b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "cl-plus": b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{}",
    "cl-hex": b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Length: 0x2\r\n\r\n{}",
    "chunk-size-junk": b"POST /prompt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n{}\r\n0\r\n\r\n",
    "line-too-long": b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header-too-long": b"GET /system_stats HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"b" * 70_000
    + b"\r\n\r\n",
    "name-too-long": b"GET /system_stats HTTP/1.1\r\nHost: x\r\n" + b"N" * 70_000 + b": 1\r\n\r\n",
}

SMUGGLE = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
SMUGGLING = {
    "cl-te": b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "te-cl": b"POST /api/userdata/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 60\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "cl-cl": b"POST /api/userdata/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 40\r\n\r\n{}" + SMUGGLE,
    "te-unknown": b"POST /api/userdata/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n"
    b"\r\n0\r\n\r\n" + SMUGGLE,
    "te-chunked-not-last": b"POST /api/userdata/x HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "te-space-before-colon": b"POST /api/userdata/x HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "te-tab": b"POST /api/userdata/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
}


async def test_invalid_http_gets_400_and_is_never_forwarded(gateway):
    tasks, fds = gateway_tasks.running_tasks(), open_fds()
    before = len(gateway.seen)
    answers = {}
    for name, data in GARBAGE.items():
        answers[name] = status(await exchange(gateway.port, data))
    assert answers == dict.fromkeys(GARBAGE, 400), answers
    assert forwarded(gateway.seen[before:]) == []
    assert (await gateway.get("/system_stats")).status == 200
    assert await settle(gateway, tasks, fds + 2) <= (tasks, fds + 2)


async def test_conflicting_framing_is_refused_never_smuggled(gateway):
    tasks, fds = gateway_tasks.running_tasks(), open_fds()
    before = len(gateway.seen)
    answers = {}
    for name, data in SMUGGLING.items():
        raw = await exchange(gateway.port, data)
        answers[name] = status(raw)
        assert raw.count(b"HTTP/1.") == 1, (name, raw[:300])  # no second (smuggled) answer
    assert answers == dict.fromkeys(SMUGGLING, 400), answers
    assert not any("smuggled" in s.path_qs for s in gateway.seen)
    assert forwarded(gateway.seen[before:]) == []
    assert await settle(gateway, tasks, fds + 2) <= (tasks, fds + 2)


async def test_a_json_body_arriving_in_pieces_is_read_whole(gateway):
    """Regression: ``POST /prompt`` read only the first TCP segment of its body
    (``content.read(n)`` returns what has arrived), forwarding a truncated prompt."""
    prompt_id = uuid.uuid4().hex
    body = json.dumps(
        {
            "prompt": example_prompt("pieces"),
            "prompt_id": prompt_id,
            "extra_data": {"extra_pnginfo": {"workflow": "w" * 200_000}},
        }
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    writer.write(body[:1000])
    await writer.drain()
    # The gateway must wait for the rest: no answer may come before the body is complete.
    early = b""
    with contextlib.suppress(TimeoutError):
        early = await asyncio.wait_for(reader.read(1), 1.0)
    writer.write(body[1000:])
    await writer.drain()
    async with asyncio.timeout(10):
        raw = early + await reader.read()
    writer.close()
    assert early == b"", raw[:300]
    assert status(raw) == 200, raw[:500]
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["prompt_id"] == prompt_id


def _chunked_head(path: str, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n".encode()
        + extra
        + b"\r\n"
    )


async def _send_chunked(port: int, head: bytes, total: int, prefix: bytes = b"") -> bytes:
    """Stream a chunked body of ``prefix`` then ``total`` bytes (stops if the server answers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = b"x" * 65536
    try:
        writer.write(head)
        if prefix:
            writer.write(b"%x\r\n%s\r\n" % (len(prefix), prefix))
        sent = 0
        while sent < total:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        pass
    out = b""
    try:
        async with asyncio.timeout(5):
            while piece := await reader.read(65536):
                out += piece
                if b"\r\n\r\n" in out:
                    break
    except (ConnectionError, TimeoutError):
        pass
    writer.close()
    return out


MULTIPART_FILE_HEAD = (
    b'--zz\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)
MULTIPART_FIELD_HEAD = b'--zz\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n'
MULTIPART = b"Content-Type: multipart/form-data; boundary=zz\r\n"


async def test_malformed_or_huge_upload_forms_are_refused_cleanly(gateway):
    """Regression: a multipart body with an endless first line raised aiohttp's LineTooLong
    (500), and a text field was read into memory without any bound (``part.text()``)."""
    tasks, fds = gateway_tasks.running_tasks(), open_fds()
    raw = await _send_chunked(gateway.port, _chunked_head("/upload/image", MULTIPART), 600_000)
    assert status(raw) == 400, raw[:300]
    raw = await _send_chunked(
        gateway.port, _chunked_head("/upload/image", MULTIPART), LIMIT * 3, MULTIPART_FIELD_HEAD
    )
    assert status(raw) == 413, raw[:300]
    assert b"exceeds" in raw
    assert (await gateway.get("/system_stats")).status == 200
    assert await settle(gateway, tasks, fds + 2) <= (tasks, fds + 2)


@pytest.mark.parametrize(
    "path", ["/prompt", "/upload/image", "/api/userdata/big.bin", "/api/anything"]
)
async def test_bodies_over_the_limit_get_a_clean_413(gateway, path):
    tasks, fds = gateway_tasks.running_tasks(), open_fds()
    ctype = b"Content-Type: multipart/form-data; boundary=zz\r\n" if "upload" in path else b""
    # Declared length: refused before the body is sent (the client sends none of it).
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {LIMIT * 3}\r\n".encode()
        + ctype
        + b"\r\n"
    )
    raw = await exchange(gateway.port, head, timeout=5)
    assert status(raw) == 413, raw[:300]
    assert b"exceeds" in raw or b"too large" in raw.lower()
    # Chunked: refused once the limit is passed, whatever the route (an upload: in its file).
    prefix = MULTIPART_FILE_HEAD if "upload" in path else b""
    raw = await _send_chunked(gateway.port, _chunked_head(path, ctype), LIMIT * 3, prefix)
    assert status(raw) == 413, raw[:400]
    assert (await gateway.get("/system_stats")).status == 200
    assert await settle(gateway, tasks, fds + 2) <= (tasks, fds + 2)


async def test_slow_clients_do_not_block_others_and_leave_nothing_behind(gateway):
    tasks, fds = gateway_tasks.running_tasks(), open_fds()
    slow = []
    for i in range(40):  # slowloris: partial headers, never finished
        _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"GET /system_stats HTTP/1.1\r\nHost: x\r\nX-Slow-%d: " % i)
        await writer.drain()
        slow.append(writer)
    for _ in range(5):  # slow bodies: declared, never complete
        _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        await writer.drain()
        slow.append(writer)
    async with asyncio.timeout(5):  # everyone else is served meanwhile
        for _ in range(10):
            assert (await gateway.get("/system_stats")).status == 200
    for writer in slow:
        writer.close()
    after = await settle(gateway, tasks, fds + 2)
    assert after <= (tasks, fds + 2), (tasks, fds, after)


async def test_idle_partial_requests_are_closed_by_the_keepalive_timeout(aiohttp_server):
    """The server closes a connection that never completes its request (aiohttp's keep-alive
    timer starts at connection time). The CLI runs ``web.run_app``'s default of 75 s; here a
    1 s timer shows the mechanism without a long wait."""
    from aiohttp import web

    from gateway.app import create_app
    from gateway.config.models import GatewayConfig

    app = create_app(
        GatewayConfig.model_validate({"servers": [{"id": "x", "url": "http://127.0.0.1:9"}]})
    )
    server = await aiohttp_server(app, host="127.0.0.1", keepalive_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /gateway/healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed by the server, no answer
    writer.close()
    assert isinstance(app, web.Application)


# -- websockets ------------------------------------------------------------------------------


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """Encode one websocket frame (client frames are masked unless ``mask`` is False)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    if length < 126:
        head = bytes([first, (0x80 if mask else 0) | length])
    elif length < 65536:
        head = bytes([first, (0x80 if mask else 0) | 126]) + struct.pack(">H", length)
    else:
        head = bytes([first, (0x80 if mask else 0) | 127]) + struct.pack(">Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def big_frame(size: int) -> bytes:
    """A masked text frame of ``size`` spaces (masking spaces with a zero key keeps it fast)."""
    head = bytes([0x81, 0x80 | 127]) + struct.pack(">Q", size)
    return head + b"\x00\x00\x00\x00" + b" " * size


WS_CASES = {
    "reserved-bits": (frame(0x1, b"{}", rsv=0b100), 1002),
    "unknown-opcode": (frame(0x3, b"zz"), 1002),
    "long-control": (frame(0x9, b"p" * 126), 1002),
    "fragmented-control": (frame(0x9, b"p", fin=False), 1002),
    "orphan-continuation": (frame(0x0, b"zz"), 1002),
    "invalid-utf8": (frame(0x1, b"\xff\xfe\xfd"), 1007),
    "oversized-message": (big_frame(LIMIT + 4096), 1009),
    "oversized-fragments": (
        frame(0x1, b" " * (LIMIT // 2 + 1), fin=False) + frame(0x0, b" " * (LIMIT // 2 + 1)),
        1009,
    ),
    "huge-length-header": (bytes([0x82, 0x80 | 127]) + struct.pack(">Q", 1 << 62), 1009),
}


async def ws_attack(port: int, payload: bytes) -> int | None:
    """Open a websocket by hand, send ``payload``; return the close code the server sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /ws?clientId=attacker HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    data = b""
    async with asyncio.timeout(5):
        while b"\r\n\r\n" not in data:
            data += await reader.read(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    code = None
    try:
        writer.write(payload)
        await writer.drain()
    except ConnectionError:
        pass
    try:
        async with asyncio.timeout(5):
            buffer = rest
            while True:
                while len(buffer) >= 2:
                    opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
                    offset = 2
                    if length == 126:
                        length, offset = struct.unpack(">H", buffer[2:4])[0], 4
                    elif length == 127:
                        length, offset = struct.unpack(">Q", buffer[2:10])[0], 10
                    if len(buffer) < offset + length:
                        break
                    body = buffer[offset : offset + length]
                    buffer = buffer[offset + length :]
                    if opcode == 0x8:
                        return struct.unpack(">H", body[:2])[0] if len(body) >= 2 else None
                chunk = await reader.read(65536)
                if not chunk:
                    return code
                buffer += chunk
    except (ConnectionError, TimeoutError):
        return code
    finally:
        writer.close()


@pytest.mark.parametrize("case", list(WS_CASES))
async def test_invalid_websocket_frames_close_the_socket_cleanly(gateway, case):
    tasks, fds = gateway_tasks.running_tasks(), open_fds()
    payload, expected = WS_CASES[case]
    before = len(gateway.seen)
    code = await ws_attack(gateway.port, payload)
    assert code == expected, (case, code)
    # Nothing of it was relayed: the backend saw the handshake only.
    assert [s.path_qs for s in gateway.seen[before:] if "X-Forwarded-For" in s.headers] in (
        [],
        ["/ws?clientId=attacker"],
    )
    ws = await gateway.ws_connect("/ws?clientId=after")  # the gateway still serves websockets
    await ws.close()
    after = await settle(gateway, tasks, fds + 2)
    assert after <= (tasks, fds + 2), (case, tasks, fds, after)


# -- what backends send back ---------------------------------------------------------------


async def test_a_probe_answer_sent_in_pieces_is_read_whole(start_app, file_gateway):
    from aiohttp import web

    from gateway.keys import REGISTRY

    body = json.dumps(
        {"system": {"comfyui_version": "9.9.9", "argv": ["main.py"]}, "devices": []}
    ).encode()

    async def system_stats(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(body[:20])
        await asyncio.sleep(0.05)  # the answer's shape: two pieces, the second one later
        await response.write(body[20:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/system_stats", system_stats)
    backend = await start_app(app)
    client, _ = await file_gateway(
        {
            "servers": [{"id": "b0", "url": f"http://127.0.0.1:{backend.port}"}],
            "health": {"interval": 0.1, "fast_interval": 0.05, "rise": 1, "read_queue": False},
        }
    )
    registry = client.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.status("b0").last_check is not None)
    assert registry.status("b0").comfyui_version == "9.9.9"
