"""Alert webhooks against real aiohttp receivers on 127.0.0.1.

Covers: which events raise which alerts, the generic/Slack/Discord payloads, retries after a 500,
a slow receiver never blocking the publisher, a refused receiver given up after bounded retries,
the rate limit's digest, a full queue dropping its oldest alert, secrets never logged, config
reloads, a clean shutdown, and a real gateway whose backend dies calling its webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.alerts import (
    ALERTS,
    Alert,
    AlertDetector,
    AlertManager,
    backoff_delay,
    render,
    setup_alerts,
)
from gateway.app import METRICS, create_app
from gateway.config.models import AlertSettings, GatewayConfig, WebhookConfig
from gateway.keys import REGISTRY
from gateway.registry import ServerRegistry, ServerState
from gateway.tasks import running_tasks

TOKEN = "T0KEN-s3cr3t-abc123"


# -- receivers ----------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook receiver: records every POST, answers from a script."""

    server: TestServer | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    """Statuses to answer in order; 200 once exhausted."""
    delay: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/hook/{TOKEN}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"body": body, "headers": dict(request.headers), "t": time.time()})
        self.arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok")

    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"receiver got {len(self.requests)} requests, expected {count}")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.1)
        return self.bodies()


MakeReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> MakeReceiver:
    """Start a receiver: ``await receiver(statuses=[500], delay=0)``."""

    async def make(**kwargs: Any) -> Receiver:
        rec = Receiver(**kwargs)
        app = web.Application()
        app.router.add_post("/hook/{token}", rec.handle)
        rec.server = await aiohttp_server(app, host="127.0.0.1")
        return rec

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- registries and managers -------------------------------------------------------------------


def config(webhooks: list[dict[str, Any]], **alerts: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "servers": [
                {"id": "gpu-a", "name": "GPU A", "url": "http://127.0.0.1:1", "priority": 1},
                {"id": "gpu-b", "name": "GPU B", "url": "http://127.0.0.1:2", "priority": 2},
            ],
            "active": "gpu-a",
            "alerts": {"webhooks": webhooks, "instance": "test-gw", **alerts},
        }
    )


def hook(url: str, **options: Any) -> dict[str, Any]:
    return {"url": url, "backoff": 0.01, "backoff_max": 0.05, "timeout": 2.0, **options}


@pytest.fixture
async def manager_for() -> AsyncIterator[Callable[..., Awaitable[AlertManager]]]:
    """Build and start managers; stop them all at teardown."""
    made: list[AlertManager] = []

    async def make(cfg: GatewayConfig, **kwargs: Any) -> AlertManager:
        manager = AlertManager(ServerRegistry(cfg), rng=random.Random(7), **kwargs)
        await manager.start()
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.stop()


def take_down_everything(registry: ServerRegistry) -> None:
    registry.set_state("gpu-a", ServerState.UP, reason="checks passed")
    registry.set_state("gpu-b", ServerState.UP, reason="checks passed")
    registry.set_state("gpu-a", ServerState.DOWN, reason="3 failed checks: connection refused")
    registry.set_serving("gpu-b", reason="gpu-a is down", kind="failover")
    registry.set_state("gpu-b", ServerState.DOWN, reason="timeout")


# -- detection ----------------------------------------------------------------------------------


