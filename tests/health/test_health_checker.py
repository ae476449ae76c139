"""The health checker and failover controller against real stub backends on 127.0.0.1.

Each stub is a tiny aiohttp app serving ``/system_stats``, ``/prompt`` and ``/ws``; its behaviour
is driven by a plain dict. Tests wait on events from the bus, never on sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config.models import (
    BackendAuth,
    FailoverSettings,
    GatewayConfig,
    HealthSettings,
    ServerConfig,
)
from gateway.events import Event, Subscription
from gateway.health.checker import (
    FailoverController,
    HealthChecker,
    PassiveHealth,
    probe_once,
)
from gateway.proxy.upstream import BackendPool
from gateway.registry import ServerRegistry, ServerState

FAST = HealthSettings(
    interval=0.02, fast_interval=0.01, down_interval=0.02, timeout=0.5, jitter=0.0, rise=2, fall=2
)

ServerFactory = Callable[..., Awaitable[TestServer]]


def stub_app(state: dict[str, Any]) -> web.Application:
    """Return a minimal ComfyUI look-alike whose answers follow ``state``."""

    def authorised(request: web.Request) -> bool:
        token = state.get("token")
        return token is None or request.headers.get("Authorization") == f"Bearer {token}"

    async def system_stats(request: web.Request) -> web.Response:
        state["hits"] = state.get("hits", 0) + 1
        if "entered" in state:  # lets a test know a probe is in flight
            state["entered"].set()
        if not authorised(request):
            return web.json_response({"error": "unauthorised"}, status=401)
        if state.get("delay"):
            await asyncio.sleep(state["delay"])
        if state.get("status", 200) != 200:
            return web.json_response({"error": "broken"}, status=state["status"])
        system: dict[str, Any] = {
            "os": "posix",
            "ram_total": 1000,
            "ram_free": state["hits"],  # changes every call: must not look like a restart
            "comfyui_version": "0.3.64",
            "argv": ["main.py", "--cpu"],
        }
        if "boot_id" in state:
            system["boot_id"] = state["boot_id"]
        devices = [
            {"name": "cpu", "type": "cpu", "index": None, "vram_total": 1000, "vram_free": 7}
        ]
        return web.json_response({"system": system, "devices": devices})

    async def prompt(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"error": "unauthorised"}, status=401)
        return web.json_response({"exec_info": {"queue_remaining": state.get("queue", 0)}})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_json(
            {
                "type": "status",
                "data": {
                    "status": {"exec_info": {"queue_remaining": state.get("queue", 0)}},
                    "sid": request.query.get("clientId"),
                },
            }
        )
        async for _ in sock:
            pass
        return sock

    app = web.Application()
    app.router.add_get("/system_stats", system_stats)
    app.router.add_get("/prompt", prompt)
    app.router.add_get("/ws", ws)
    return app


def url_of(server: TestServer) -> str:
    return str(server.make_url("/")).rstrip("/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def stub(aiohttp_server: Any) -> ServerFactory:
    """Start a stub backend: ``await stub(state, port=None)``."""

    async def start(state: dict[str, Any], port: int | None = None) -> TestServer:
        kwargs = {"port": port} if port is not None else {}
        server: TestServer = await aiohttp_server(stub_app(state), **kwargs)
        return server

    return start


@dataclass
class Harness:
    registry: ServerRegistry
    checker: HealthChecker
    controller: FailoverController
    pool: BackendPool
    sub: Subscription

    async def wait(self, kind: str, /, timeout: float = 3.0, **match: Any) -> Event:
        """Return the next event of ``kind`` whose data contains ``match``."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.sub.get()
                if event.kind == kind and all(event.data.get(k) == v for k, v in match.items()):
                    return event

    async def wait_state(self, state: str, *servers: str) -> None:
        """Return once every server in ``servers`` is in ``state`` (in any order)."""
        pending = {s for s in servers if self.registry.status(s).state.value != state}
        while pending:
            event = await self.wait("server.state", state=state)
            pending.discard(event.data["server"])

    async def wait_up(self, *servers: str) -> None:
        await self.wait_state("up", *servers)


