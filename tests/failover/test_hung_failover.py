"""A frozen (SIGSTOP) serving backend under steady GET traffic: the issue 7 target, scaled down.

Target: the first successful answer to a request sent after the freeze comes within
``health.timeout * health.fall + 1 s`` of the freeze, and no request fails. The data plane
reports requests waiting longer than the health timeout (``upstream_stalled``); health checks
confirm with one probe and mark the backend down without waiting for ``fall`` timeouts; waiting
requests then move to the new serving backend.

Each test runs with ``GET`` (plain GETs: whichever part of the data plane serves them, the fast
lane when there is one) and ``HEAD`` (the forwarder of :mod:`gateway.proxy.http` and its
watchdog): the health side must not care who reports.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from gateway.app import HEALTH
from gateway.keys import OBSERVERS, REGISTRY
from gateway.proxy.observer import TrafficObserver
from gateway.tasks import spawn
from tests.conftest import server_url, wait_for_state

TIMEOUT, FALL, INTERVAL = 0.5, 3, 0.5
HUNG_HEALTH = {
    "timeout": TIMEOUT,
    "fall": FALL,
    "interval": INTERVAL,
    "fast_interval": 0.5,  # the default: scheduled checks alone would need 2.5-3 s here
    "jitter": 0.0,
}
BUDGET = TIMEOUT * FALL + 1.0
SEND_EVERY = 0.025  # 40 requests per second, open loop
CLIENT_TIMEOUT = 10.0
METHODS = pytest.mark.parametrize("method", ["GET", "HEAD"])


@dataclass
class Outcome:
    sent: float
    done: float
    status: int
    backend: str | None


def backend_name(stats: dict) -> str | None:
    """Return the simulated backend's name from its ``/system_stats`` ``argv``."""
    argv = stats.get("system", {}).get("argv", [])
    return argv[argv.index("--fake-backend-name") + 1] if "--fake-backend-name" in argv else None


@METHODS
async def test_frozen_backend_traffic_moves_within_timeout_times_fall_plus_one(
    backend_process,  # type: ignore[no-untyped-def]
    make_gateway,  # type: ignore[no-untyped-def]
    method: str,
) -> None:
    a = await backend_process("a")
    b = await backend_process("b")
    gw = await make_gateway([a.url, b.url], health=HUNG_HEALTH)
    registry = gw.app[REGISTRY]
    await wait_for_state(registry, lambda: registry.is_up("b0") and registry.is_up("b1"))
    assert registry.serving_id == "b0"

    outcomes: list[Outcome] = []
    warmed = asyncio.Event()
    moved = asyncio.Event()
    frozen_at: float | None = None
    url = str(gw.make_url("/system_stats"))

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT),
    ) as session:

        async def one() -> None:
            sent = time.monotonic()
            status, backend = 0, None
            try:
                async with session.request(method, url) as resp:
                    status = resp.status
                    if status == 200 and method == "GET":
                        backend = backend_name(await resp.json())
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, backend = -1, repr(exc)
            outcomes.append(Outcome(sent, time.monotonic(), status, backend))
            if len(outcomes) >= 10:
                warmed.set()
            if frozen_at is not None and sent > frozen_at and status == 200:
                moved.set()

        async def send() -> None:
            while True:  # cancelled by the test below, bounded by its timeouts
                tasks.append(spawn(one(), name="hung-test-get"))
                await asyncio.sleep(SEND_EVERY)

        tasks: list[asyncio.Task[None]] = []
        sender = spawn(send(), name="hung-test-sender")
        try:
            async with asyncio.timeout(10):
                await warmed.wait()  # traffic flows through a
            a.freeze()  # accepts TCP (the kernel does), never answers
            frozen_at = time.monotonic()
            async with asyncio.timeout(BUDGET + 5):  # generous bound; the assertion is below
                await moved.wait()
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        async with asyncio.timeout(CLIENT_TIMEOUT + 5):
            await asyncio.gather(*tasks)  # every request, including those rescued from a

    assert frozen_at is not None
    failed = [o for o in outcomes if o.status != 200]
    assert failed == [], failed[:5]
    after = [o for o in outcomes if o.sent > frozen_at]
    first = min(after, key=lambda o: o.done)  # a frozen: any answer after the freeze is b's
    elapsed = first.done - frozen_at
    assert elapsed <= BUDGET, f"first success {elapsed:.2f}s after the freeze (budget {BUDGET}s)"
    assert registry.serving_id == "b1"
    down = [
        e
        for e in registry.events.recent()
        if e.kind == "server.state" and e.data["server"] == "b0" and e.data["state"] == "down"
    ]
    assert down
    assert "stalled" in down[-1].data["reason"]
    assert "confirmed by a failed check" in down[-1].data["reason"]
    if method == "GET":  # (a HEAD answer has no body to tell)
        assert all(o.backend == "b" for o in after)


class StallRecorder(TrafficObserver):
    """Records the data plane's stall reports."""

    def __init__(self) -> None:
        self.stalls: list[tuple[str, float]] = []

    def upstream_stalled(self, backend: str, waited: float) -> None:
        self.stalls.append((backend, waited))


@METHODS
async def test_a_slow_request_is_reported_as_stalled_and_changes_nothing(
    start_app,  # type: ignore[no-untyped-def]
    make_gateway,  # type: ignore[no-untyped-def]
    method: str,
) -> None:
    """A slow answer (1.2 s) past the health timeout (0.3 s) on a healthy backend: reported, an
    immediate probe answers, the backend stays up and serving."""
    slow_running = False
    probed_meanwhile = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        nonlocal slow_running
        if request.path == "/system_stats" and slow_running:
            probed_meanwhile.set()
        if request.path == "/object_info":
            slow_running = True
            await asyncio.sleep(1.2)
            slow_running = False
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    backend = await start_app(app)
    # Scheduled probes every 60 s: a probe while the slow request runs is the stall's.
    gw = await make_gateway(
        [server_url(backend)],
        health={"timeout": 0.3, "interval": 60.0, "fast_interval": 60.0, "fall": 3},
    )
    registry = gw.app[REGISTRY]
    recorder = StallRecorder()
    gw.app[OBSERVERS].add(recorder)
    await wait_for_state(registry, lambda: registry.is_up("b0"))
    changes = [e for e in registry.events.recent() if e.kind in ("server.state", "serving.changed")]
    fast = await gw.request(method, "/features")  # answered at once: never reported
    assert fast.status == 200
    assert recorder.stalls == []
    resp = await gw.request(method, "/object_info")
    assert resp.status == 200
    assert recorder.stalls  # reported while it waited (the watchdog ticks every 0.5 s)
    assert all(server == "b0" and 0.3 < waited < 1.3 for server, waited in recorder.stalls)
    async with asyncio.timeout(5):
        await probed_meanwhile.wait()  # the stall's out-of-band probe
    checked = await gw.app[HEALTH].check_now("b0")  # and its result is applied by now
    assert checked.ok
    tracker = gw.app[HEALTH].tracker("b0")
    assert tracker is not None
    assert not tracker.stall_suspected
    assert tracker.failures == 0
    assert registry.is_up("b0")
    assert registry.serving_id == "b0"
    after = [e for e in registry.events.recent() if e.kind in ("server.state", "serving.changed")]
    assert after == changes
