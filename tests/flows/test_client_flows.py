"""ComfyUI clients through the gateway, against simulated ComfyUI backends (issue 2 §6)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import JOBS
from gateway.testing import FAKE_STATE, FakeComfyOptions, create_fake_comfy_app, example_prompt
from gateway.testing.fake_images import parse_binary_frame
from tests.conftest import server_url

MB = 1024 * 1024


@pytest.fixture
async def two_backends(start_app) -> list[TestServer]:
    """Two simulated ComfyUI backends with short jobs."""
    return [
        await start_app(create_fake_comfy_app(FakeComfyOptions(name=n, job_duration=0.05)))
        for n in ("a", "b")
    ]


async def run_canonical_flow(
    gw: TestClient, prefix: str = "", ws_path: str = "/ws", feature_flags: bool = False
) -> tuple[str, list[dict[str, Any]], list[bytes], dict[str, Any]]:
    """Run websockets_api_example.py's flow; return prompt id, messages, frames, history."""
    client_id = str(uuid.uuid4())
    messages: list[dict[str, Any]] = []
    frames: list[bytes] = []
    async with gw.ws_connect(f"{ws_path}?clientId={client_id}") as ws:
        if feature_flags:
            await ws.send_json(
                {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
            )
        prompt_id = str(uuid.uuid4())
        body = {"prompt": example_prompt("flow"), "client_id": client_id, "prompt_id": prompt_id}
        # Like urllib in the example: no Content-Type, no Origin.
        resp = await gw.post(
            f"{prefix}/prompt", data=json.dumps(body).encode(), skip_auto_headers=["Content-Type"]
        )
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["prompt_id"] == prompt_id
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type == WSMsgType.BINARY:
                frames.append(msg.data)
                continue
            assert msg.type == WSMsgType.TEXT, msg
            data = json.loads(msg.data)
            messages.append(data)
            if (
                data["type"] == "executing"
                and data["data"]["node"] is None
                and data["data"].get("prompt_id") == prompt_id
            ):
                break
    history = await (await gw.get(f"{prefix}/history/{prompt_id}")).json()
    return prompt_id, messages, frames, history


def backend_file(backend: TestServer, ref: dict[str, Any]) -> bytes:
    """Read an output file straight from a simulated backend's disk (subfolder untagged)."""
    state = backend.app[FAKE_STATE]
    subfolder = ref["subfolder"].split("/", 1)[1] if "/" in ref["subfolder"] else ""
    return (Path(state.dirs.output) / subfolder / ref["filename"]).read_bytes()


@pytest.mark.parametrize(("prefix", "ws_path"), [("", "/ws"), ("/api", "/api/ws")])
async def test_canonical_client_flow(two_backends, make_gateway, prefix, ws_path):
    gw = await make_gateway([server_url(b) for b in two_backends])
    prompt_id, messages, frames, history = await run_canonical_flow(gw, prefix, ws_path)
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "status"
    assert "sid" in messages[0]["data"]
    for expected in ("execution_start", "executing", "progress", "executed", "execution_success"):
        assert expected in kinds
    assert frames
    assert parse_binary_frame(frames[0])[0] == 1
    images = history[prompt_id]["outputs"]["3"]["images"]
    assert images[0]["subfolder"].startswith("_gw_b0")  # tagged with its backend
    ref = images[0]
    resp = await gw.get(f"{prefix}/view", params=ref)
    assert resp.status == 200
    assert await resp.read() == backend_file(two_backends[0], ref)
    executed = next(m for m in messages if m["type"] == "executed")
    assert executed["data"]["output"]["images"] == images


async def test_feature_flags_reach_backend_and_preview_has_metadata(two_backends, make_gateway):
    gw = await make_gateway([server_url(b) for b in two_backends])
    _, messages, frames, _ = await run_canonical_flow(gw, feature_flags=True)
    assert any(m["type"] == "feature_flags" for m in messages)
    event, _ = parse_binary_frame(frames[0])[:2]
    assert event == 4  # PREVIEW_IMAGE_WITH_METADATA: the backend saw our flags


async def test_ws_without_client_id_gets_a_stable_sid(two_backends, make_gateway):
    gw = await make_gateway([server_url(b) for b in two_backends])
    async with gw.ws_connect("/ws") as ws:
        first = await ws.receive_json(timeout=5)
        sid = first["data"]["sid"]
        prompt_id = str(uuid.uuid4())
        body = {"prompt": example_prompt(), "client_id": sid, "prompt_id": prompt_id}
        assert (await gw.post("/prompt", json=body)).status == 200
        while True:
            data = json.loads(await _next_text(ws))
            if data["type"] == "executing" and data["data"]["node"] is None:
                assert data["data"]["prompt_id"] == prompt_id
                break
    assert two_backends[0].app[FAKE_STATE].executed_prompt_ids == [prompt_id]


async def _next_text(ws: aiohttp.ClientWebSocketResponse) -> str:
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type == WSMsgType.TEXT:
            return msg.data
        assert msg.type == WSMsgType.BINARY, msg


async def test_upload_then_prompt_that_uses_it(two_backends, make_gateway):
    gw = await make_gateway([server_url(b) for b in two_backends])
    form = aiohttp.FormData()
    form.add_field("image", b"\x89PNG fake input", filename="input.png", content_type="image/png")
    resp = await gw.post("/upload/image", data=form)
    assert resp.status == 200
    uploaded = await resp.json()
    assert uploaded == {"name": "input.png", "subfolder": "", "type": "input"}
    body = {"prompt": example_prompt(load_image="input.png")}
    resp = await gw.post("/prompt", json=body)
    assert resp.status == 200, await resp.text()


async def test_prompt_without_id_gets_one_minted(two_backends, make_gateway):
    gw = await make_gateway([server_url(b) for b in two_backends])
    resp = await gw.post("/prompt", json={"prompt": example_prompt()})
    prompt_id = (await resp.json())["prompt_id"]
    assert uuid.UUID(prompt_id)
    assert gw.app[JOBS].tracker.owner(prompt_id) == "b0"


async def test_validation_error_is_comfyui_shaped(two_backends, make_gateway):
    gw = await make_gateway([server_url(b) for b in two_backends])
    resp = await gw.post("/prompt", json={"prompt": example_prompt(load_image="missing.png")})
    assert resp.status == 400
    data = await resp.json()
    assert data["error"]["type"] == "prompt_outputs_failed_validation"
    assert data["node_errors"]


async def test_large_view_streams_byte_identical(two_backends, make_gateway):
    gw = await make_gateway([server_url(b) for b in two_backends])
    payload = bytes(range(256)) * (8 * MB // 256)
    form = aiohttp.FormData()
    form.add_field("image", payload, filename="big.png", content_type="image/png")
    assert (await gw.post("/upload/image", data=form)).status == 200
    resp = await gw.get("/view", params={"filename": "big.png", "type": "input"})
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(8 * MB)
    received = bytearray()
    async for chunk in resp.content.iter_chunked(MB):
        received += chunk
    assert bytes(received) == payload


async def test_range_request_passes_through(two_backends, make_gateway):
    gw = await make_gateway([server_url(b) for b in two_backends])
    form = aiohttp.FormData()
    form.add_field("image", b"0123456789", filename="r.png", content_type="image/png")
    assert (await gw.post("/upload/image", data=form)).status == 200
    resp = await gw.get(
        "/view", params={"filename": "r.png", "type": "input"}, headers={"Range": "bytes=2-5"}
    )
    assert resp.status == 206
    assert await resp.read() == b"2345"


async def test_view_of_unknown_file_is_404(two_backends, make_gateway):
    gw = await make_gateway([server_url(b) for b in two_backends])
    resp = await gw.get("/view", params={"filename": "nope.png"})
    assert resp.status == 404


ORIGIN_CASES = [
    ({}, 200),  # a script: no Origin
    ({"Origin": "SAME"}, 200),  # the browser on the gateway's own origin
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "null"}, 403),
    ({"Origin": "http://127.0.0.1:1"}, 403),  # same host, other port
    ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}, 403),
    ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, 200),
]


