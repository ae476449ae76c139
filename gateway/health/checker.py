"""Health checks and failover: the I/O shell around the pure policies.

* :func:`probe_once` probes one server (saved or not): ``GET {health.path}`` (``/system_stats``),
  optionally ``GET /prompt`` for the queue length, optionally a ``/ws`` handshake.
* :class:`HealthChecker` runs one probe loop per enabled server, feeds the results to a
  :class:`~gateway.health.policy.HealthTracker`, and writes statuses and verdicts into the
  :class:`~gateway.registry.ServerRegistry`.
* :class:`PassiveHealth` is the :class:`~gateway.proxy.observer.TrafficObserver` that turns the
  proxy's reports into passive health input (and immediate probes). A stalled request
  (``upstream_stalled``, whichever part of the data plane reports it) on an ``up`` server gets an
  out-of-band probe at once, or, when a probe is already in flight, makes that one the
  confirming probe; a failed confirming probe marks the server down without waiting for ``fall``
  failures (the rule is :meth:`~gateway.health.policy.HealthTracker.observe_stall`'s).
* :class:`FailoverController` runs :class:`~gateway.routing.failover.FailoverPolicy` after every
  state change and when a failback hold expires, and moves ``serving``.

Events published on the registry's bus (a contract for the SSE stream, metrics and alerts):

``server.checked``
    ``server, ok, state, latency, http_status, queue_remaining, error``. Published when one of
    ``ok``/``state``/``http_status``/``queue_remaining``/``error`` changed, otherwise at most once
    per ``health.interval`` per server (latency alone changes every probe and is not news).
``server.restarted``
    ``server, restarts, evidence ("identity" | "uptime" | "returned"), certain, reason,
    comfyui_version``. ``certain`` is False for "returned" (the server came back after an outage
    with the same identity): the job layer confirms by asking the backend for its prompts.
``server.state`` and ``serving.changed``
    Published by the registry (``kind`` of ``serving.changed``: failover, recover, failback).

Timing contract: a probe of one server never overlaps another probe of the same server; the loop
sleeps on an :class:`asyncio.Event` so :meth:`HealthChecker.check_now` and passive reports wake it
at once; intervals come from :func:`~gateway.health.policy.next_interval` and may be milliseconds.

Probes use the checker's own small connection pool (a fresh connection per probe), with each
backend's URL and credentials (:meth:`Backend.url`, :attr:`Backend.auth_headers`). They do not
share the backend's proxy pool on purpose: a pool saturated by proxied traffic (every open client
websocket holds a connection) would delay probes until they time out and mark a busy, healthy
server down; and a fresh connection is what detects "nothing listens here any more".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import aiohttp
import structlog
from aiohttp import web

from gateway.config.models import HealthSettings, ServerConfig
from gateway.events import Event, EventBus
from gateway.health.policy import (
    HealthTracker,
    PassiveSettings,
    PassiveVerdict,
    Restart,
    Transition,
    devices_of,
    identity_of,
    next_interval,
    queue_remaining_of,
    uptime_of,
    version_of,
)
from gateway.proxy.observer import TrafficObserver, UpstreamErrorKind
from gateway.proxy.upstream import Backend, BackendPool
from gateway.registry import ServerRegistry, ServerState, ServerStatus
from gateway.routing.failover import FailoverPolicy, FailoverView, Switch, never_busy
from gateway.routing.select import server_views
from gateway.tasks import cancel_and_wait, spawn

log = structlog.get_logger("gateway.health")

ProbeErrorKind = Literal["refused", "connect", "timeout", "reset", "http_status", "error"]
MAX_BODY = 1024 * 1024
"""Largest probe answer parsed, bytes (``/system_stats`` is about 1 KB)."""


# -- one probe ----------------------------------------------------------------------------------


@dataclass(slots=True)
class WsProbe:
    """Outcome of a ``/ws`` handshake: open, read the first ``status`` frame, close."""

    ok: bool
    latency: float | None = None
    error: str | None = None
    sid: str | None = None
    queue_remaining: int | None = None


@dataclass(slots=True)
class ProbeResult:
    """Outcome of one probe of one server."""

    server: str
    ok: bool
    """The health request answered 2xx in time (what rise/fall counts)."""
    reachable: bool = False
    """Some HTTP answer came back (even an error status)."""
    latency: float | None = None
    """Seconds for the health request (connect included), when an answer came back."""
    http_status: int | None = None
    error: str | None = None
    error_kind: ProbeErrorKind | None = None
    comfyui_version: str | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    queue_remaining: int | None = None
    identity: str | None = None
    uptime: float | None = None
    websocket: WsProbe | None = None
    checked_at: float = field(default_factory=time.time)

    @property
    def refused(self) -> bool:
        """Return True when the connection was refused (nothing listening)."""
        return self.error_kind == "refused"

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form (for the admin API's test endpoint)."""
        data = asdict(self)
        data.pop("identity", None)
        return data