def test_detector_follows_an_outage() -> None:
    registry = ServerRegistry(config([]))
    detector = AlertDetector(registry)
    seen: list[Alert] = []
    registry.events.add_listener(lambda e: seen.extend(detector.feed(e)))

    take_down_everything(registry)
    registry.set_state("gpu-a", ServerState.UP, reason="checks pass again")
    registry.set_serving("gpu-a", reason="gpu-a is the first server back", kind="recover")
    registry.events.publish("prompt.lost", prompt_id="p-1", server="gpu-b", reason="restart")

    assert [a.event for a in seen] == [
        "server_down",
        "failover",
        "server_down",
        "all_down",
        "server_up",
        "recovered",
        "prompt_lost",
    ]
    down, failover, _, all_down, up, recovered, lost = seen
    assert down.server == "gpu-a"
    assert down.server_name == "GPU A"
    assert down.reason == "3 failed checks: connection refused"
    assert down.summary == "Server GPU A (gpu-a) is down: 3 failed checks: connection refused"
    assert down.severity == "warning"
    assert (failover.server, failover.serving, failover.preferred) == ("gpu-a", "gpu-b", "gpu-a")
    assert failover.details["to_server"] == "gpu-b"
    assert all_down.severity == "critical"
    assert all_down.details == {"servers": ["gpu-a", "gpu-b"]}
    assert up.details == {"state": "up", "previous": "down"}
    # gpu-a came back before traffic moved to it: recovered fires once it serves.
    assert recovered.server == "gpu-a"
    assert recovered.serving == "gpu-a"
    assert lost.details == {"prompt_id": "p-1"}
    assert detector.all_down is False


def test_first_verdicts_at_start_and_switches_are_quiet() -> None:
    registry = ServerRegistry(config([]))
    detector = AlertDetector(registry)
    seen: list[Alert] = []
    registry.events.add_listener(lambda e: seen.extend(detector.feed(e)))
    registry.set_state("gpu-a", ServerState.UP, reason="first check")  # unknown -> up
    registry.set_serving("gpu-b", reason="admin selected gpu-b", kind="switch")
    registry.set_serving("gpu-a", reason="preferred is back", kind="failback")
    assert seen == []


def test_recovered_when_the_serving_server_itself_comes_back() -> None:
    registry = ServerRegistry(config([]))
    detector = AlertDetector(registry)
    seen: list[Alert] = []
    registry.events.add_listener(lambda e: seen.extend(detector.feed(e)))
    take_down_everything(registry)
    registry.set_state("gpu-a", ServerState.UP, reason="back")  # not serving: not yet
    assert seen[-1].event == "server_up"
    registry.set_state("gpu-b", ServerState.UP, reason="back")  # serving: recovered
    assert [a.event for a in seen[-2:]] == ["server_up", "recovered"]
    assert seen[-1].server == "gpu-b"


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, 8.0, rng) for n in range(1, 7)]
    ceilings = [1, 2, 4, 8, 8, 8]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_delay(1, 1.0, 8.0, rng, retry_after=5) == 5
    assert backoff_delay(1, 1.0, 8.0, rng, retry_after=500) == 8


# -- payloads -----------------------------------------------------------------------------------


async def test_payload_shapes(receiver: MakeReceiver, manager_for: Any) -> None:
    generic, slack, discord = await receiver(), await receiver(), await receiver()
    manager = await manager_for(
        config(
            [
                hook(generic.url, name="generic", headers={"Authorization": "Bearer xyz"}),
                hook(slack.url, name="slack", format="slack"),
                hook(discord.url, name="discord", format="discord", events=["server_down"]),
            ]
        )
    )
    registry = manager.registry
    registry.set_state("gpu-a", ServerState.UP, reason="ok")
    registry.set_state("gpu-a", ServerState.DOWN, reason="refused <&> @everyone")
    registry.set_serving("gpu-b", reason="gpu-a is down", kind="failover")

    (down, failover) = await generic.wait_for(2)
    assert set(down) == {
        "event",
        "severity",
        "summary",
        "server",
        "server_name",
        "reason",
        "timestamp",
        "ts",
        "serving",
        "preferred",
        "details",
        "gateway",
        "dropped",
    }
    assert down["event"] == "server_down"
    assert down["server"] == "gpu-a"
    assert down["server_name"] == "GPU A"
    assert down["reason"] == "refused <&> @everyone"
    assert down["serving"] == "gpu-a"
    assert down["preferred"] == "gpu-a"
    assert down["timestamp"].endswith("Z")
    assert down["gateway"] == {"instance": "test-gw", "version": "0.1.0"}
    assert down["dropped"] == 0
    assert failover["event"] == "failover"
    assert failover["serving"] == "gpu-b"
    headers = generic.requests[0]["headers"]
    assert headers["Authorization"] == "Bearer xyz"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("comfyui-gateway/")

    slack_bodies = await slack.wait_for(2)
    assert all(set(b) == {"text"} for b in slack_bodies)
    assert "*server_down*" in slack_bodies[0]["text"]
    assert "refused &lt;&amp;&gt; @everyone" in slack_bodies[0]["text"]
    assert "gateway test-gw v0.1.0" in slack_bodies[0]["text"]

    (only,) = await discord.wait_for(1)
    assert set(only) == {"content", "allowed_mentions"}
    assert only["allowed_mentions"] == {"parse": []}
    assert "**server_down**" in only["content"]
    assert "refused <&> @everyone" in only["content"]
    await asyncio.sleep(0.1)
    assert len(discord.requests) == 1  # subscribed to server_down only