@pytest.mark.parametrize(("headers", "status"), ORIGIN_CASES)
async def test_origin_matrix(two_backends, make_gateway, headers, status):
    gw = await make_gateway([server_url(b) for b in two_backends])
    if headers.get("Origin") == "SAME":
        headers = {"Origin": f"http://127.0.0.1:{gw.port}"}
    resp = await gw.post("/prompt", json={"prompt": example_prompt()}, headers=headers)
    assert resp.status == status, await resp.text()


async def test_origin_check_applies_to_websocket_upgrade(two_backends, make_gateway):
    gw = await make_gateway([server_url(b) for b in two_backends])
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.ws_connect("/ws", headers={"Origin": "http://evil.example"})
    assert refused.value.status == 403
    async with gw.ws_connect("/ws", headers={"Origin": f"http://127.0.0.1:{gw.port}"}) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "status"


async def test_allowed_origin_gets_cors_and_preflight(two_backends, make_gateway):
    gw = await make_gateway(
        [server_url(b) for b in two_backends], proxy={"allowed_origins": ["https://app.example"]}
    )
    pre = await gw.options(
        "/prompt",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status == 204
    assert "Comfy-User" in pre.headers["Access-Control-Allow-Headers"]
    resp = await gw.get("/system_stats", headers={"Origin": "https://app.example"})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_answers_of_the_comfyui_aware_layer_are_counted(two_backends, make_gateway):
    gw = await make_gateway([server_url(b) for b in two_backends])
    for path in ("/queue", "/api/history", "/prompt"):
        assert (await gw.get(path)).status == 200
    metrics = await (await gw.get("/metrics")).text()
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("comfyui_gateway_http_requests_total{")
        and 'group="prompt"' in line
        and 'method="GET"' in line
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 3