def _describe(exc: BaseException) -> tuple[ProbeErrorKind, str]:
    """Classify a client exception (the order matters: the aiohttp classes overlap)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "refused", f"connection refused ({exc.host}:{exc.port})"
        return "connect", f"cannot connect: {exc.os_error or exc}"
    if isinstance(exc, TimeoutError):
        return "timeout", "timed out"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return "reset", f"connection reset: {exc}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "reset", f"connection reset: {exc}"
    return "error", f"{type(exc).__name__}: {exc}"


async def _get_json(
    session: aiohttp.ClientSession,
    wiring: Backend,
    path: str,
    limit: float,
) -> tuple[int, Any]:
    """GET ``path`` on a backend; return the status and the parsed JSON body (None if not JSON)."""
    async with session.get(
        wiring.url(path),
        headers=wiring.auth_headers,
        allow_redirects=False,
        timeout=aiohttp.ClientTimeout(total=limit),
    ) as resp:
        # Read to the end (bounded): one read() returns only what arrived first.
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > MAX_BODY:
                return resp.status, None
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        return resp.status, body


async def _ws_handshake(session: aiohttp.ClientSession, wiring: Backend, limit: float) -> WsProbe:
    # A unique clientId: ComfyUI keeps one socket per clientId, so reusing a client's id would
    # steal that client's events.
    path = f"/ws?clientId=gateway-probe-{uuid.uuid4().hex}"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            async with session.ws_connect(
                wiring.ws_url(path),
                headers=wiring.auth_headers,
                timeout=aiohttp.ClientWSTimeout(ws_close=limit),
                autoping=True,
                max_msg_size=16 * 1024 * 1024,
            ) as ws:
                msg = await ws.receive()
                latency = time.perf_counter() - started
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    return WsProbe(False, latency, f"first frame was {msg.type.name}, not status")
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    return WsProbe(False, latency, "first frame is not JSON")
                if not isinstance(frame, dict) or frame.get("type") != "status":
                    kind = frame.get("type") if isinstance(frame, dict) else None
                    return WsProbe(False, latency, f"first frame type {kind!r}, not 'status'")
                data = frame.get("data") if isinstance(frame.get("data"), dict) else {}
                status = data.get("status") if isinstance(data.get("status"), dict) else None
                sid = data.get("sid")
                return WsProbe(
                    True,
                    latency,
                    sid=sid if isinstance(sid, str) else None,
                    queue_remaining=queue_remaining_of(status),
                )
    except aiohttp.WSServerHandshakeError as exc:
        return WsProbe(False, None, f"handshake refused: HTTP {exc.status} {exc.message}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return WsProbe(False, None, _describe(exc)[1])


async def probe_once(
    server: ServerConfig,
    backend: Backend | None = None,
    *,
    settings: HealthSettings | None = None,
    websocket: bool = True,
    session: aiohttp.ClientSession | None = None,
) -> ProbeResult:
    """Probe one server once and return what was found; never raises for a network failure.

    Usable for a server that is not saved yet: without a matching ``backend`` (same URL and
    credentials) the server's own settings are used, over a short-lived session. ``session``
    overrides the connection pool (the health checker passes its own). With ``websocket`` the
    ``/ws`` handshake is tested too (the admin API's "test server"; periodic checks skip it).
    """
    settings = settings or HealthSettings()
    wiring = backend if backend is not None and backend.same_wiring(server) else Backend(server)
    own: aiohttp.ClientSession | None = None
    if session is None:
        if wiring is backend:
            session = wiring.session
        else:
            own = session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    try:
        return await _probe(server.id, wiring, session, settings, websocket=websocket)
    finally:
        if own is not None:
            await own.close()


async def _probe(
    server_id: str,
    wiring: Backend,
    session: aiohttp.ClientSession,
    settings: HealthSettings,
    *,
    websocket: bool,
) -> ProbeResult:
    result = ProbeResult(server=server_id, ok=False)

    async def health() -> tuple[int, Any, float]:
        started = time.perf_counter()
        status, body = await _get_json(session, wiring, settings.path, settings.timeout)
        return status, body, time.perf_counter() - started

    async def queue() -> int | None:
        if not settings.read_queue or settings.path == "/prompt":
            return None
        status, body = await _get_json(session, wiring, "/prompt", settings.timeout)
        return queue_remaining_of(body) if 200 <= status < 300 else None

    # Concurrently, so the queue read adds nothing to the probe's duration or measured latency;
    # both are bounded by the probe timeout, and a failed queue read does not fail the probe.
    answer, queued = await asyncio.gather(health(), queue(), return_exceptions=True)
    if isinstance(answer, BaseException):
        if not isinstance(answer, aiohttp.ClientError | TimeoutError | OSError):
            raise answer
        result.error_kind, result.error = _describe(answer)
        return result
    status, body, result.latency = answer
    result.reachable = True
    result.http_status = status
    if not 200 <= status < 300:
        result.error_kind, result.error = "http_status", f"HTTP {status} from {settings.path}"
        return result
    result.ok = True
    result.comfyui_version = version_of(body)
    result.devices = devices_of(body)
    result.identity = identity_of(body)
    result.uptime = uptime_of(body)
    if settings.path == "/prompt":
        result.queue_remaining = queue_remaining_of(body)
    elif isinstance(queued, int):
        result.queue_remaining = queued
    if websocket:
        result.websocket = await _ws_handshake(session, wiring, settings.timeout)
    return result


# -- the checker ------------------------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    """Runtime state of one checked server."""

    server_id: str
    tracker: HealthTracker
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: list[asyncio.Future[ProbeResult]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    status_ref: ServerStatus | None = None
    passive_seq: int = 0
    """Bumped by every passive failure that asked for a probe (see ``_run``)."""
    probing: bool = False
    """A probe of this server is in flight."""
    published_at: float = -1e18
    published: tuple[Any, ...] | None = None


class HealthChecker:
    """Probe every enabled server continuously and keep the registry's statuses current.

    Use as ``async with checker:`` (e.g. in an aiohttp ``cleanup_ctx``), or call
    :meth:`start` / :meth:`stop`. Servers added, removed, enabled or disabled at runtime are
    followed automatically (on the registry's ``config.applied`` event); :meth:`sync` does it
    on demand.
    """

    def __init__(
        self,
        registry: ServerRegistry,
        backends: BackendPool | None = None,
        settings_getter: Callable[[], HealthSettings] | None = None,
        events: EventBus | None = None,
        *,
        passive: PassiveSettings | Callable[[], PassiveSettings] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._backends = backends
        self._settings: Callable[[], HealthSettings] = settings_getter or (
            lambda: registry.config.health
        )
        self.events = events or registry.events
        if callable(passive):
            self._passive: Callable[[], PassiveSettings] = passive
        else:
            fixed = passive or PassiveSettings()
            self._passive = lambda: fixed
        self._rng = rng or random.Random()
        self._slots: dict[str, _Slot] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._running = False
        self._listening = False

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Return True between :meth:`start` and :meth:`stop`."""
        return self._running

    async def start(self) -> None:
        """Start one probe loop per enabled server (idempotent)."""
        if self._running:
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._running = True
        if not self._listening:
            # The bus has no remove_listener: the listener checks ``_running`` instead.
            self.events.add_listener(self._on_event)
            self._listening = True
        self.sync()

    async def stop(self) -> None:
        """Stop every probe loop and close the probe connections."""
        self._running = False
        tasks = [slot.task for slot in self._slots.values()] + list(self._stopping)
        self._slots.clear()
        await cancel_and_wait(*tasks)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HealthChecker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _on_event(self, event: Event) -> None:
        if self._running and event.kind == "config.applied":
            self.sync()
            # Settings may have changed (a shorter interval must not wait out the old one), and
            # a fresh look after an admin change is worth one probe per server.
            for slot in self._slots.values():
                slot.wake.set()

    def sync(self) -> None:
        """Start loops for newly enabled servers and stop those of removed or disabled ones."""
        if not self._running:
            return
        wanted = {s.id for s in self._registry.servers if s.enabled}
        for server_id in list(self._slots):
            if server_id not in wanted:
                self._drop(server_id)
        for server_id in wanted:
            if server_id not in self._slots:
                status = self._registry.statuses().get(server_id)
                state = status.state if status is not None else ServerState.UNKNOWN
                slot = _Slot(server_id, HealthTracker(server_id, state), status_ref=status)
                self._slots[server_id] = slot
                slot.task = spawn(self._run(slot), name=f"health-{server_id}")

    def _drop(self, server_id: str) -> None:
        slot = self._slots.pop(server_id)
        if slot.task is not None and not slot.task.done():
            slot.task.cancel()
            self._stopping.add(slot.task)
            slot.task.add_done_callback(self._stopping.discard)
        if self._registry.server(server_id) is not None:
            # Disabled: not checked any more, so no verdict; re-enabling starts from scratch.
            self._registry.set_state(server_id, ServerState.UNKNOWN, reason="disabled")
            with contextlib.suppress(KeyError):
                self._registry.status(server_id).checking = False

    def tracker(self, server_id: str) -> HealthTracker | None:
        """Return the health tracker of a checked server (for tests and diagnostics)."""
        slot = self._slots.get(server_id)
        return slot.tracker if slot else None

    # -- probing ---------------------------------------------------------------------------

    async def check_now(self, server_id: str) -> ProbeResult:
        """Probe a server now, count the result, and return it once it is applied.

        Concurrent calls share one probe. For a server that is configured but not checked
        (disabled, or the checker is stopped), probe it without touching its state.
        Raises KeyError for an unknown server id.
        """
        server = self._registry.server(server_id)
        if server is None:
            raise KeyError(server_id)
        slot = self._slots.get(server_id)
        if slot is None or slot.task is None or slot.task.done():
            return await probe_once(
                server,
                self._backend_for(server),
                settings=self._settings(),
                websocket=False,
                session=self._session if self._session and not self._session.closed else None,
            )
        future: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()
        slot.waiters.append(future)
        slot.wake.set()
        return await future

    def request_check(self, server_id: str) -> None:
        """Ask for an immediate probe of a server without waiting for it."""
        slot = self._slots.get(server_id)
        if slot is not None:
            slot.wake.set()

    def _backend_for(self, server: ServerConfig) -> Backend | None:
        backend = self._backends.get(server.id) if self._backends is not None else None
        return backend if backend is not None and backend.same_wiring(server) else None

    async def _run(self, slot: _Slot) -> None:
        try:
            while True:
                server = self._registry.server(slot.server_id)
                if server is None or not server.enabled:
                    return
                settings = self._settings()
                waiters, slot.waiters = slot.waiters, []
                slot.wake.clear()
                seq = slot.passive_seq
                slot.probing = True
                try:
                    result = await self._probe(server, settings)
                finally:
                    slot.probing = False
                # A passive failure that arrived while this probe was in flight is newer than
                # a success the probe may report: do not let the older success clear it.
                stale = result.ok and slot.passive_seq != seq
                if not stale:
                    try:
                        self._apply(slot, settings, result)
                    except Exception:  # a bug must not silently end this server's checks
                        log.exception("applying a health result failed", server=slot.server_id)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(result)
                if stale:
                    slot.wake.set()
                if not slot.wake.is_set():
                    delay = next_interval(settings, slot.tracker, self._rng)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await slot.wake.wait()
                await asyncio.sleep(0)  # stay fair even when woken back to back
        finally:
            for waiter in slot.waiters:
                if not waiter.done():
                    waiter.set_result(
                        ProbeResult(
                            slot.server_id,
                            False,
                            error="health checking stopped",
                            error_kind="error",
                        )
                    )

    async def _probe(self, server: ServerConfig, settings: HealthSettings) -> ProbeResult:
        session = self._session
        if session is None or session.closed:
            return ProbeResult(server.id, False, error="health checker stopped", error_kind="error")
        wiring = self._backend_for(server) or Backend(server)
        try:
            return await _probe(server.id, wiring, session, settings, websocket=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not end the loop: count it as a failed probe
            log.exception("health probe crashed", server=server.id)
            return ProbeResult(server.id, False, error=f"probe error: {exc!r}", error_kind="error")

    # -- applying results --------------------------------------------------------------------

    def _status(self, slot: _Slot) -> ServerStatus | None:
        """Return the registry status, re-aligning the tracker if someone else changed it."""
        status = self._registry.find_status(slot.server_id)
        if status is None:
            return None
        if status is not slot.status_ref:
            # The registry replaced the status (the URL changed): a new server, start over.
            slot.tracker.reset(status.state)
            slot.status_ref = status
        elif status.state is not slot.tracker.state:
            slot.tracker.adopt(status.state)
        return status

    def _apply(self, slot: _Slot, settings: HealthSettings, result: ProbeResult) -> None:
        status = self._status(slot)
        if status is None:
            return
        tracker = slot.tracker
        restart = tracker.observe_identity(result.identity, result.uptime) if result.ok else None
        transition = tracker.record(
            result.ok,
            settings,
            detail=result.error or "",
            refused=result.refused,
            at=self._clock(),
        )
        status.last_check = result.checked_at
        if result.latency is not None:
            status.latency = result.latency
        status.last_error = result.error
        status.http_status = result.http_status
        status.queue_remaining = result.queue_remaining
        if result.ok:
            status.comfyui_version = result.comfyui_version
            status.devices = result.devices
            status.identity = result.identity
        status.checking = tracker.transitioning
        if restart is not None:
            self._restarted(status, restart, result)
        if transition is not None:
            self._transition(transition)
        self._publish_checked(slot, settings, status, result)

    def _restarted(self, status: ServerStatus, restart: Restart, result: ProbeResult) -> None:
        status.restarts += 1
        log.warning(
            "backend restarted",
            server=restart.server,
            evidence=restart.evidence,
            reason=restart.reason,
        )
        self.events.publish(
            "server.restarted",
            server=restart.server,
            restarts=status.restarts,
            evidence=restart.evidence,
            certain=restart.certain,
            reason=restart.reason,
            comfyui_version=result.comfyui_version,
        )

    def _transition(self, transition: Transition) -> None:
        # Logged once, from the event (gateway.observability.logging.attach_event_logging).
        self._registry.set_state(transition.server, transition.new, reason=transition.reason)

    def _publish_checked(
        self, slot: _Slot, settings: HealthSettings, status: ServerStatus, result: ProbeResult
    ) -> None:
        signature = (
            result.ok,
            status.state,
            result.http_status,
            result.queue_remaining,
            result.error,
        )
        now = time.monotonic()
        if signature == slot.published and now - slot.published_at < settings.interval:
            return
        slot.published, slot.published_at = signature, now
        self.events.publish(
            "server.checked",
            server=slot.server_id,
            ok=result.ok,
            state=status.state.value,
            latency=result.latency,
            http_status=result.http_status,
            queue_remaining=result.queue_remaining,
            error=result.error,
        )

    # -- passive input -----------------------------------------------------------------------

    def observe_failure(self, server_id: str, kind: UpstreamErrorKind | str, detail: str) -> None:
        """Feed a failure seen on proxied traffic (see :class:`PassiveHealth`)."""
        slot = self._slots.get(server_id)
        if slot is None or not self._running or self._status(slot) is None:
            return
        verdict = slot.tracker.observe_failure(kind, detail, self._passive(), self._settings())
        if verdict.recheck:
            slot.passive_seq += 1
        self._passive_verdict(slot, verdict)

    def observe_stall(self, server_id: str, waited: float) -> None:
        """Feed a proxied request that has waited ``waited`` seconds with no answer.

        New evidence against an ``up`` server starts an immediate probe, unless one is in flight
        (that one then confirms or clears it); see :meth:`HealthTracker.observe_stall`.
        """
        slot = self._slots.get(server_id)
        if slot is None or not self._running or self._status(slot) is None:
            return
        settings = self._settings()
        verdict = slot.tracker.observe_stall(
            waited, self._clock() - waited, self._passive(), settings
        )
        if not verdict.recheck:
            return
        log.info(
            "backend suspected hung, probing",
            server=server_id,
            waited=round(waited, 3),
            timeout=settings.timeout,
            probe_in_flight=slot.probing,
        )
        if not slot.probing:
            slot.wake.set()

    def observe_success(self, server_id: str) -> None:
        """Feed a healthy exchange seen on proxied traffic."""
        slot = self._slots.get(server_id)
        if slot is None or not self._running or self._status(slot) is None:
            return
        self._passive_verdict(slot, slot.tracker.observe_success())

    def _passive_verdict(self, slot: _Slot, verdict: PassiveVerdict) -> None:
        status = self._registry.find_status(slot.server_id)
        if status is not None:
            status.checking = slot.tracker.transitioning
        if verdict.transition is not None:
            self._transition(verdict.transition)
        if verdict.recheck:
            slot.wake.set()


class PassiveHealth(TrafficObserver):
    """Passive health: the proxy's traffic reports, fed to a :class:`HealthChecker`.

    Register it on the proxy's :class:`~gateway.proxy.observer.ObserverChain`. Cheap and never
    raises (it runs on the hot path); probes it asks for run in the checker's own loops.
    """

    def __init__(self, checker: HealthChecker) -> None:
        self._checker = checker

    def upstream_failed(self, backend: str, kind: UpstreamErrorKind, detail: str) -> None:
        """Count a refused, reset or timed-out exchange, or a 5xx answer."""
        try:
            self._checker.observe_failure(backend, kind, detail)
        except Exception:  # the observer contract: never break the proxy
            log.exception("passive health failed", server=backend)

    def upstream_succeeded(self, backend: str) -> None:
        """Count a healthy exchange."""
        try:
            self._checker.observe_success(backend)
        except Exception:
            log.exception("passive health failed", server=backend)

    def upstream_stalled(self, backend: str, waited: float) -> None:
        """Suspect a backend hung when a request waits past the health timeout (probe now)."""
        try:
            self._checker.observe_stall(backend, waited)
        except Exception:
            log.exception("passive health failed", server=backend)


# -- failover ---------------------------------------------------------------------------------


class FailoverController:
    """Move the serving server according to :class:`FailoverPolicy`.

    Re-evaluates after every ``server.state``, ``config.applied`` and ``serving.changed`` event,
    and on a timer while a failback hold runs or while only ``busy(serving)`` delays a failback.
    ``busy`` (a prompt is running on that server) may be replaced at any time by assigning
    :attr:`busy`; call :meth:`poke` when it turns False so a pending failback happens at once.
    """

    def __init__(
        self,
        registry: ServerRegistry,
        *,
        busy: Callable[[str], bool] | None = None,
        policy: FailoverPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self.busy: Callable[[str], bool] = busy or never_busy
        self.policy = policy or FailoverPolicy()
        self._clock = clock
        self._since: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listening = False
        self._started_at = clock()

    async def start(self) -> None:
        """Start reacting to state changes (idempotent)."""
        if self._task is not None and not self._task.done():
            return
        self._started_at = self._clock()
        if not self._listening:
            self._registry.events.add_listener(self._on_event)
            self._listening = True
        self._wake.set()
        self._task = spawn(self._run(), name="failover-controller")

    async def stop(self) -> None:
        """Stop reacting (the serving server stays where it is)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def __aenter__(self) -> FailoverController:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def poke(self) -> None:
        """Re-evaluate soon (e.g. the job layer saw the last prompt on a server finish)."""
        self._wake.set()

    def _on_event(self, event: Event) -> None:
        if event.kind == "server.state":
            self._since[event.data["server"]] = self._clock()
        if event.kind in ("server.state", "config.applied", "serving.changed"):
            self._wake.set()

    def view(self) -> FailoverView:
        """Return the current input of the policy."""
        registry = self._registry
        known = {s.id for s in registry.servers}
        for server_id in list(self._since):
            if server_id not in known:
                del self._since[server_id]
        since = {sid: self._since.get(sid, self._started_at) for sid in known}
        failover = registry.config.failover
        return FailoverView(
            preferred=registry.preferred_id,
            serving=registry.serving_id,
            servers=server_views(registry, since),
            auto_switch=failover.auto_switch,
            failback=failover.failback,
            failback_hold=failover.failback_hold,
            busy=self._safe_busy,
        )

    def _safe_busy(self, server_id: str) -> bool:
        try:
            return bool(self.busy(server_id))
        except Exception:  # unsure means busy: a failback must never cut a running prompt
            log.exception("busy check failed", server=server_id)
            return True

    def evaluate(self) -> Switch | None:
        """Decide now and apply the decision; return it (None: no change)."""
        decision = self.policy.decide(self.view(), self._clock())
        if decision is None:
            return None
        previous = self._registry.serving_id
        if decision.kind == "failback":
            log.info("failback", from_=previous, to=decision.to, reason=decision.reason)
        else:
            log.warning(decision.kind, from_=previous, to=decision.to, reason=decision.reason)
        self._registry.set_serving(decision.to, reason=decision.reason, kind=decision.kind)
        return decision

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                self.evaluate()
                delay = self.policy.next_check(self.view(), self._clock())
            except Exception:  # keep deciding even if one evaluation hits a bug
                log.exception("failover evaluation failed")
                delay = self.policy.busy_poll
            if self._wake.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()


def health_cleanup_ctx(
    checker: HealthChecker, controller: FailoverController | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return an aiohttp ``cleanup_ctx`` entry that runs the checker (and controller)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if controller is not None:
                await stack.enter_async_context(controller)
            await stack.enter_async_context(checker)
            yield

    return ctx
