"""Tests of the simulated ComfyUI backend (gateway.testing) against comfyui-api.md."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from gateway.testing import (
    FAKE_STATE,
    FakeComfyOptions,
    FakeComfyState,
    create_fake_comfy_app,
    example_prompt,
    parse_binary_frame,
    png_text,
)
from gateway.testing.fake_frontend import write_builtin_frontend
from gateway.testing.fake_images import PNG_SIGNATURE, encode_png

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0

ClientFactory = Callable[..., Awaitable[TestClient]]
Frame = tuple[str, Any]  # ("json", {"type","data"}) or ("bytes", raw frame)


@pytest.fixture
async def make_client(aiohttp_client: Any) -> ClientFactory:
    """Start a fake backend (fast settings unless overridden) and return a test client."""

    async def make(**overrides: Any) -> TestClient:
        options = FakeComfyOptions(**{"job_duration": 0.02, "steps": 2, **overrides})
        return await aiohttp_client(create_fake_comfy_app(options))

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient:
    return await make_client(name="t")


def state_of(client: TestClient) -> FakeComfyState:
    app = client.app
    assert app is not None
    return app[FAKE_STATE]


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = TIMEOUT) -> Frame:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    if msg.type == WSMsgType.BINARY:
        return ("bytes", msg.data)
    assert msg.type == WSMsgType.TEXT, msg
    return ("json", json.loads(msg.data))


async def collect_until(
    ws: aiohttp.ClientWebSocketResponse, done: Callable[[Frame], bool]
) -> list[Frame]:
    frames = []
    while True:
        frame = await receive(ws)
        frames.append(frame)
        if done(frame):
            return frames


def finished(prompt_id: str) -> Callable[[Frame], bool]:
    def check(frame: Frame) -> bool:
        kind, data = frame
        return (
            kind == "json"
            and data["type"] == "executing"
            and data["data"]["node"] is None
            and data["data"].get("prompt_id") == prompt_id
        )

    return check


def kinds(frames: list[Frame]) -> list[str]:
    out = []
    for kind, data in frames:
        if kind == "bytes":
            out.append(f"bin{parse_binary_frame(data)[0]}")
        elif data["type"] == "executing":
            out.append(f"executing({data['data']['node']})")
        elif data["type"] == "executed":
            out.append(f"executed({data['data']['node']})")
        else:
            out.append(data["type"])
    return out


async def submit(client: TestClient, prompt: dict[str, Any], **body: Any) -> dict[str, Any]:
    resp = await client.post("/prompt", json={"prompt": prompt, **body})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll a server-side condition (not a fixed sleep)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- canonical flow


async def test_canonical_flow_order_binary_history_view(client: TestClient) -> None:
    state = state_of(client)
    async with client.ws_connect("/ws?clientId=cid1") as ws:
        kind, first = await receive(ws)
        assert first == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "cid1"},
        }
        pid = str(uuid.uuid4())
        answer = await submit(
            client, example_prompt(save_websocket=True), client_id="cid1", prompt_id=pid
        )
        assert answer == {"prompt_id": pid, "number": 0, "node_errors": {}}
        frames = await collect_until(ws, finished(pid))

    assert kinds(frames) == [
        "status", "status", "execution_start", "execution_cached",
        "progress_state", "executing(1)", "progress_state", "progress", "progress_state",
        "progress", "bin1", "progress_state",
        "progress_state", "executing(2)", "progress_state",
        "progress_state", "executing(3)", "executed(3)", "progress_state",
        "progress_state", "executing(4)", "progress_state", "progress", "bin1", "progress_state",
        "execution_success", "status", "executing(None)",
    ]  # fmt: skip
    statuses = [d["data"]["status"]["exec_info"]["queue_remaining"] for k, d in frames
                if k == "json" and d["type"] == "status"]  # fmt: skip
    assert statuses == [1, 1, 0]
    for kind, data in frames:
        if kind == "bytes":
            event, meta, frame_image = parse_binary_frame(data)
            assert (event, meta) == (1, {"image_format": 2})
            assert frame_image.startswith(PNG_SIGNATURE)
    executing = next(d for k, d in frames if k == "json" and d["type"] == "executing")
    assert executing["data"] == {"node": "1", "display_node": "1", "prompt_id": pid}
    executed = next(d for k, d in frames if k == "json" and d["type"] == "executed")
    image = {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}
    assert executed["data"] == {
        "node": "3", "display_node": "3", "output": {"images": [image]}, "prompt_id": pid,
    }  # fmt: skip
    progress_state = next(d for k, d in frames if k == "json" and d["type"] == "progress_state")
    assert progress_state["data"]["nodes"]["1"]["state"] == "running"
    assert state.executed_prompt_ids == [pid]

    history = await (await client.get(f"/history/{pid}")).json()
    entry = history[pid]
    assert list(entry) == ["prompt", "outputs", "status", "meta"]
    assert entry["prompt"][:2] == [0, pid]
    assert entry["prompt"][3] == {"client_id": "cid1"}
    assert sorted(entry["prompt"][4]) == ["3", "4"]
    assert entry["outputs"] == {"3": {"images": [image]}}
    assert entry["status"]["status_str"] == "success"
    assert entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start", "execution_cached", "execution_success",
    ]  # fmt: skip
    assert entry["meta"]["3"] == {
        "node_id": "3", "display_node": "3", "parent_node": None, "real_node_id": "3",
    }  # fmt: skip
    assert await (await client.get("/history/unknown")).json() == {}

    on_disk = (Path(state.dirs.output) / "ComfyUI_00001_.png").read_bytes()
    resp = await client.get("/view", params={"filename": "ComfyUI_00001_.png", "type": "output"})
    assert resp.status == 200
    assert await resp.read() == on_disk
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Content-Disposition"] == 'filename="ComfyUI_00001_.png"'
    assert "ETag" in resp.headers
    assert "Cache-Control" not in resp.headers
    ranged = await client.get(
        "/view", params={"filename": "ComfyUI_00001_.png"}, headers={"Range": "bytes=0-9"}
    )
    assert ranged.status == 206
    assert await ranged.read() == on_disk[:10]
    assert png_text(on_disk)["prompt_id"] == pid


async def test_feature_flags_give_type4_frames(client: TestClient) -> None:
    async with client.ws_connect("/api/ws?clientId=ff") as ws:
        await receive(ws)
        await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        assert await receive(ws) == (
            "json",
            {
                "type": "feature_flags",
                "data": {"supports_preview_metadata": True, "max_upload_size": 104857600},
            },
        )
        pid = (await submit(client, example_prompt(), client_id="ff"))["prompt_id"]
        frames = await collect_until(ws, finished(pid))
    binaries = [parse_binary_frame(d) for k, d in frames if k == "bytes"]
    assert len(binaries) == 1
    event, meta, image = binaries[0]
    assert event == 4
    assert image.startswith(PNG_SIGNATURE)
    assert meta == {
        "node_id": "1", "prompt_id": pid, "display_node_id": "1", "parent_node_id": None,
        "real_node_id": "1", "image_type": "image/png",
    }  # fmt: skip


async def test_prompt_without_client_id_broadcasts_progress_only(client: TestClient) -> None:
    async with client.ws_connect("/ws") as bystander:
        _, first = await receive(bystander)
        assert len(first["data"]["sid"]) == 32  # uuid4().hex
        await submit(client, example_prompt())

        def idle(frame: Frame) -> bool:
            kind, data = frame
            return (
                kind == "json"
                and data["type"] == "status"
                and data["data"]["status"]["exec_info"]["queue_remaining"] == 0
            )

        frames = await collect_until(bystander, idle)
    seen = set(kinds(frames))
    assert {"status", "progress", "progress_state", "bin1"} <= seen
    assert not seen & {"execution_start", "execution_success", "executing(1)", "executed(3)"}


# --------------------------------------------------------------------------- routes


CORE_GETS = [
    "/system_stats", "/features", "/prompt", "/queue", "/history", "/object_info",
    "/object_info/SaveImage", "/embeddings", "/models", "/models/checkpoints", "/extensions",
    "/settings", "/users", "/i18n", "/workflow_templates", "/experiment/models",
    "/experiment/models/loras", "/v2/userdata", "/",
]  # fmt: skip


async def test_api_twins_and_head(client: TestClient) -> None:
    for path in CORE_GETS:
        for prefix in ("", "/api"):
            url = prefix + path if path != "/" else prefix + "/"
            resp = await client.get(url)
            assert resp.status == 200, url
            head = await client.head(url)
            assert head.status == 200, url
    for path in ("/internal/logs", "/internal/logs/raw", "/internal/folder_paths",
                 "/internal/files/output"):  # fmt: skip
        assert (await client.get(path)).status == 200, path
        assert (await client.get("/api" + path)).status == 404, path
    stats = await (await client.get("/system_stats")).json()
    argv = stats["system"]["argv"]
    assert argv[argv.index("--port") + 1] == str(client.port)
    assert "t" in argv
    assert stats["system"]["comfyui_version"] == "0.3.64"
    assert stats["devices"][0]["type"] == "cpu"
    assert stats["system"]["fake_boot_id"] == state_of(client).boot_id
    assert (await (await client.get("/prompt")).json()) == {"exec_info": {"queue_remaining": 0}}
    root = await client.get("/")
    assert root.headers["Cache-Control"] == "no-cache"
    assert root.headers["Expires"] == "0"
    index = await client.get("/templates/index.json")
    assert index.headers["Cache-Control"] == "no-cache"
    assert isinstance(await index.json(), list)
    assert (await client.get("/models/nope")).status == 404
    assert await (await client.get("/object_info/Nope")).json() == {}


async def test_object_info_shapes(client: TestClient) -> None:
    info = await (await client.get("/object_info")).json()
    for name in ("EmptyImage", "ImageInvert", "SaveImage", "PreviewImage", "LoadImage",
                 "SaveImageWebsocket", "ImageScale", "PrimitiveInt"):  # fmt: skip
        assert name in info
    save = info["SaveImage"]
    assert list(save)[:11] == [
        "input", "input_order", "output", "output_is_list", "output_name", "name",
        "display_name", "description", "python_module", "category", "output_node",
    ]  # fmt: skip
    assert save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert save["input_order"] == {"required": ["images", "filename_prefix"],
                                   "hidden": ["prompt", "extra_pnginfo"]}  # fmt: skip
    assert save["output_node"] is True
    assert save["display_name"] == "Save Image"
    assert info["SaveImageWebsocket"]["python_module"] == "custom_nodes.websocket_image_save"
    assert info["LoadImage"]["output"] == ["IMAGE", "MASK"]


@pytest.mark.parametrize(
    ("host", "origin", "status"),
    [
        ("127.0.0.1:8188", "http://evil.example", 403),
        ("127.0.0.1:8188", "http://localhost:8188", 403),
        ("127.0.0.1:8188", "http://127.0.0.1:9000", 403),
        ("127.0.0.1:8188", "http://127.0.0.1:8188", 200),
        ("127.0.0.1:8188", "http://127.0.0.1", 200),
        ("127.0.0.1", "http://127.0.0.1:9000", 200),
        ("127.0.0.1:8188", "null", 200),
        ("localhost:8188", "http://localhost:8188", 200),
        ("localhost:8188", "http://127.0.0.1:8188", 403),
        ("proxy.example:9000", "http://evil.example", 200),
        ("10.1.2.3:9000", "http://evil.example", 200),
        ("[::1]:8188", "http://evil.example", 403),
        ("127.0.0.1:8188", None, 200),
    ],
)
async def test_origin_matrix(
    client: TestClient, host: str, origin: str | None, status: int
) -> None:
    headers = {"Host": host} | ({"Origin": origin} if origin is not None else {})
    resp = await client.get("/system_stats", headers=headers)
    assert resp.status == status
    if status == 403:
        assert await resp.read() == b""
    options = await client.options("/prompt", headers=headers)
    assert options.status == status


async def test_origin_check_on_ws_and_options(client: TestClient) -> None:
    bad = {"Host": "127.0.0.1:8188", "Origin": "http://evil.example"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await client.ws_connect("/ws", headers=bad)
    assert err.value.status == 403
    ok = await client.options("/nowhere", headers={"Host": "127.0.0.1:8188"})
    assert ok.status == 200
    assert await ok.read() == b""


# --------------------------------------------------------------------------- validation


async def test_validation_error_shapes_and_number_counter(client: TestClient) -> None:
    resp = await client.post("/prompt", json={"client_id": "x"})
    assert resp.status == 400
    assert await resp.json() == {
        "error": {"type": "no_prompt", "message": "No prompt provided",
                  "details": "No prompt provided", "extra_info": {}},
        "node_errors": {},
    }  # fmt: skip
    resp = await client.post("/prompt", json={"prompt": {"1": {"class_type": "Nope"}}})
    error = (await resp.json())["error"]
    assert resp.status == 400
    assert error == {
        "type": "invalid_prompt",
        "message": "Cannot execute because node Nope does not exist.",
        "details": "Node ID '#1'",
        "extra_info": {},
    }
    resp = await client.post("/prompt", json={"prompt": {"1": {"inputs": {}}}})
    assert (await resp.json())["error"]["type"] == "invalid_prompt"
    no_out = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    resp = await client.post("/prompt", json={"prompt": no_out})
    assert (await resp.json())["error"]["type"] == "prompt_no_outputs"
    graph = example_prompt()
    del graph["3"]["inputs"]["filename_prefix"]
    graph["1"]["inputs"]["width"] = 0
    resp = await client.post("/prompt", json={"prompt": graph})
    body = await resp.json()
    assert resp.status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["3"]["errors"] == [{
        "type": "required_input_missing", "message": "Required input is missing",
        "details": "filename_prefix", "extra_info": {"input_name": "filename_prefix"},
    }]  # fmt: skip
    assert body["node_errors"]["1"]["errors"][0]["type"] == "value_smaller_than_min"
    assert body["node_errors"]["1"]["dependent_outputs"] == ["3"]
    assert body["node_errors"]["1"]["class_type"] == "EmptyImage"
    # ComfyUI increments `number` before validating, so failed prompts consume numbers too.
    answer = await submit(client, example_prompt(), prompt_id="mine")
    assert answer["number"] == 5
    assert answer["prompt_id"] == "mine"
    assert (await submit(client, example_prompt(), number=2.5))["number"] == 2.5


async def test_load_image_needs_file_in_this_backend(client: TestClient) -> None:
    graph = example_prompt(load_image="photo.png", preview=True)
    resp = await client.post("/prompt", json={"prompt": graph})
    body = await resp.json()
    assert resp.status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    # The failing output (SaveImage) has no errors of its own, so ComfyUI's details are empty;
    # the reason is in node_errors of the LoadImage node.
    assert body["error"]["details"] == ""
    assert body["node_errors"] == {
        "1": {
            "errors": [{
                "type": "custom_validation_failed", "message": "Custom validation failed for node",
                "details": "image - Invalid image file: photo.png",
                "extra_info": {"input_name": "image"},
            }],
            "dependent_outputs": ["3", "5"],
            "class_type": "LoadImage",
        }
    }  # fmt: skip
    form = aiohttp.FormData()
    form.add_field("image", encode_png(32, 16, 0x123456), filename="photo.png")
    up = await client.post("/upload/image", data=form)
    assert await up.json() == {"name": "photo.png", "subfolder": "", "type": "input"}
    listed = await (await client.get("/object_info/LoadImage")).json()
    assert listed["LoadImage"]["input"]["required"]["image"][0] == ["photo.png"]
    async with client.ws_connect("/ws?clientId=li") as ws:
        await receive(ws)
        pid = (await submit(client, graph, client_id="li"))["prompt_id"]
        await collect_until(ws, finished(pid))
    entry = (await (await client.get(f"/history/{pid}")).json())[pid]
    assert entry["status"]["status_str"] == "success"
    (preview,) = entry["outputs"]["5"]["images"]
    assert preview["type"] == "temp"
    assert preview["filename"].startswith("ComfyUI_temp_")
    view = await client.get("/view", params={**preview})
    assert png_text(await view.read())["prompt_id"] == pid


# --------------------------------------------------------------------------- uploads and files


async def upload(
    client: TestClient, content: bytes, name: str = "a.png", **fields: str
) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("image", content, filename=name, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return await client.post("/upload/image", data=form)


async def test_upload_dedup_rename_overwrite(client: TestClient) -> None:
    state = state_of(client)
    one, two = encode_png(8, 8, 1), encode_png(8, 8, 2)
    assert (await (await upload(client, one)).json())["name"] == "a.png"
    assert (await (await upload(client, one)).json())["name"] == "a.png"  # same bytes: dedup
    assert (await (await upload(client, two)).json())["name"] == "a (1).png"
    assert (await (await upload(client, two)).json())["name"] == "a (1).png"
    forced = await (await upload(client, two, overwrite="true")).json()
    assert forced["name"] == "a.png"
    assert (Path(state.dirs.input) / "a.png").read_bytes() == two
    sub = await (await upload(client, one, subfolder="pasted", type="temp")).json()
    assert sub == {"name": "a.png", "subfolder": "pasted", "type": "temp"}
    assert (Path(state.dirs.temp) / "pasted" / "a.png").read_bytes() == one
    assert (await upload(client, one, subfolder="../../etc")).status == 400
    assert (await client.post("/upload/image", data={"type": "input"})).status == 400
    view = await client.get("/view", params={"filename": "a (1).png", "type": "input"})
    assert await view.read() == two


async def test_upload_too_large_is_413(make_client: ClientFactory) -> None:
    client = await make_client(max_upload_size=1024)
    resp = await upload(client, b"x" * 4096)
    assert resp.status == 413
    assert "Maximum request body size 1024 exceeded" in await resp.text()
    resp = await client.post("/prompt", data=json.dumps({"prompt": {}, "pad": "x" * 4096}))
    assert resp.status == 413
    features = await (await client.get("/features")).json()
    assert features == {"supports_preview_metadata": True, "max_upload_size": 1024}


async def test_upload_mask_semantics(client: TestClient) -> None:
    state = state_of(client)
    mask = encode_png(8, 8, 0, alpha=0)

    async def post_mask(ref: dict[str, str], name: str) -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        form.add_field("image", mask, filename=name, content_type="image/png")
        form.add_field("original_ref", json.dumps(ref))
        return await client.post("/upload/mask", data=form)

    # Like ComfyUI: a missing original writes nothing but still answers 200 with the name.
    missing = await post_mask({"filename": "nope.png", "type": "input"}, "m1.png")
    assert missing.status == 200
    assert (await missing.json())["name"] == "m1.png"
    assert not (Path(state.dirs.input) / "m1.png").exists()
    await upload(client, encode_png(20, 10, 0xFF0000), name="orig.png")
    made = await post_mask({"filename": "orig.png", "type": "input", "subfolder": ""}, "m2.png")
    assert made.status == 200
    written = (Path(state.dirs.input) / "m2.png").read_bytes()
    assert written.startswith(PNG_SIGNATURE)
    assert written[16:24] == b"\0\0\0\x14\0\0\0\x0a"


async def test_view_errors_and_annotations(client: TestClient) -> None:
    state = state_of(client)
    (Path(state.dirs.output) / "x.png").write_bytes(b"png")
    (Path(state.dirs.temp) / "t.png").write_bytes(b"tmp")
    cases = [
        ({"filename": "x.png"}, 200),
        ({"filename": "x.png [output]", "type": "input"}, 200),
        ({"filename": "t.png", "type": "temp"}, 200),
        ({"filename": "t.png [temp]"}, 200),
        ({"filename": "missing.png"}, 404),
        ({"filename": "../x.png"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "x.png", "subfolder": "../../"}, 403),
        ({"filename": "x.png", "type": "bogus"}, 400),
        ({"filename": "x.png", "preview": "webp;90", "channel": "rgb"}, 200),
        ({}, 404),
    ]
    for params, status in cases:
        resp = await client.get("/view", params=params)
        assert resp.status == status, params


async def test_userdata_settings_users(client: TestClient) -> None:
    resp = await client.post("/userdata/workflows%2Fa.json", data=b'{"a": 1}')
    assert await resp.json() == "workflows/a.json"
    assert await (await client.get("/api/userdata/workflows%2Fa.json")).read() == b'{"a": 1}'
    assert await (await client.get("/userdata", params={"dir": "workflows"})).json() == ["a.json"]
    v2 = await (await client.get("/v2/userdata", params={"path": "workflows"})).json()
    assert [(e["name"], e["type"]) for e in v2] == [("a.json", "file")]
    conflict = await client.post("/userdata/workflows%2Fa.json?overwrite=false", data=b"x")
    assert conflict.status == 409
    moved = await client.post("/userdata/workflows%2Fa.json/move/workflows%2Fb.json")
    assert await moved.json() == "workflows/b.json"
    assert (await client.delete("/userdata/workflows%2Fb.json")).status == 204
    assert (await client.get("/userdata/workflows%2Fb.json")).status == 404
    assert (await client.get("/userdata/..%2F..%2Fx")).status == 403
    assert (await client.post("/settings", json={"Comfy.A": 1})).status == 200
    assert (await client.post("/settings/Comfy.B", json="two")).status == 200
    assert await (await client.get("/settings")).json() == {"Comfy.A": 1, "Comfy.B": "two"}
    assert await (await client.get("/settings/Comfy.B")).json() == "two"
    assert await (await client.get("/settings/none")).json() is None
    assert (await (await client.get("/users")).json())["storage"] == "server"
    user_id = await (await client.post("/users", json={"username": "Ann B"})).json()
    assert user_id.startswith("Ann-B_")
    assert (await client.post("/users", json={"username": "Ann B"})).status == 400


# --------------------------------------------------------------------------- execution control


async def test_interrupt_targeted_and_history(client: TestClient) -> None:
    state = state_of(client)
    state.job_duration = 30.0
    state.steps = 1
    async with client.ws_connect("/ws?clientId=int") as ws:
        await receive(ws)
        pid = (await submit(client, example_prompt(), client_id="int"))["prompt_id"]
        await collect_until(ws, lambda f: f[0] == "json" and f[1]["type"] == "executing")
        assert (await client.post("/interrupt", json={"prompt_id": "other"})).status == 200
        queue = await (await client.get("/queue")).json()
        assert [item[1] for item in queue["queue_running"]] == [pid]
        assert (await client.post("/interrupt", json={"prompt_id": pid})).status == 200
        frames = await collect_until(ws, finished(pid))
    assert kinds(frames)[-3:] == ["execution_interrupted", "status", "executing(None)"]
    interrupted = frames[-3][1]["data"]
    assert set(interrupted) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
    assert (interrupted["node_id"], interrupted["node_type"]) == ("1", "EmptyImage")
    entry = (await (await client.get(f"/history/{pid}")).json())[pid]
    assert entry["outputs"] == {}
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"


async def test_execution_error_from_fail_node(client: TestClient) -> None:
    async with client.ws_connect("/ws?clientId=err") as ws:
        await receive(ws)
        pid = (await submit(client, example_prompt(fail=True), client_id="err"))["prompt_id"]
        frames = await collect_until(ws, finished(pid))
    errors = [d["data"] for k, d in frames if k == "json" and d["type"] == "execution_error"]
    assert len(errors) == 1
    error = errors[0]
    assert set(error) == {
        "prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
        "traceback", "current_inputs", "current_outputs", "timestamp",
    }  # fmt: skip
    assert (error["node_id"], error["node_type"]) == ("7", "FailNode")
    assert error["exception_type"] == "RuntimeError"
    assert error["exception_message"] == "simulated failure\n"
    assert kinds(frames)[-3:] == ["execution_error", "status", "executing(None)"]
    entry = (await (await client.get(f"/history/{pid}")).json())[pid]
    assert entry["status"]["status_str"] == "error"
    assert "3" in entry["outputs"]  # SaveImage ran before the failing node


async def test_queue_priority_delete_and_history_paging(client: TestClient) -> None:
    state = state_of(client)
    state.job_duration = 30.0
    first = await submit(client, example_prompt(), prompt_id="p0")
    await wait_for(lambda: bool(state.queue.running_items()))
    await submit(client, example_prompt(), prompt_id="p1")
    await submit(client, example_prompt(), prompt_id="p2")
    front = await submit(client, example_prompt(), prompt_id="p3", front=True)
    assert (first["number"], front["number"]) == (0, -3)
    queue = await (await client.get("/queue")).json()
    assert queue["queue_running"][0][:2] == [0, "p0"]
    assert sorted(item[1] for item in queue["queue_pending"]) == ["p1", "p2", "p3"]
    assert len(queue["queue_pending"][0]) == 5
    assert await (await client.get("/prompt")).json() == {"exec_info": {"queue_remaining": 4}}
    await client.post("/queue", json={"delete": ["p2"]})
    state.job_duration = 0.0
    await client.post("/interrupt")
    await wait_for(lambda: len(state.history) == 3)
    assert state.executed_prompt_ids == ["p0", "p3", "p1"]  # front first, p2 never ran
    assert list(state.history) == ["p0", "p3", "p1"]
    paged = await (await client.get("/history", params={"max_items": "2"})).json()
    assert list(paged) == ["p3", "p1"]
    paged = await (await client.get("/history", params={"max_items": "1", "offset": "0"})).json()
    assert list(paged) == ["p0"]
    await client.post("/history", json={"delete": ["p0"]})
    assert list(await (await client.get("/history")).json()) == ["p3", "p1"]
    await client.post("/history", json={"clear": True})
    assert await (await client.get("/history")).json() == {}


# --------------------------------------------------------------------------- websocket sessions


async def test_deregistration_bug_and_replacement(client: TestClient) -> None:
    state = state_of(client)
    old = await client.ws_connect("/ws?clientId=dup")
    await receive(old)
    new = await client.ws_connect("/ws?clientId=dup")
    await receive(new)
    assert state.sockets["dup"] is not None
    assert len(state.all_websockets) == 2
    # only the newer socket receives targeted events
    async with client.ws_connect("/ws?clientId=bystander") as bystander:
        await receive(bystander)
        pid = (await submit(client, example_prompt(), client_id="dup"))["prompt_id"]
        await collect_until(new, finished(pid))
        await old.close()  # the old handler's finally pops "dup": the live new socket is gone
        await wait_for(lambda: "dup" not in state.sockets)
        assert not new.closed
        await client.post("/queue", json={"clear": True})  # a status broadcast
        _, status = await receive(bystander)
        while (
            status["type"] != "status" or status["data"]["status"]["exec_info"]["queue_remaining"]
        ):
            _, status = await receive(bystander)
        with pytest.raises(asyncio.TimeoutError):
            await receive(new, timeout=0.2)
    await new.close()


async def test_reconnect_during_run_gets_executing_without_prompt_id(client: TestClient) -> None:
    state = state_of(client)
    state.job_duration = 30.0
    state.steps = 1
    ws = await client.ws_connect("/ws?clientId=re")
    await receive(ws)
    pid = (await submit(client, example_prompt(), client_id="re"))["prompt_id"]
    await collect_until(ws, lambda f: f[0] == "json" and f[1]["type"] == "executing")
    await ws.close()
    await wait_for(lambda: "re" not in state.sockets)
    async with client.ws_connect("/ws?clientId=re") as again:
        assert (await receive(again))[1]["data"]["sid"] == "re"
        assert await receive(again) == ("json", {"type": "executing", "data": {"node": "1"}})
        await client.post("/interrupt")
        await collect_until(again, finished(pid))


async def test_logs_subscription_free_and_static(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    # The built-in web root explicitly: an installed comfyui-frontend-package would replace it.
    client = await make_client(name="t", frontend_root=write_builtin_frontend(tmp_path, "t"))
    async with client.ws_connect("/ws?clientId=logs") as ws:
        await receive(ws)
        body = {"clientId": "logs", "enabled": True}
        assert (await client.patch("/internal/logs/subscribe", json=body)).status == 200
        await submit(client, example_prompt())
        frames = await collect_until(ws, lambda f: f[0] == "json" and f[1]["type"] == "logs")
    assert frames[-1][1]["data"]["entries"][0]["m"] == "got prompt\n"
    assert (await client.post("/free", json={"unload_models": True})).status == 200
    js = await client.get("/extensions/core/fakeBackend.js")
    assert js.status == 200
    assert js.headers["Cache-Control"] == "no-cache"
    assert await (await client.get("/extensions")).json() == ["/extensions/core/fakeBackend.js"]
    assert (await client.get("/nothing.png")).status == 404


# --------------------------------------------------------------------------- knobs & identity


async def test_runtime_knobs(client: TestClient) -> None:
    state = state_of(client)
    state.fail_status = 503
    assert (await client.get("/system_stats")).status == 503
    sim = await (await client.get("/__sim/state")).json()
    assert sim["fail_status"] == 503
    assert sim["boot_id"] == state.boot_id
    async with client.ws_connect("/ws") as ws:  # websockets are not failed
        await receive(ws)
    resp = await client.post("/__sim/control", json={"fail_status": None, "hang": True})
    assert resp.status == 200
    assert state.hang is True
    assert state.fail_status is None

    async def fetch() -> aiohttp.ClientResponse:
        return await client.get("/prompt")

    pending = asyncio.get_running_loop().create_task(fetch())
    done, _ = await asyncio.wait({pending}, timeout=0.2)
    assert not done
    await client.post("/__sim/control", json={"hang": False, "delay_responses": 0.05})
    assert (await pending).status == 200
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await client.get("/features")).status == 200
    assert loop.time() - started >= 0.05
    bad = await client.post("/__sim/control", json={"nope": 1})
    assert bad.status == 400


async def test_same_filename_on_two_backends_differs(make_client: ClientFactory) -> None:
    a, b = await make_client(name="a"), await make_client(name="b")
    files = []
    for client in (a, b):
        async with client.ws_connect("/ws?clientId=same") as ws:
            await receive(ws)
            pid = (await submit(client, example_prompt("collide"), client_id="same"))["prompt_id"]
            frames = await collect_until(ws, finished(pid))
        executed = next(d for k, d in frames if k == "json" and d["type"] == "executed")
        assert executed["data"]["output"]["images"][0]["filename"] == "collide_00001_.png"
        view = await client.get("/view", params={"filename": "collide_00001_.png"})
        files.append(await view.read())
    assert files[0] != files[1]
    assert png_text(files[0])["fake_backend"].startswith("a:")
    assert state_of(a).boot_id != state_of(b).boot_id


async def test_temporary_data_dir_removed_on_cleanup(aiohttp_client: Any) -> None:
    app = create_fake_comfy_app(FakeComfyOptions(name="tmp"))
    client = await aiohttp_client(app)
    data_dir = app[FAKE_STATE].data_dir
    assert (data_dir / "input").is_dir()
    await client.close()
    assert not data_dir.exists()
    assert not app[FAKE_STATE].tasks


async def test_separate_process_entry_point() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.testing", "--port", "0", "--fast", "--name", "proc",
        stdout=asyncio.subprocess.PIPE, cwd=str(REPO_ROOT), env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
        assert line.startswith("READY http://127.0.0.1:"), line
        base = line.split(" ", 1)[1]
        port = int(base.rsplit(":", 1)[1])
        assert port > 0
        async with aiohttp.ClientSession() as session:
            stats = await (await session.get(base + "/system_stats")).json()
            argv = stats["system"]["argv"]
            assert argv[argv.index("--port") + 1] == str(port)
            assert "proc" in argv
            control = await session.post(base + "/__sim/control", json={"job_duration": 0})
            assert (await control.json())["job_duration"] == 0
            answer = await (
                await session.post(base + "/prompt", json={"prompt": example_prompt()})
            ).json()
            pid = answer["prompt_id"]
            for _ in range(500):
                sim = await (await session.get(base + "/__sim/state")).json()
                if sim["history_size"]:
                    break
                await asyncio.sleep(0.01)
            assert sim["executed_prompt_ids"] == [pid]
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0
