"""A frozen (SIGSTOP) serving backend under steady GET traffic: the issue 7 target, scaled down.

Target: the first successful answer to a request sent after the freeze comes within
``health.timeout * health.fall + 1 s`` of the freeze, and no request fails. The data plane
reports requests waiting longer than the health timeout (``upstream_stalled``); health checks
confirm with one probe and mark the backend down without waiting for ``fall`` timeouts; waiting
GETs then move to the new serving backend.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from gateway.keys import FORWARDER, REGISTRY
from gateway.tasks import spawn
from tests.conftest import wait_for_state

TIMEOUT, FALL, INTERVAL = 0.5, 3, 0.5
HEALTH = {
    "timeout": TIMEOUT,
    "fall": FALL,
    "interval": INTERVAL,
    "fast_interval": 0.5,  # the default: scheduled checks alone would need 2.5-3 s here
    "jitter": 0.0,
}
BUDGET = TIMEOUT * FALL + 1.0
SEND_EVERY = 0.025  # 40 requests per second, open loop
CLIENT_TIMEOUT = 10.0


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


async def test_frozen_backend_traffic_moves_within_timeout_times_fall_plus_one(
    backend_process,  # type: ignore[no-untyped-def]
    make_gateway,  # type: ignore[no-untyped-def]
) -> None:
    a = await backend_process("a")
    b = await backend_process("b")
    gw = await make_gateway([a.url, b.url], health=HEALTH)
    registry = gw.app[REGISTRY]
    # What create_app should pass (HttpForwarder(stall_after=...)): the health-check timeout.
    gw.app[FORWARDER].stall_after = lambda: registry.config.health.timeout
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
                async with session.get(url) as resp:
                    status = resp.status
                    if status == 200:
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
    first = min(after, key=lambda o: o.done)
    assert first.backend == "b"
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
    # Requests that were waiting on the frozen backend were answered by b, not failed.
    assert all(o.backend == "b" for o in after)
