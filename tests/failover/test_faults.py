"""Failover that no client notices: real backend processes killed, frozen and restarted."""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.app import JOBS
from gateway.keys import REGISTRY
from gateway.registry import ServerState
from gateway.testing import example_prompt
from tests.conftest import wait_for_state
from tests.failover.conftest import sim_state


async def test_kill_active_backend_mid_prompt(backend_process, make_gateway, comfy_client):
    a = await backend_process("a", job_duration=3.0, steps=30)
    b = await backend_process("b", job_duration=0.2)
    gw = await make_gateway([a.url, b.url])
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0") and registry.is_up("b1"))
    client = await comfy_client(gw)
    prompt_id = await client.submit(example_prompt("kill"))
    await client.wait_for("execution_start", prompt_id)
    await a.kill()
    seen_before_kill = len(client.messages)
    await client.wait_done(prompt_id)  # the same websocket, never reconnected
    assert not client.ws.closed
    after = client.messages[seen_before_kill:]
    assert any(m["type"] == "status" for m in after)  # the new backend's queue
    assert any(m["type"] == "execution_start" for m in after)  # the re-run's events, same socket
    history = await (await gw.get(f"/history/{prompt_id}")).json()
    image = history[prompt_id]["outputs"]["3"]["images"][0]
    assert image["subfolder"].startswith("_gw_b1")
    view = await gw.get("/view", params=image)
    assert view.status == 200
    assert (await view.read()).startswith(b"\x89PNG")
    assert (await sim_state(b.url))["executed_prompt_ids"] == [prompt_id]
    assert registry.serving_id == "b1"


async def test_hung_backend_detected_by_timeout(backend_process, make_gateway):
    a = await backend_process("a")
    b = await backend_process("b")
    gw = await make_gateway([a.url, b.url], health={"timeout": 0.3})
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0") and registry.is_up("b1"))
    a.freeze()  # accepts TCP (the kernel does), never answers
    await wait_for_state(registry, lambda: registry.status("b0").state is ServerState.DOWN)
    assert "timed out" in (registry.status("b0").last_error or "")
    await wait_for_state(registry, lambda: registry.serving_id == "b1")
    resp = await gw.get("/system_stats")
    assert resp.status == 200


async def test_slow_backend_under_the_timeout_stays_up(backend_process, make_gateway):
    a = await backend_process("a")
    async with aiohttp.ClientSession() as session:
        await session.post(f"{a.url}/__sim/control", json={"delay_responses": 0.1})
    gw = await make_gateway([a.url], health={"timeout": 1.0})
    registry = gw.app[REGISTRY]
    subscription = registry.events.subscribe()
    checks = 0
    while checks < 5:  # five completed probes, each slow but in time
        event = await subscription.get()
        if event.kind == "server.checked" and event.data["server"] == "b0":
            checks += 1
            assert event.data["ok"]
    assert registry.is_up("b0")
    assert registry.status("b0").latency >= 0.1


async def test_restarted_backend_reruns_lost_prompt(backend_process, make_gateway, comfy_client):
    a = await backend_process("a", job_duration=3.0, steps=30)
    gw = await make_gateway([a.url])
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0"))
    client = await comfy_client(gw)
    prompt_id = await client.submit(example_prompt("restart"))
    await client.wait_for("execution_start", prompt_id)
    boot = (await sim_state(a.url))["boot_id"]
    async with aiohttp.ClientSession() as session:
        await session.post(f"{a.url}/__sim/control", json={"job_duration": 0.2})
    await a.restart()  # same port, empty history: the prompt is gone there
    async with aiohttp.ClientSession() as session:
        await session.post(f"{a.url}/__sim/control", json={"job_duration": 0.2})
    await client.wait_done(prompt_id)
    state = await sim_state(a.url)
    assert state["boot_id"] != boot
    assert state["executed_prompt_ids"] == [prompt_id]  # re-run on the fresh process
    history = await (await gw.get(f"/history/{prompt_id}")).json()
    assert history[prompt_id]["status"]["status_str"] == "success"


async def test_all_down_then_first_back_is_used(backend_process, make_gateway):
    a = await backend_process("a")
    b = await backend_process("b")
    gw = await make_gateway([a.url, b.url])
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0") and registry.is_up("b1"))
    await a.kill()
    await b.kill()
    await wait_for_state(
        registry,
        lambda: all(registry.status(s).state is ServerState.DOWN for s in ("b0", "b1")),
    )
    resp = await gw.get("/system_stats")
    assert resp.status == 503
    assert (await resp.json())["error"]["type"] == "no_backend_available"
    await b.start()  # the lower-priority one comes back first
    await wait_for_state(registry, lambda: registry.is_up("b1"))
    await wait_for_state(registry, lambda: registry.serving_id == "b1")
    resp = await gw.get("/system_stats")
    assert resp.status == 200