def test_digest_payloads() -> None:
    alerts = [
        Alert(event="server_down", summary=f"down {i}", ts=1_700_000_000 + i, server=f"s{i}")
        for i in range(25)
    ] + [Alert(event="all_down", summary="all down", ts=1_700_000_100)]
    generic = render(alerts, "generic", instance="gw", dropped=3, rate=10)
    assert generic["event"] == "digest"
    assert generic["severity"] == "critical"
    assert generic["summary"].startswith("26 alerts (rate limit: 10 per minute)")
    assert [a["event"] for a in generic["alerts"]][-1] == "all_down"
    assert generic["dropped"] == 3
    text = render(alerts, "discord", instance="gw", dropped=3)["content"]
    assert len(text) <= 2000
    assert "and 6 more" in text
    assert "3 earlier alert(s) dropped" in text
    with pytest.raises(ValueError, match="no alerts"):
        render([], "generic", instance="gw")


# -- delivery -----------------------------------------------------------------------------------


async def test_retry_after_500_then_success(receiver: MakeReceiver, manager_for: Any) -> None:
    rec = await receiver(statuses=[500, 503])
    manager = await manager_for(config([hook(rec.url)]))
    manager.registry.set_state("gpu-a", ServerState.DOWN, reason="refused")
    bodies = await rec.wait_for(3)
    assert [b["event"] for b in bodies] == ["server_down"] * 3
    await manager.workers["webhook-1"].wait_idle()
    stats = manager.stats["webhook-1"]
    assert (stats.sent, stats.failed, stats.retries) == (1, 0, 2)


async def test_client_errors_are_not_retried(receiver: MakeReceiver, manager_for: Any) -> None:
    rec = await receiver(statuses=[404])
    manager = await manager_for(config([hook(rec.url)]))
    manager.registry.set_state("gpu-a", ServerState.DOWN, reason="refused")
    await rec.wait_for(1)
    await manager.workers["webhook-1"].wait_idle()
    assert len(rec.requests) == 1
    assert manager.stats["webhook-1"].failed == 1


async def test_slow_receiver_never_blocks_the_publisher(
    receiver: MakeReceiver, manager_for: Any
) -> None:
    rec = await receiver(delay=3.0)
    manager = await manager_for(config([hook(rec.url, timeout=5.0)]), drain_timeout=0.1)
    registry = manager.registry
    started = time.perf_counter()
    for i in range(200):
        registry.events.publish("prompt.lost", prompt_id=f"p{i}", server="gpu-a", reason="x")
    publish_time = time.perf_counter() - started
    assert publish_time < 0.5, publish_time  # no I/O on the publisher's path

    # The event loop stays responsive while the receiver sits on the request.
    await rec.wait_for(1)
    lag_started = time.perf_counter()
    await asyncio.sleep(0.01)
    assert time.perf_counter() - lag_started < 0.2
    worker = manager.workers["webhook-1"]
    assert worker.queued == 99  # queue_size 100: 1 in flight, oldest of the rest dropped
    assert manager.stats["webhook-1"].dropped == 100

    before = time.perf_counter()
    await manager.stop()  # does not wait for the slow receiver beyond drain_timeout
    assert time.perf_counter() - before < 1.0
    assert worker.task is None


