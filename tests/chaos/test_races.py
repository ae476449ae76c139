"""Deterministic reproductions of the races the chaos run found (issue 8).

Each test pins one interleaving with gates (a backend that holds ``POST /prompt`` until the test
releases it) instead of hoping the scheduler produces it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import JOBS, WS_RELAY
from gateway.keys import REGISTRY
from gateway.tasks import spawn
from gateway.testing import FAKE_STATE, FakeComfyOptions, create_fake_comfy_app, example_prompt
from tests.chaos.chaos_engine import sim_state as _sim_state
from tests.conftest import wait_for_state

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PromptGate:
    """Hold every ``POST /prompt`` a backend receives until :meth:`open` is called."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.released = asyncio.Event()
        self.bodies: list[dict[str, Any]] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/prompt":
            self.bodies.append(json.loads(await request.read()))
            self.arrived.set()
            await self.released.wait()
        return await handler(request)

    def open(self) -> None:
        self.released.set()


def gated_backend(name: str, gate: PromptGate, **options: Any) -> web.Application:
    """A simulated backend whose ``POST /prompt`` waits for ``gate``."""
    app = create_fake_comfy_app(FakeComfyOptions(name=name, **options))
    app.middlewares.insert(0, gate.middleware)
    return app


class WsClient:
    """A client socket through the gateway that records every event of its prompts."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        self.client_id = uuid.uuid4().hex
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Condition()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.ws = await self.gw.ws_connect(f"/ws?clientId={self.client_id}")
        self.reader = spawn(self._read(), name="race-client-reader")
        await self.wait(lambda: any(e["type"] == "status" for e in self.events))

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                async with self.changed:
                    self.events.append(json.loads(msg.data))
                    self.changed.notify_all()

    async def wait(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    def count(self, kind: str, prompt_id: str) -> int:
        return sum(
            1
            for e in self.events
            if e["type"] == kind and (e.get("data") or {}).get("prompt_id") == prompt_id
        )

    def ends(self, prompt_id: str) -> int:
        return sum(
            1
            for e in self.events
            if e["type"] == "executing"
            and e["data"].get("node") is None
            and e["data"].get("prompt_id") == prompt_id
        )

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await self.reader


async def wait_event(registry: Any, predicate: Callable[[Any], bool], timeout: float = 20) -> Any:
    """Return the first event on the bus (history included) matching ``predicate``."""
    subscription = registry.events.subscribe()
    try:
        for event in registry.events.recent():
            if predicate(event):
                return event
        async with asyncio.timeout(timeout):
            while not predicate(event := await subscription.get()):
                pass
        return event
    finally:
        subscription.close()


async def test_rescue_landing_after_the_prompt_finished_is_cancelled(
    backend_process, make_gateway, start_app
):
    """A frozen backend thaws and finishes its prompt while the rescue copy is being placed on
    another backend: the late copy must be cancelled, never run and delivered a second time."""
    a = await backend_process("a", job_duration=1.0, steps=10)
    gate = PromptGate()
    b = await start_app(gated_backend("b", gate, job_duration=0.2))
    gw = await make_gateway([a.url, f"http://127.0.0.1:{b.port}"], health={"timeout": 0.3})
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0") and registry.is_up("b1"))
    client = WsClient(gw)
    await client.connect()
    prompt_id = uuid.uuid4().hex
    body = {"prompt": example_prompt("race"), "client_id": client.client_id, "prompt_id": prompt_id}
    resp = await gw.post("/prompt", json=body)
    assert resp.status == 200
    await client.wait(lambda: client.count("execution_start", prompt_id) == 1)
    a.freeze()
    async with asyncio.timeout(20):
        await gate.arrived.wait()  # the rescue copy is on its way to b
    assert gate.bodies[-1]["prompt_id"] == prompt_id
    a.thaw()
    await client.wait(lambda: client.ends(prompt_id) == 1)  # a finished it after all
    gate.open()  # now b accepts the rescue copy, after the prompt finished on a
    state = b.app[FAKE_STATE]
    cancelled = await wait_event(
        registry,
        lambda e: (
            e.data.get("prompt_id") == prompt_id
            and e.data.get("server") == "b1"
            and e.kind in ("prompt.copy_cancelled", "prompt.submitted", "prompt.resubmitted")
        ),
        timeout=10,
    )
    assert cancelled.kind == "prompt.copy_cancelled", cancelled
    await wait_for_state(
        registry, lambda: not state.queue.running_items() and not state.queue.pending_items()
    )
    assert gw.app[JOBS].tracker.owner(prompt_id) == "b0"
    entry = state.history.get(prompt_id)
    assert entry is None or entry["status"]["status_str"] == "error"  # deleted or interrupted
    assert client.count("execution_success", prompt_id) == 1
    assert client.ends(prompt_id) == 1
    await client.close()


async def test_serving_change_while_a_prompt_is_being_submitted_keeps_its_socket(
    make_gateway, start_app
):
    """The serving backend changes while ``POST /prompt`` is in flight to the old one: the
    client's socket there must stay open, or the prompt's events are lost (ComfyUI does not
    buffer them) and the client waits forever."""
    gate = PromptGate()
    a = await start_app(gated_backend("a", gate, job_duration=0.2))
    b = await start_app(create_fake_comfy_app(FakeComfyOptions(name="b", job_duration=0.2)))
    gw = await make_gateway([f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{b.port}"])
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0") and registry.is_up("b1"))
    client = WsClient(gw)
    await client.connect()
    prompt_id = uuid.uuid4().hex
    graph = example_prompt("race2")
    body = {"prompt": graph, "client_id": client.client_id, "prompt_id": prompt_id}
    posting = spawn(gw.post("/prompt", json=body), name="race-post")
    async with asyncio.timeout(10):
        await gate.arrived.wait()  # the prompt is on its way to a
    registry.set_serving("b1", reason="test: the admin selected b")
    relay = gw.app[WS_RELAY]
    await wait_for_state(
        registry,
        lambda: (bridge := relay.bridge(client.client_id)) is not None and bridge.primary == "b1",
    )
    gate.open()
    resp = await posting
    assert resp.status == 200, await resp.text()
    await client.wait(lambda: client.ends(prompt_id) == 1, timeout=10)
    assert client.count("execution_success", prompt_id) == 1
    await client.close()


async def test_a_prompt_moved_back_to_a_thawed_backend_is_not_cancelled_there(
    backend_process, make_gateway
):
    """A prompt leaves a frozen backend A for B; B dies while A is still frozen; A thaws and is
    the only backend left, so the prompt goes back to A. The cancellation of the stale copy on
    A must not hit the prompt's new run there, and the two runs of one prompt_id on A must not
    both reach the client: it gets exactly one execution_success."""
    a = await backend_process("a", job_duration=2.0, steps=20)
    b = await backend_process("b", job_duration=2.0, steps=20)
    gw = await make_gateway([a.url, b.url], health={"timeout": 0.3})
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0") and registry.is_up("b1"))
    client = WsClient(gw)
    await client.connect()
    prompt_id = uuid.uuid4().hex
    body = {"prompt": example_prompt("back"), "client_id": client.client_id, "prompt_id": prompt_id}
    assert (await gw.post("/prompt", json=body)).status == 200
    await client.wait(lambda: client.count("execution_start", prompt_id) == 1)
    a.freeze()  # moved to b
    await client.wait(lambda: client.count("execution_start", prompt_id) == 2, timeout=30)
    assert gw.app[JOBS].tracker.owner(prompt_id) == "b1"
    await b.kill()  # and b dies while a is still frozen: nowhere to go
    await wait_for_state(registry, lambda: registry.status("b1").state.value == "down", 30)
    a.thaw()  # a is back, the only backend: the prompt returns there
    await client.wait(lambda: client.ends(prompt_id) >= 1, timeout=30)
    terminal = [
        e["type"]
        for e in client.events
        if e["type"] in ("execution_success", "execution_error", "execution_interrupted")
        and e["data"].get("prompt_id") == prompt_id
    ]
    assert terminal == ["execution_success"], terminal
    # Nothing else arrives for it once every copy on a has run or been cancelled.
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(20):
            while True:
                state = await _sim_state(session, a.url)
                if prompt_id not in state["queue"]["running"] + state["queue"]["pending"]:
                    break
                await asyncio.sleep(0.1)  # bounded polling of another process
    assert client.ends(prompt_id) == 1
    assert client.count("execution_success", prompt_id) == 1
    await client.close()


class LateAnswer:
    """Answer ``POST /prompt`` only once the prompt has run: its websocket events reach the
    gateway before the answer that tells it where the prompt went (a loaded machine, or a
    prompt ComfyUI serves from its cache in milliseconds)."""

    def __init__(self) -> None:
        self.state: Any = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.method == "POST" and request.path == "/prompt" and response.status == 200:
            prompt_id = json.loads(response.body)["prompt_id"]  # type: ignore[union-attr]
            async with asyncio.timeout(10):
                while True:  # the backend's own worker runs it meanwhile
                    if prompt_id in self.state.history:
                        break
                    await asyncio.sleep(0.01)
        return response


async def test_events_of_a_rerun_that_arrive_before_its_answer_reach_the_client(
    backend_process, make_gateway, start_app
):
    a = await backend_process("a", job_duration=3.0, steps=30)
    late = LateAnswer()
    app = create_fake_comfy_app(FakeComfyOptions(name="b", job_duration=0.05, steps=1))
    app.middlewares.insert(0, late.middleware)
    late.state = app[FAKE_STATE]
    b = await start_app(app)
    gw = await make_gateway([a.url, f"http://127.0.0.1:{b.port}"], health={"timeout": 0.3})
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0") and registry.is_up("b1"))
    client = WsClient(gw)
    await client.connect()
    prompt_id = uuid.uuid4().hex
    body = {
        "prompt": example_prompt("early"),
        "client_id": client.client_id,
        "prompt_id": prompt_id,
    }
    assert (await gw.post("/prompt", json=body)).status == 200
    await client.wait(lambda: client.count("execution_start", prompt_id) == 1)
    a.freeze()  # rescued to b, which runs it before answering the re-submission
    try:
        await client.wait(lambda: client.ends(prompt_id) == 1, timeout=20)
        assert client.count("execution_success", prompt_id) == 1
    finally:
        a.thaw()
    await client.close()