@pytest.fixture
async def harness() -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    made: list[Harness] = []

    async def make(
        urls: dict[str, str],
        *,
        health: HealthSettings = FAST,
        failover: FailoverSettings | None = None,
        busy: Callable[[str], bool] | None = None,
        auth: dict[str, BackendAuth] | None = None,
    ) -> Harness:
        servers = [
            ServerConfig(id=sid, name=sid, url=url, priority=i, auth=(auth or {}).get(sid))
            for i, (sid, url) in enumerate(urls.items())
        ]
        config = GatewayConfig(
            servers=servers,
            active=servers[0].id,
            health=health,
            failover=failover or FailoverSettings(failback_hold=0.05),
        )
        registry = ServerRegistry(config)
        sub = registry.events.subscribe(maxsize=100_000)
        pool = BackendPool(config)
        h = Harness(
            registry,
            HealthChecker(registry, pool),
            FailoverController(registry, busy=busy),
            pool,
            sub,
        )
        made.append(h)
        await h.controller.start()
        await h.checker.start()
        return h

    yield make
    for h in made:
        await h.checker.stop()
        await h.controller.stop()
        await h.pool.close()
        h.sub.close()


# -- active checks -----------------------------------------------------------------------------


async def test_closed_backend_goes_down_and_serving_switches(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    a, b = await stub({}), await stub({})
    h = await harness({"a": url_of(a), "b": url_of(b)})
    await h.wait_up("a", "b")
    assert h.registry.serving_id == "a"
    await a.close()
    down = await h.wait("server.state", server="a", state="down")
    assert "refused" in down.data["reason"]
    changed = await h.wait("serving.changed", serving="b")
    assert changed.data["kind"] == "failover"
    assert changed.data["previous"] == "a"
    status = h.registry.status("a")
    assert status.last_error is not None
    assert "refused" in status.last_error


async def test_hung_backend_is_detected_by_timeout(
    harness: Callable[..., Awaitable[Harness]],
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept_and_never_answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        held.append(writer)

    hung = await asyncio.start_server(accept_and_never_answer, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    try:
        settings = FAST.model_copy(update={"timeout": 0.1})
        started = time.monotonic()
        h = await harness({"hung": f"http://127.0.0.1:{port}"}, health=settings)
        event = await h.wait("server.state", server="hung", state="down")
        assert time.monotonic() - started >= 0.1
        assert "timed out" in event.data["reason"]
        assert held, "the probe did connect: this is a timeout, not a refusal"
        assert h.registry.status("hung").last_error == "timed out"
    finally:
        for writer in held:
            writer.close()
        hung.close()
        await hung.wait_closed()


async def test_slow_backend_under_the_timeout_stays_up(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    slow = await stub({"delay": 0.05})
    h = await harness({"slow": url_of(slow)}, health=FAST.model_copy(update={"timeout": 0.5}))
    await h.wait_up("slow")
    for _ in range(5):
        result = await h.checker.check_now("slow")
        assert result.ok
        assert result.latency is not None
        assert result.latency >= 0.05
    assert h.registry.status("slow").state is ServerState.UP
    assert not [
        e
        for e in h.registry.events.recent()
        if e.kind == "server.state" and e.data["state"] == "down"
    ]


async def test_status_fields_and_check_now(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    a = await stub({"queue": 3})
    h = await harness({"a": url_of(a)})
    await h.wait_up("a")
    result = await h.checker.check_now("a")
    assert result.ok
    assert result.queue_remaining == 3
    status = h.registry.status("a")
    assert status.comfyui_version == "0.3.64"
    assert status.devices[0]["name"] == "cpu"
    assert status.queue_remaining == 3
    assert status.http_status == 200
    assert status.last_check is not None
    assert status.identity is not None
    with pytest.raises(KeyError):
        await h.checker.check_now("nope")


async def test_server_checked_is_published_on_change_not_on_every_probe(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    state: dict[str, Any] = {"queue": 0}
    a = await stub(state)
    slow_heartbeat = FAST.model_copy(update={"interval": 60.0})
    h = await harness({"a": url_of(a)}, health=slow_heartbeat)
    await h.wait_up("a")
    await h.checker.check_now("a")
    before = len([e for e in h.registry.events.recent() if e.kind == "server.checked"])
    for _ in range(5):
        await h.checker.check_now("a")
    same = len([e for e in h.registry.events.recent() if e.kind == "server.checked"])
    assert same == before
    state["queue"] = 4
    await h.checker.check_now("a")
    event = await h.wait("server.checked", server="a", queue_remaining=4)
    assert event.data["ok"] is True


# -- passive checks ----------------------------------------------------------------------------


async def test_refused_proxied_request_fails_over_within_one_second_with_defaults(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    """Default settings (interval 2 s, fall 3): only passive health can make this fast."""
    a, b = await stub({}), await stub({})
    defaults = HealthSettings()
    h = await harness(
        {"a": url_of(a), "b": url_of(b)}, health=defaults, failover=FailoverSettings()
    )
    await h.wait_up("a", "b")
    passive = PassiveHealth(h.checker)
    await a.close()
    started = time.monotonic()
    passive.upstream_failed("a", "connect", "Cannot connect to host: Connect call failed")
    changed = await h.wait("serving.changed", timeout=1.0, serving="b")
    elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert changed.data["kind"] == "failover"
    assert h.registry.status("a").state is ServerState.DOWN
    down = [
        e
        for e in h.registry.events.recent()
        if e.kind == "server.state" and e.data["server"] == "a"
    ][-1]
    assert "proxied request failed" in down.data["reason"]


async def test_passive_error_on_a_healthy_server_does_not_mark_it_down(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    a = await stub({})
    h = await harness({"a": url_of(a)}, health=HealthSettings())
    await h.wait_up("a")
    passive = PassiveHealth(h.checker)
    passive.upstream_failed("a", "reset", "websocket closed")
    checked = await h.checker.check_now("a")  # joins (or follows) the probe it triggered
    assert checked.ok
    assert h.registry.status("a").state is ServerState.UP
    tracker = h.checker.tracker("a")
    assert tracker is not None
    assert tracker.failures == 0
    passive.upstream_succeeded("a")
    passive.upstream_failed("unknown-server", "connect", "x")  # ignored, never raises


# -- stalled requests (a hung backend) ---------------------------------------------------------

# Long intervals: no scheduled probe interferes; only the stall's probe can mark a server down, and
# fall = 5 failures at 0.3 s each would take far longer than the waits below allow.
STALL_HEALTH = HealthSettings(
    interval=60.0, fast_interval=60.0, down_interval=60.0, timeout=0.3, jitter=0.0, rise=1, fall=5
)


async def stall_began_after_last_answer(waited: float) -> None:
    """Let ``waited`` seconds pass, so a stall of that length began after the last probe answered.

    (A request that began waiting before the server last answered a probe is no evidence.)
    """
    await asyncio.sleep(waited + 0.02)


def down_reason(h: Harness, server: str) -> str:
    events = [
        e
        for e in h.registry.events.recent()
        if e.kind == "server.state" and e.data["server"] == server and e.data["state"] == "down"
    ]
    assert events
    return str(events[-1].data["reason"])


async def test_stalled_request_on_a_hung_backend_is_confirmed_by_one_probe(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    state: dict[str, Any] = {}
    a, b = await stub(state), await stub({})
    h = await harness(
        {"a": url_of(a), "b": url_of(b)}, health=STALL_HEALTH, failover=FailoverSettings()
    )
    await h.wait_up("a", "b")
    await stall_began_after_last_answer(0.35)
    state["delay"] = 30.0  # hung: probes time out
    hits = state["hits"]
    started = time.monotonic()
    PassiveHealth(h.checker).upstream_stalled("a", 0.35)
    changed = await h.wait("serving.changed", timeout=2.0, serving="b")
    assert time.monotonic() - started < 1.5  # one 0.3 s probe, not 5 of them or a 60 s interval
    assert changed.data["kind"] == "failover"
    assert h.registry.status("a").state is ServerState.DOWN
    assert state["hits"] == hits + 1  # exactly one out-of-band probe
    reason = down_reason(h, "a")
    assert "stalled" in reason
    assert "confirmed by a failed check: timed out" in reason
    checked = [e for e in h.registry.events.recent() if e.kind == "server.checked"]
    assert any(e.data["server"] == "a" and e.data["state"] == "down" for e in checked)


async def test_stall_while_a_probe_is_in_flight_makes_that_probe_the_confirming_one(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    state: dict[str, Any] = {}
    a = await stub(state)
    h = await harness({"a": url_of(a)}, health=STALL_HEALTH)
    await h.wait_up("a")
    await stall_began_after_last_answer(0.35)
    state["delay"] = 30.0
    state["entered"] = entered = asyncio.Event()
    hits = state["hits"]
    h.checker.request_check("a")
    async with asyncio.timeout(2.0):
        await entered.wait()  # the scheduled probe is in flight (and will time out)
    PassiveHealth(h.checker).upstream_stalled("a", 0.35)
    await h.wait_state("down", "a")
    assert state["hits"] == hits + 1  # no second probe: the one in flight confirmed the stall
    assert "stalled" in down_reason(h, "a")


async def test_stalled_request_on_a_healthy_backend_changes_nothing(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    """A slow request alone (the probe answers fine) costs one probe and changes nothing."""
    state: dict[str, Any] = {}
    a = await stub(state)
    h = await harness({"a": url_of(a)}, health=STALL_HEALTH)
    await h.wait_up("a")
    await stall_began_after_last_answer(0.4)
    hits = state["hits"]
    tracker = h.checker.tracker("a")
    assert tracker is not None
    passive = PassiveHealth(h.checker)
    reported = time.monotonic()
    passive.upstream_stalled("a", 0.4)
    assert tracker.stall_suspected
    checked = await h.checker.check_now("a")  # joins the probe the stall started
    assert checked.ok
    assert state["hits"] == hits + 1
    assert h.registry.status("a").state is ServerState.UP
    assert not tracker.stall_suspected
    assert (tracker.failures, tracker.transitioning) == (0, False)
    # The same request still waiting: the server answered since it began, so no new probe.
    passive.upstream_stalled("a", 0.4 + time.monotonic() - reported)
    assert not tracker.stall_suspected
    assert not tracker.recheck_requested
    # Under the timeout, or for a server the checker does not know: nothing (and no raise).
    passive.upstream_stalled("a", 0.1)
    passive.upstream_stalled("unknown-server", 5.0)
    assert not tracker.stall_suspected
    assert not [
        e
        for e in h.registry.events.recent()
        if e.kind == "server.state" and e.data["server"] == "a" and e.data["state"] == "down"
    ]


# -- restarts, recovery, failback --------------------------------------------------------------


async def test_restart_detected_by_identity_change(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    state: dict[str, Any] = {"boot_id": "one"}
    a = await stub(state)
    h = await harness({"a": url_of(a)})
    await h.wait_up("a")
    state["boot_id"] = "two"
    event = await h.wait("server.restarted", server="a")
    assert event.data["evidence"] == "identity"
    assert event.data["certain"] is True
    assert event.data["restarts"] == 1
    assert h.registry.status("a").restarts == 1


async def test_restart_detected_when_a_server_comes_back(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    a = await stub({})
    port = a.port
    h = await harness({"a": url_of(a)})
    await h.wait_up("a")
    await a.close()
    await h.wait("server.state", server="a", state="down")
    assert port is not None
    await stub({}, port=port)
    event = await h.wait("server.restarted", server="a")
    assert event.data["evidence"] == "returned"
    assert event.data["certain"] is False
    await h.wait("server.state", server="a", state="up")


async def test_all_down_then_first_back_is_used_at_once(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    a, b = await stub({}), await stub({})
    b_port = b.port
    h = await harness({"a": url_of(a), "b": url_of(b)})
    await h.wait_up("a", "b")
    await a.close()
    await b.close()
    await h.wait_state("down", "a", "b")
    # Whether a failover to b happened in between depends on timing; from here it cannot move.
    serving_while_all_down = h.registry.serving_id
    assert b_port is not None
    await stub({}, port=b_port)
    await h.wait("server.state", server="b", state="up")
    if serving_while_all_down != "b":
        changed = await h.wait("serving.changed", serving="b")
        assert changed.data["kind"] == "recover"
    assert h.registry.serving_id == "b"


async def test_recover_kind_when_nothing_was_up(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    a_port, b_port = free_port(), free_port()
    h = await harness({"a": f"http://127.0.0.1:{a_port}", "b": f"http://127.0.0.1:{b_port}"})
    await h.wait_state("down", "a", "b")
    assert h.registry.serving_id == "a"  # nothing to move to: no change
    await stub({}, port=b_port)
    changed = await h.wait("serving.changed", serving="b")
    assert changed.data["kind"] == "recover"


async def test_failback_waits_for_hold_and_idle(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    busy = {"b": True}
    a, b = await stub({}), await stub({})
    a_port = a.port
    h = await harness(
        {"a": url_of(a), "b": url_of(b)},
        failover=FailoverSettings(failback_hold=0.1),
        busy=lambda sid: busy.get(sid, False),
    )
    await h.wait_up("a", "b")
    await a.close()
    await h.wait("serving.changed", serving="b", kind="failover")
    assert a_port is not None
    await stub({}, port=a_port)
    up_at = (await h.wait("server.state", server="a", state="up")).ts
    with pytest.raises(TimeoutError):  # held back: a prompt runs on b
        await h.wait("serving.changed", timeout=0.3)
    busy["b"] = False
    h.controller.poke()
    changed = await h.wait("serving.changed", serving="a")
    assert changed.data["kind"] == "failback"
    assert changed.ts - up_at >= 0.1


async def test_manual_failback_stays(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    a, b = await stub({}), await stub({})
    a_port = a.port
    h = await harness(
        {"a": url_of(a), "b": url_of(b)},
        failover=FailoverSettings(failback="manual", failback_hold=0.0),
    )
    await h.wait_up("a", "b")
    await a.close()
    await h.wait("serving.changed", serving="b")
    assert a_port is not None
    await stub({}, port=a_port)
    await h.wait("server.state", server="a", state="up")
    with pytest.raises(TimeoutError):
        await h.wait("serving.changed", timeout=0.2)
    assert h.registry.serving_id == "b"


# -- runtime configuration -------------------------------------------------------------------


async def test_servers_added_and_disabled_at_runtime(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    a, b = await stub({}), await stub({})
    h = await harness({"a": url_of(a)})
    await h.wait_up("a")
    config = h.registry.config
    added = config.model_copy(
        update={"servers": [*config.servers, ServerConfig(id="b", name="b", url=url_of(b))]}
    )
    h.pool.sync(added)
    h.registry.apply_config(added, reason="test add")
    await h.wait("server.state", server="b", state="up")
    disabled = added.model_copy(
        update={
            "servers": [added.servers[0], added.servers[1].model_copy(update={"enabled": False})]
        }
    )
    h.registry.apply_config(disabled, reason="test disable")
    await h.wait("server.state", server="b", state="unknown")
    assert h.checker.tracker("b") is None
    # A server that is not checked can still be probed on demand (admin "test" button).
    result = await h.checker.check_now("b")
    assert result.ok
    assert h.registry.status("b").state is ServerState.UNKNOWN


async def test_stop_is_clean(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    a = await stub({})
    h = await harness({"a": url_of(a)})
    await h.wait_up("a")
    await h.checker.stop()
    assert not h.checker.running
    assert h.checker.tracker("a") is None
    async with h.checker:  # restartable, usable as an async context manager
        assert h.checker.running
    assert not h.checker.running


# -- probe_once (admin "test server", unsaved servers) -----------------------------------------


async def test_probe_once_on_an_unsaved_server_with_websocket(stub: ServerFactory) -> None:
    a = await stub({"queue": 2, "token": "s3cret"})
    server = ServerConfig(
        id="new", name="new", url=url_of(a), auth=BackendAuth(bearer_token="s3cret")
    )
    result = await probe_once(server)
    assert result.ok
    assert result.reachable
    assert result.http_status == 200
    assert result.comfyui_version == "0.3.64"
    assert result.devices[0]["type"] == "cpu"
    assert result.queue_remaining == 2
    assert result.websocket is not None
    assert result.websocket.ok
    assert result.websocket.sid is not None
    assert result.websocket.sid.startswith("gateway-probe-")
    assert "identity" not in result.as_dict()

    no_auth = ServerConfig(id="new", name="new", url=url_of(a))
    refused = await probe_once(no_auth, websocket=False)
    assert not refused.ok
    assert refused.reachable
    assert refused.http_status == 401
    assert refused.error_kind == "http_status"


async def test_probe_once_with_a_pool_backend_and_unreachable_server(stub: ServerFactory) -> None:
    a = await stub({})
    server = ServerConfig(id="a", name="a", url=url_of(a))
    pool = BackendPool(GatewayConfig(servers=[server]))
    try:
        result = await probe_once(server, pool.get("a"), websocket=False)
        assert result.ok
    finally:
        await pool.close()
    gone = ServerConfig(id="gone", name="gone", url=f"http://127.0.0.1:{free_port()}")
    result = await probe_once(gone)
    assert not result.ok
    assert not result.reachable
    assert result.refused
    assert result.websocket is None


async def test_check_now_calls_share_one_probe(
    stub: ServerFactory, harness: Callable[..., Awaitable[Harness]]
) -> None:
    state: dict[str, Any] = {"delay": 0.05}
    a = await stub(state)
    h = await harness({"a": url_of(a)}, health=FAST.model_copy(update={"interval": 60.0}))
    await h.wait_up("a")
    hits = state["hits"]
    results = await asyncio.gather(*(h.checker.check_now("a") for _ in range(10)))
    assert all(r.ok for r in results)
    assert state["hits"] - hits <= 2  # one probe in flight + at most one follow-up