async def test_refused_receiver_gives_up_after_bounded_retries(manager_for: Any) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook/{TOKEN}"  # nothing listens there
    manager = await manager_for(config([hook(url, max_attempts=3)]))
    with structlog.testing.capture_logs() as logs:
        manager.registry.set_state("gpu-a", ServerState.DOWN, reason="refused")
        await asyncio.wait_for(manager.workers["webhook-1"].wait_idle(), 5)
    stats = manager.stats["webhook-1"]
    assert (stats.sent, stats.failed, stats.retries) == (0, 1, 2)
    failures = [e for e in logs if e["event"].startswith("alert delivery failed")]
    assert [e["attempt"] for e in failures] == [1, 2, 3]
    assert failures[0]["problem"].startswith("ClientConnectorError")
    assert "final" in failures[-1]
    # The webhook's URL (and its token) is never logged.
    assert TOKEN not in repr(logs)
    assert f":{port}/" not in repr(logs)


async def test_rate_limit_merges_alerts_into_a_digest(
    receiver: MakeReceiver, manager_for: Any
) -> None:
    now = [1000.0]
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds
        await asyncio.sleep(0)

    rec = await receiver()
    manager = await manager_for(
        config([hook(rec.url, max_per_minute=2)]), clock=lambda: now[0], sleep=fake_sleep
    )
    for i in range(5):
        manager.registry.events.publish(
            "prompt.lost", prompt_id=f"p{i}", server="gpu-a", reason="x"
        )
    bodies = await rec.wait_for(3)
    await manager.workers["webhook-1"].wait_idle()
    assert [b["event"] for b in bodies] == ["prompt_lost", "prompt_lost", "digest"]
    assert [a["details"]["prompt_id"] for a in bodies[2]["alerts"]] == ["p2", "p3", "p4"]
    assert waits == [60.0]  # waited for the window once, then sent everything pending
    stats = manager.stats["webhook-1"]
    assert (stats.sent, stats.alerts) == (3, 5)


async def test_full_queue_drops_the_oldest_and_says_so(
    receiver: MakeReceiver, manager_for: Any
) -> None:
    rec = await receiver(delay=0.3)
    manager = await manager_for(config([hook(rec.url)], queue_size=2))
    bus = manager.registry.events
    bus.publish("prompt.lost", prompt_id="p0", server="gpu-a", reason="x")
    await rec.wait_for(1)  # p0 is in flight: the receiver holds it for 0.3 s
    for i in range(1, 5):
        bus.publish("prompt.lost", prompt_id=f"p{i}", server="gpu-a", reason="x")
    bodies = await rec.wait_for(3)
    # p0 went out at once; p1 and p2 were dropped for p3 and p4.
    assert [b["details"]["prompt_id"] for b in bodies] == ["p0", "p3", "p4"]
    assert [b["dropped"] for b in bodies] == [0, 2, 0]
    assert manager.stats["webhook-1"].dropped == 2


# -- configuration ------------------------------------------------------------------------------


def test_webhook_urls_are_secret_and_validated() -> None:
    settings = AlertSettings.model_validate(
        {"webhooks": [{"url": f"https://hooks.example/{TOKEN}"}, {"url": "http://x", "name": "b"}]}
    )
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings.model_dump())
    assert settings.webhook_names() == ["webhook-1", "b"]
    with pytest.raises(ValueError, match="http:// or https://") as info:
        WebhookConfig.model_validate({"url": f"ftp://hooks.example/{TOKEN}"})
    assert TOKEN not in str(info.value).split("input_value")[0]
    with pytest.raises(ValueError, match="duplicate webhook name"):
        AlertSettings.model_validate(
            {"webhooks": [{"url": "http://a", "name": "x"}, {"url": "http://b", "name": "x"}]}
        )
    with pytest.raises(ValueError, match=r"literal_error|Input should be"):
        WebhookConfig.model_validate({"url": "http://a", "events": ["server_exploded"]})


