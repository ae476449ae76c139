"""The relay's write coalescing: small frames of one loop iteration leave in one write."""

from __future__ import annotations

import asyncio
import json

from aiohttp import WSMsgType

from gateway.app import WS_RELAY
from gateway.proxy.websocket import COALESCE_MAX, DROP, _CoalescingTransport
from tests.conftest import server_url
from tests.proxy.test_ws_relay import echo_ws_app


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


TEXT = b"\x81\x05hello"
CLOSE = b"\x88\x02\x03\xe8"
PING = b"\x89\x00"


async def test_small_frames_of_one_iteration_leave_in_one_write():
    real = FakeTransport()
    t = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    for _ in range(3):
        t.write(TEXT)
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [TEXT * 3]
    t.write(TEXT)
    await asyncio.sleep(0)
    assert real.writes == [TEXT * 3, TEXT]


async def test_control_frames_flush_at_once_in_order():
    real = FakeTransport()
    t = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(TEXT)
    t.write(CLOSE)  # aiohttp may close the transport right after: must be on it already
    assert real.writes == [TEXT + CLOSE]
    t.write(PING)
    assert real.writes == [TEXT + CLOSE, PING]
    await asyncio.sleep(0)
    assert real.writes == [TEXT + CLOSE, PING]


async def test_large_frames_go_at_once_after_what_is_kept():
    real = FakeTransport()
    t = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    big = b"\x82\x7f" + (COALESCE_MAX + 1).to_bytes(8, "big") + b"x" * (COALESCE_MAX + 1)
    t.write(big)
    assert real.writes == [big]
    t.write(TEXT)
    t.write(big)
    assert real.writes == [big, TEXT + big]


async def test_nothing_is_written_to_a_closing_transport():
    real = FakeTransport()
    t = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(TEXT)
    real.closing = True
    assert t.is_closing()
    await asyncio.sleep(0)
    assert real.writes == []
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_both_halves_of_a_bridge_coalesce(start_app, make_gateway):
    """Guards aiohttp's private ``_writer.transport``: the relay depends on it for speed."""
    backend = await start_app(echo_ws_app())
    gw = await make_gateway([server_url(backend)])
    async with gw.ws_connect("/ws?clientId=co") as ws:
        await ws.receive_json(timeout=5)
        bridge = gw.app[WS_RELAY].bridge("co")
        assert bridge is not None
        assert isinstance(bridge.client._writer.transport, _CoalescingTransport)
        (upstream,) = bridge.upstreams.values()
        assert isinstance(upstream.ws._writer.transport, _CoalescingTransport)


async def test_a_burst_then_a_backend_close_arrives_whole_and_in_order(start_app, make_gateway):
    backend = await start_app(echo_ws_app(close_code=4000))
    gw = await make_gateway([server_url(backend)])
    async with gw.ws_connect("/ws") as ws:
        await ws.receive_json(timeout=5)
        sent = [json.dumps({"type": "progress", "data": {"value": i}}) for i in range(500)]
        for text in sent:
            await ws.send_str(text)
        await ws.send_str("close please")
        got = []
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type != WSMsgType.TEXT:
                break
            got.append(msg.data)
        assert got == sent
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 4000


async def test_keyword_filter_skips_parsing_only_for_hooks_that_declare_keywords(
    start_app, make_gateway
):
    backend = await start_app(echo_ws_app())
    gw = await make_gateway([server_url(backend)])
    relay = gw.app[WS_RELAY]
    seen: list[dict] = []

    def drop_secret(client_id, backend_id, message):
        seen.append(message)
        return DROP if message.get("secret") else None

    drop_secret.ws_keywords = ('"secret"',)  # type: ignore[attr-defined]
    relay.message_hooks.append(drop_secret)
    async with gw.ws_connect("/ws") as ws:
        await ws.receive_json(timeout=5)
        await ws.send_str('{"type": "progress", "data": {}}')
        assert await ws.receive_str(timeout=5) == '{"type": "progress", "data": {}}'
        await ws.send_str('{"type": "x", "secret": true}')
        await ws.send_str('{"type": "y", "secret": false}')
        assert await ws.receive_str(timeout=5) == '{"type": "y", "secret": false}'
        assert [m["type"] for m in seen] == ["x", "y"]

        def every(client_id, backend_id, message):
            seen.append(message)

        relay.message_hooks.append(every)  # no keywords: every message is parsed again
        await ws.send_str('{"type": "z"}')
        assert await ws.receive_str(timeout=5) == '{"type": "z"}'
        assert seen[-1] == {"type": "z"}