async def test_upload_before_failover_is_used_after_it(backend_process, make_gateway):
    a = await backend_process("a")
    b = await backend_process("b")
    gw = await make_gateway([a.url, b.url])
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0") and registry.is_up("b1"))
    form = aiohttp.FormData()
    form.add_field(
        "image", b"\x89PNG precious input", filename="mine.png", content_type="image/png"
    )
    uploaded = await (await gw.post("/upload/image", data=form)).json()
    await a.kill()
    await wait_for_state(registry, lambda: registry.serving_id == "b1")
    resp = await gw.post("/prompt", json={"prompt": example_prompt(load_image=uploaded["name"])})
    assert resp.status == 200, await resp.text()
    prompt_id = (await resp.json())["prompt_id"]
    assert gw.app[JOBS].tracker.owner(prompt_id) == "b1"


async def wait_event(registry, kind: str, timeout: float = 30) -> dict:
    """Wait for the next event of ``kind`` on the registry's bus; return its data."""
    subscription = registry.events.subscribe()
    try:
        async with asyncio.timeout(timeout):
            while (event := await subscription.get()).kind != kind:
                pass
        return event.data
    finally:
        subscription.close()


async def test_frozen_backend_copy_is_cancelled_when_it_thaws(
    backend_process, make_gateway, comfy_client
):
    a = await backend_process("a", job_duration=4.0, steps=40)
    b = await backend_process("b", job_duration=0.2)
    gw = await make_gateway([a.url, b.url], health={"timeout": 0.3})
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0") and registry.is_up("b1"))
    client = await comfy_client(gw)
    prompt_id = await client.submit(example_prompt("frozen"))
    await client.wait_for("execution_start", prompt_id)
    a.freeze()
    await client.wait_done(prompt_id)  # re-run on b, same client socket
    assert gw.app[JOBS].tracker.owner(prompt_id) == "b1"
    cancelled = asyncio.ensure_future(wait_event(registry, "prompt.copy_cancelled"))  # noqa: TID251
    a.thaw()
    assert (await cancelled)["prompt_id"] == prompt_id
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{a.url}/history/{prompt_id}") as resp,
    ):
        entry = (await resp.json()).get(prompt_id)
    # The stale copy never completed successfully on the thawed backend.
    assert entry is None or entry["status"]["status_str"] == "error"
    completions = [
        m
        for m in client.messages
        if m["type"] == "execution_success" and m["data"]["prompt_id"] == prompt_id
    ]
    assert len(completions) == 1


async def test_flapping_backend_does_not_ping_pong(start_app, make_gateway):
    """A backend failing every other check never changes state with rise=fall=2."""
    from gateway.testing import FAKE_STATE, FakeComfyOptions, create_fake_comfy_app

    flappy = await start_app(create_fake_comfy_app(FakeComfyOptions(name="flappy")))
    steady = await start_app(create_fake_comfy_app(FakeComfyOptions(name="steady")))
    gw = await make_gateway(
        [f"http://127.0.0.1:{flappy.port}", f"http://127.0.0.1:{steady.port}"],
        health={"rise": 2, "fall": 2},
    )
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0") and registry.is_up("b1"))
    state = flappy.app[FAKE_STATE]
    subscription = registry.events.subscribe()
    results = []
    async with asyncio.timeout(20):
        while len(results) < 12:
            event = await subscription.get()
            assert event.kind not in ("server.state", "serving.changed"), event
            if event.kind == "server.checked" and event.data["server"] == "b0":
                results.append(event.data["ok"])
                state.fail_status = None if state.fail_status else 500  # flip for the next one
    assert results.count(False) >= 5
    assert registry.serving_id == "b0"


async def test_unrecoverable_prompt_ends_with_execution_error(
    backend_process, make_gateway, comfy_client
):
    a = await backend_process("a", job_duration=4.0, steps=40)
    b = await backend_process("b", job_duration=0.2)
    gw = await make_gateway([a.url, b.url], failover={"resubmit_lost_prompts": False})
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0") and registry.is_up("b1"))
    client = await comfy_client(gw)
    prompt_id = await client.submit(example_prompt("lost"))
    await client.wait_for("execution_start", prompt_id)
    await a.kill()
    error = await client.wait_for("execution_error", prompt_id)
    assert "re-submission is off" in error["data"]["exception_message"]
    await client.wait_done(prompt_id)  # scripts waiting for the end marker are released too
    assert (await sim_state(b.url))["executed_prompt_ids"] == []