async def test_config_reload_reconciles_webhooks(receiver: MakeReceiver, manager_for: Any) -> None:
    one, two = await receiver(), await receiver()
    manager = await manager_for(config([hook(one.url, name="one")]))
    kept = manager.workers["one"]
    registry = manager.registry
    new = config([hook(one.url, name="one"), hook(two.url, name="two", format="slack")])
    registry.apply_config(new, reason="admin added a webhook")
    assert manager.workers["one"] is kept
    assert set(manager.workers) == {"one", "two"}
    registry.set_state("gpu-a", ServerState.DOWN, reason="refused")
    await one.wait_for(1)
    await two.wait_for(1)
    registry.apply_config(config([]), reason="alerts off")
    assert manager.workers == {}
    await asyncio.sleep(0)
    assert kept.task is None or kept.task.done()


async def test_shutdown_is_clean(receiver: MakeReceiver) -> None:
    baseline = running_tasks()
    rec = await receiver(delay=5.0)
    manager = AlertManager(ServerRegistry(config([hook(rec.url), hook(rec.url)])))
    await manager.start()
    assert running_tasks() == baseline + 2
    manager.registry.set_state("gpu-a", ServerState.DOWN, reason="refused")
    await rec.wait_for(2)
    await manager.stop()
    assert running_tasks() == baseline
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("alerts-")]
    assert manager.workers == {}
    # Events after the stop are ignored, not queued.
    manager.registry.set_state("gpu-b", ServerState.DOWN, reason="refused")
    assert running_tasks() == baseline


# -- end to end ---------------------------------------------------------------------------------


def stub_backend() -> web.Application:
    """A ComfyUI look-alike that passes health checks."""

    async def system_stats(request: web.Request) -> web.Response:
        return web.json_response(
            {"system": {"os": "posix", "comfyui_version": "0.3.64"}, "devices": []}
        )

    app = web.Application()
    app.router.add_get("/system_stats", system_stats)
    return app


async def test_killed_backend_calls_the_webhook_and_counts_it(
    aiohttp_server: Any, aiohttp_client: Any, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    a = await aiohttp_server(stub_backend(), host="127.0.0.1")
    b = await aiohttp_server(stub_backend(), host="127.0.0.1")
    cfg = GatewayConfig.model_validate(
        {
            "servers": [
                {"id": "a", "name": "A", "url": f"http://127.0.0.1:{a.port}", "priority": 1},
                {"id": "b", "name": "B", "url": f"http://127.0.0.1:{b.port}", "priority": 2},
            ],
            "health": {
                "interval": 0.05,
                "fast_interval": 0.02,
                "down_interval": 0.05,
                "timeout": 0.5,
                "jitter": 0,
                "rise": 1,
                "fall": 1,
                "read_queue": False,
            },
            "alerts": {"webhooks": [hook(rec.url, name="ops")]},
        }
    )
    app = create_app(cfg)
    if ALERTS not in app:  # until create_app wires it: the same line the lead adds
        setup_alerts(app, app[REGISTRY], app[METRICS].registry)
    client = await aiohttp_client(app)
    registry = app[REGISTRY]
    deadline = time.monotonic() + 10
    while not (registry.is_up("a") and registry.is_up("b")):
        assert time.monotonic() < deadline, "backends never came up"
        await asyncio.sleep(0.02)

    await a.close()
    bodies = await rec.wait_for(2)
    assert [b["event"] for b in bodies[:2]] == ["server_down", "failover"]
    assert bodies[0]["server"] == "a"
    assert "refused" in bodies[0]["reason"].lower()
    assert bodies[1]["serving"] == "b"

    await app[ALERTS].workers["ops"].wait_idle()
    scrape = await (await client.get("/metrics")).text()
    assert 'comfyui_gateway_alert_messages_total{result="sent",webhook="ops"} 2.0' in scrape
    assert 'comfyui_gateway_alerts_dropped_total{webhook="ops"} 0.0' in scrape
    assert TOKEN not in scrape
    assert json.dumps(bodies).count(TOKEN) == 0
