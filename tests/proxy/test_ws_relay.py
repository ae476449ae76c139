"""Websocket relay details: frames both ways, sizes, close codes, teardown, same clientId."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
from aiohttp import WSMsgType, web

from gateway.app import WS_RELAY
from gateway.testing import FAKE_STATE, FakeComfyOptions, create_fake_comfy_app, example_prompt
from tests.conftest import server_url

MB = 1024 * 1024


def echo_ws_app(closed: asyncio.Event | None = None, close_code: int | None = None):
    """A backend whose /ws greets like ComfyUI, echoes frames, and may close with a code."""
    app = web.Application()

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        sid = request.query.get("clientId")
        await ws.send_json({"type": "status", "data": {"status": {}, "sid": sid}})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    if msg.data == "close please" and close_code is not None:
                        await ws.close(code=close_code, message=b"bye")
                        break
                    await ws.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
        finally:
            if closed is not None:
                closed.set()
        return ws

    async def system_stats(request: web.Request) -> web.Response:
        return web.json_response({"system": {}, "devices": []})

    async def queue(request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": 0}})

    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/system_stats", system_stats)
    app.router.add_get("/prompt", queue)
    return app


async def test_text_and_large_binary_frames_relay_both_ways(start_app, make_gateway):
    backend = await start_app(echo_ws_app())
    gw = await make_gateway([server_url(backend)])
    async with gw.ws_connect("/ws?clientId=abc", max_msg_size=0) as ws:
        greeting = await ws.receive_json(timeout=5)
        assert greeting["data"]["sid"] == "abc"
        await ws.send_str('{"hello": 1}')
        assert await ws.receive_str(timeout=5) == '{"hello": 1}'
        blob = bytes(range(256)) * (40 * MB // 256)  # larger than aiohttp's 4 MB default
        await ws.send_bytes(blob)
        assert await ws.receive_bytes(timeout=20) == blob


async def test_client_close_tears_down_the_upstream(start_app, make_gateway):
    closed = asyncio.Event()
    backend = await start_app(echo_ws_app(closed=closed))
    gw = await make_gateway([server_url(backend)])
    ws = await gw.ws_connect("/ws")
    await ws.receive_json(timeout=5)
    await ws.close()
    await asyncio.wait_for(closed.wait(), 10)


async def test_deliberate_backend_close_code_is_passed_on(start_app, make_gateway):
    backend = await start_app(echo_ws_app(close_code=4321))
    gw = await make_gateway([server_url(backend)])
    async with gw.ws_connect("/ws") as ws:
        await ws.receive_json(timeout=5)
        await ws.send_str("close please")
        msg = await ws.receive(timeout=10)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 4321


async def test_same_client_id_reconnect_keeps_receiving_events(start_app, make_gateway):
    """ComfyUI deregisters a new socket when an old one with the same id closes late (§3.1)."""
    backend = await start_app(create_fake_comfy_app(FakeComfyOptions(job_duration=0.05)))
    gw = await make_gateway([server_url(backend)])
    client_id = uuid.uuid4().hex
    old = await gw.ws_connect(f"/ws?clientId={client_id}")
    await old.receive_json(timeout=5)
    new = await gw.ws_connect(f"/ws?clientId={client_id}")
    await new.receive_json(timeout=5)
    await old.close()  # the old socket goes away after the new one registered
    prompt_id = str(uuid.uuid4())
    body = {"prompt": example_prompt(), "client_id": client_id, "prompt_id": prompt_id}
    assert (await gw.post("/prompt", json=body)).status == 200
    while True:
        msg = await new.receive(timeout=10)
        if msg.type == WSMsgType.TEXT and '"executing"' in msg.data and '"node": null' in msg.data:
            break
        assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), msg
    assert client_id in backend.app[FAKE_STATE].sockets
    await new.close()


async def test_shutdown_closes_client_sockets_with_going_away(start_app, make_gateway):
    backend = await start_app(echo_ws_app())
    gw = await make_gateway([server_url(backend)])
    ws = await gw.ws_connect("/ws")
    await ws.receive_json(timeout=5)
    await gw.app[WS_RELAY].close_all()
    msg = await ws.receive(timeout=10)
    assert msg.type == WSMsgType.CLOSE
    assert msg.data == aiohttp.WSCloseCode.GOING_AWAY
