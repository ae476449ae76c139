"""Failover that no client notices: real backend processes killed, frozen and restarted."""

from __future__ import annotations

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
    await client.wait_done(prompt_id)  # the same websocket, never reconnected
    assert not client.ws.closed
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
