"""What an idle relayed websocket keeps: one task of the relay's own, no handshake leftovers."""

from __future__ import annotations

import asyncio

from gateway.app import WS_RELAY
from tests.conftest import server_url
from tests.proxy.test_ws_relay import echo_ws_app


def relay_tasks() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("ws-"))


async def test_an_idle_client_costs_one_relay_task_and_no_keeper(start_app, make_gateway):
    backend = await start_app(echo_ws_app())
    gw = await make_gateway([server_url(backend)])
    sockets = []
    for i in range(5):
        ws = await gw.ws_connect(f"/ws?clientId=idle{i}")
        await ws.receive_json(timeout=5)
        sockets.append(ws)
    assert relay_tasks() == sorted(f"ws-down-idle{i}-b0" for i in range(5))
    for ws in sockets:
        await ws.close()


async def test_handshake_leftovers_are_released_and_the_relay_still_works(start_app, make_gateway):
    """Guards the aiohttp internals the relay clears (``_parser``, response headers)."""
    backend = await start_app(echo_ws_app())
    gw = await make_gateway([server_url(backend)])
    async with gw.ws_connect("/ws?clientId=lean") as ws:
        await ws.receive_json(timeout=5)
        bridge = gw.app[WS_RELAY].bridge("lean")
        assert bridge is not None
        assert bridge.request.protocol._parser is None
        assert bridge.request.headers["Upgrade"].lower() == "websocket"  # still readable
        (upstream,) = bridge.upstreams.values()
        response = upstream.ws._response
        assert len(response.headers) == 0
        assert len(response.request_info.headers) == 0
        assert response.connection.protocol._parser is None
        relay = gw.app[WS_RELAY]
        for writer in (bridge.client._writer, upstream.ws._writer):
            assert writer.compress == 0
            assert writer._send_lock is relay._writer_lock
            assert writer._background_tasks is relay._writer_tasks
        await ws.send_str('{"after": "release"}')
        assert await ws.receive_str(timeout=5) == '{"after": "release"}'
        await ws.send_bytes(b"\x00" * 70000)
        assert await ws.receive_bytes(timeout=5) == b"\x00" * 70000
    # the upstream closes with the client, and the backend's close reaches the relay
    for _ in range(100):
        if not bridge.upstreams and upstream.ws.closed:
            break
        await asyncio.sleep(0.05)
    assert upstream.ws.closed


async def test_no_permessage_deflate_is_negotiated_with_clients(start_app, make_gateway):
    """Browsers offer it; zlib state would cost ~85 KB per socket and CPU per message."""
    backend = await start_app(echo_ws_app())
    gw = await make_gateway([server_url(backend)])
    async with gw.ws_connect("/ws", compress=15) as ws:
        assert ws._response.headers.get("Sec-WebSocket-Extensions") is None
        assert ws.compress == 0
        await ws.receive_json(timeout=5)
        await ws.send_str('{"plain": true}')
        assert await ws.receive_str(timeout=5) == '{"plain": true}'
