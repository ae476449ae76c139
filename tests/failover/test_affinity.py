"""Affinity: requests that depend on one backend's state reach that backend."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import STORE
from gateway.keys import REGISTRY
from gateway.testing import FAKE_STATE, FakeComfyOptions, create_fake_comfy_app, example_prompt
from tests.conftest import server_url, wait_for_state


@pytest.fixture
async def pair(start_app) -> list[TestServer]:
    """Two in-process simulated backends."""
    return [
        await start_app(create_fake_comfy_app(FakeComfyOptions(name=n, job_duration=0.05)))
        for n in ("a", "b")
    ]


async def select(gw, server_id: str) -> None:
    """Make ``server_id`` the preferred (and so serving) server, as the admin API does."""
    await gw.app[STORE].update(lambda c: c.model_copy(update={"active": server_id}), reason="test")
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.serving_id == server_id)


async def run_to_completion(gw, comfy_client, prefix: str) -> tuple[str, dict]:
    """Submit a prompt through a websocket client and wait for it; return id and history."""
    client = await comfy_client(gw)
    prompt_id = await client.submit(example_prompt(prefix))
    await client.wait_done(prompt_id)
    history = await (await gw.get(f"/history/{prompt_id}")).json()
    return prompt_id, history[prompt_id]


async def test_same_file_name_on_two_backends_each_client_gets_its_own(
    pair, make_gateway, comfy_client
):
    gw = await make_gateway([server_url(b) for b in pair])
    first_id, first = await run_to_completion(gw, comfy_client, "same")
    await select(gw, "b1")
    second_id, second = await run_to_completion(gw, comfy_client, "same")
    ref1 = first["outputs"]["3"]["images"][0]
    ref2 = second["outputs"]["3"]["images"][0]
    assert ref1["filename"] == ref2["filename"]  # both backends numbered their file 00001
    bodies = []
    for backend, ref in ((pair[0], ref1), (pair[1], ref2)):
        got = await (await gw.get("/view", params=ref)).read()
        on_disk = (Path(backend.app[FAKE_STATE].dirs.output) / ref["filename"]).read_bytes()
        assert got == on_disk
        bodies.append(got)
    assert bodies[0] != bodies[1]
    # A reference that was never tagged still resolves, by the file map: to the backend that
    # produced that name most recently (the name alone cannot say more).
    plain = {**ref1, "subfolder": ""}
    assert await (await gw.get("/view", params=plain)).read() == bodies[1]
    # After the switch, /history/{id} of the first prompt still comes from its backend.
    again = await (await gw.get(f"/history/{first_id}")).json()
    assert again[first_id]["outputs"]["3"]["images"][0] == ref1
    merged = await (await gw.get("/history")).json()
    assert {first_id, second_id} <= set(merged)


async def test_targeted_interrupt_reaches_owner_after_switch(pair, make_gateway, comfy_client):
    gw = await make_gateway([server_url(b) for b in pair])
    pair[0].app[FAKE_STATE].job_duration = 30.0
    client = await comfy_client(gw)
    prompt_id = await client.submit(example_prompt("long"))
    await client.wait_for("execution_start", prompt_id)
    await select(gw, "b1")
    resp = await gw.post("/interrupt", json={"prompt_id": prompt_id})
    assert resp.status == 200
    await client.wait_for("execution_interrupted", prompt_id)


async def test_queue_and_prompt_merge_every_backend(pair, make_gateway, comfy_client):
    gw = await make_gateway([server_url(b) for b in pair])
    for backend in pair:
        backend.app[FAKE_STATE].job_duration = 30.0
    client = await comfy_client(gw)
    first = await client.submit(example_prompt("q"))
    await select(gw, "b1")
    second = await client.submit(example_prompt("q"))
    queue = await (await gw.get("/api/queue")).json()
    ids = {item[1] for item in queue["queue_running"] + queue["queue_pending"]}
    assert {first, second} <= ids
    remaining = await (await gw.get("/prompt")).json()
    assert remaining["exec_info"]["queue_remaining"] == 2
    resp = await gw.post("/queue", json={"delete": [second]})
    assert resp.status == 200
    await gw.post("/interrupt", json={"prompt_id": first})
    await gw.post("/interrupt", json={"prompt_id": second})


async def test_mask_upload_goes_to_the_backend_of_its_original(pair, make_gateway, comfy_client):
    gw = await make_gateway([server_url(b) for b in pair])
    _, entry = await run_to_completion(gw, comfy_client, "orig")
    ref = entry["outputs"]["3"]["images"][0]
    await select(gw, "b1")
    form = aiohttp.FormData()
    form.add_field("image", b"\x89PNG mask", filename="mask.png", content_type="image/png")
    form.add_field("original_ref", json.dumps(ref))
    resp = await gw.post("/upload/mask", data=form)
    assert resp.status == 200, await resp.text()  # b1 lacks the original: it would refuse
    name = (await resp.json())["name"]
    assert (Path(pair[0].app[FAKE_STATE].dirs.input) / name).exists()
    assert not (Path(pair[1].app[FAKE_STATE].dirs.input) / name).exists()


async def test_log_subscription_follows_the_client_to_a_new_backend(
    pair, make_gateway, comfy_client
):
    gw = await make_gateway([server_url(b) for b in pair])
    client = await comfy_client(gw)
    body = {"clientId": client.client_id, "enabled": True}
    assert (await gw.patch("/internal/logs/subscribe", json=body)).status == 200
    assert client.client_id in pair[0].app[FAKE_STATE].log_subscribers
    await select(gw, "b1")  # the client's socket moves to b1: the subscription must follow
    subscribers = pair[1].app[FAKE_STATE].log_subscribers
    async with asyncio.timeout(10):  # replayed in the background once the socket moved
        while client.client_id not in subscribers:  # noqa: ASYNC110 - no event to await there
            await asyncio.sleep(0.01)
    prompt_id = await client.submit(example_prompt("logs"))
    await client.wait_for("logs")  # b1's "got prompt" line reaches the same socket
    await client.wait_done(prompt_id)
