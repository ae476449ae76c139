"""Alert webhooks: tell people when servers fail, traffic moves, or prompts are lost.

Alerts are derived from :class:`~gateway.events.EventBus` events (see :mod:`gateway.registry` and
:mod:`gateway.routing.failover` for who publishes them):

* ``server_down``: ``server.state`` entering ``down`` (from ``up``, or from ``unknown``: a server
  found down when the gateway starts is reported too);
* ``server_up``: ``server.state`` entering ``up`` *after* ``down`` (not the first verdict at start);
* ``failover``: ``serving.changed`` of kind ``failover`` (the serving server failed and traffic
  moved to another one);
* ``all_down``: every enabled server is ``down`` (at least one is enabled); once per episode;
* ``recovered``: during such an episode, the serving server is ``up`` again (it came back, or
  traffic moved to the first server back); it ends the episode. With ``auto_switch`` off, a
  server coming back that is not serving does not count: nothing is served until an admin acts;
* ``prompt_lost``: ``prompt.lost`` (a prompt given up with its backend).

Delivery contract (the lessons of SaladTechnologies/comfyui-api#103, a webhook crashing the
service):

* the publisher never waits: the bus listener turns an event into alerts and appends each to the
  bounded queue of every webhook that wants it (no I/O, O(1)); a full queue drops its *oldest*
  alert, counts it, and the count goes out with the next message;
* one background worker per webhook (:func:`gateway.tasks.spawn`), so a slow or dead receiver
  only delays its own alerts;
* rate limit: at most ``max_per_minute`` messages per webhook in any 60 s window; alerts that
  pile up while the window is full go out together as one ``digest`` message;
* a message is POSTed as JSON with a per-attempt timeout, and retried on connection errors,
  timeouts, 408, 425, 429 and 5xx with exponential backoff and full jitter (``Retry-After`` is
  honoured up to ``backoff_max``), at most ``max_attempts`` times; other answers are final;
* nothing raises out of the listener or a worker; failures are logged with the webhook's *name*,
  the HTTP status or the error class, never the URL or its headers (they hold tokens);
* on shutdown the workers get ``drain_timeout`` seconds to send what is queued, then they are
  cancelled and awaited, and the HTTP session is closed: no task is left behind;
* on ``config.applied`` the webhooks are reconciled: an unchanged webhook keeps its worker and
  queue, others are started or stopped.

Payload formats (``format`` of a webhook):

* ``generic``: ``{"event", "severity", "summary", "server", "server_name", "reason",
  "timestamp" (ISO 8601, UTC), "ts" (Unix time), "serving", "preferred", "details",
  "gateway": {"instance", "version"}, "dropped"}``; a digest has ``"event": "digest"`` and the
  individual alerts (same shape, without ``gateway``/``dropped``) in ``"alerts"``;
* ``slack``: ``{"text": ...}`` (Slack incoming webhooks; ``&<>`` escaped);
* ``discord``: ``{"content": ..., "allowed_mentions": {"parse": []}}`` (no ``@everyone`` pings
  from a reason text; at most 2000 characters).

Wiring (in ``create_app``, after ``metrics`` exists)::

    setup_alerts(app, registry, metrics.registry)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.config.models import ALERT_EVENTS, AlertSettings, WebhookConfig
from gateway.events import Event
from gateway.registry import ServerRegistry, ServerState
from gateway.tasks import cancel_and_wait, spawn

__all__ = [
    "ALERTS",
    "ALERT_EVENTS",
    "Alert",
    "AlertDetector",
    "AlertManager",
    "AlertMetricsCollector",
    "WebhookStats",
    "WebhookWorker",
    "alerts_cleanup_ctx",
    "backoff_delay",
    "render",
    "setup_alerts",
]

log = structlog.get_logger("gateway.alerts")

SEVERITY: dict[str, str] = {
    "server_down": "warning",
    "server_up": "info",
    "failover": "warning",
    "all_down": "critical",
    "recovered": "info",
    "prompt_lost": "warning",
}
_SEVERITY_ORDER = ("info", "warning", "critical")
_ICON = {
    "info": "\N{LARGE GREEN CIRCLE}",
    "warning": "\N{LARGE ORANGE CIRCLE}",
    "critical": "\N{POLICE CARS REVOLVING LIGHT}",
}
RETRY_STATUSES = frozenset({408, 425, 429})
"""Statuses retried besides 5xx (request timeout, too early, too many requests)."""
WINDOW = 60.0
"""The rate limit's sliding window, seconds."""
DIGEST_LINES = 20
"""Alerts listed one per line in a Slack/Discord digest; the rest are counted."""
TEXT_LIMIT = {"slack": 3500, "discord": 2000}


# -- alerts -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """One thing worth telling a human about."""

    event: str
    """One of :data:`ALERT_EVENTS`."""
    summary: str
    ts: float
    server: str | None = None
    server_name: str | None = None
    reason: str | None = None
    serving: str | None = None
    preferred: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        """Return ``info``, ``warning`` or ``critical``."""
        return SEVERITY.get(self.event, "warning")

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form (the generic payload without its envelope)."""
        return {
            "event": self.event,
            "severity": self.severity,
            "summary": self.summary,
            "server": self.server,
            "server_name": self.server_name,
            "reason": self.reason,
            "timestamp": iso_time(self.ts),
            "ts": self.ts,
            "serving": self.serving,
            "preferred": self.preferred,
            "details": self.details,
        }


def iso_time(ts: float) -> str:
    """Return ``ts`` (Unix time) as ISO 8601 UTC with milliseconds, e.g. ``...T12:00:00.000Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlertDetector:
    """Turn bus events into :class:`Alert` values (see the module docstring for the rules).

    Synchronous and cheap; it reads the :class:`ServerRegistry` (already updated when the event
    is published) and remembers only whether an all-down episode is running.
    """

    def __init__(self, registry: ServerRegistry) -> None:
        self._registry = registry
        self.all_down = False
        """True between an ``all_down`` alert and the matching ``recovered``."""

    def feed(self, event: Event) -> list[Alert]:
        """Return the alerts ``event`` raises (often none)."""
        data = event.data
        alerts: list[Alert] = []
        if event.kind == "server.state":
            state, previous = data.get("state"), data.get("previous")
            if state == ServerState.DOWN.value:
                alerts.append(self._server_alert("server_down", event, "is down"))
            elif state == ServerState.UP.value and previous == ServerState.DOWN.value:
                alerts.append(self._server_alert("server_up", event, "is up again"))
            alerts.extend(self._episode(event))
        elif event.kind == "serving.changed":
            if data.get("kind") == "failover":
                alerts.append(self._failover(event))
            alerts.extend(self._episode(event))
        elif event.kind == "config.applied":
            alerts.extend(self._episode(event))
        elif event.kind == "prompt.lost":
            alerts.append(self._prompt_lost(event))
        return alerts

    # -- helpers -------------------------------------------------------------------------

    def _name(self, server_id: Any) -> str | None:
        server = self._registry.server(server_id) if isinstance(server_id, str) else None
        return server.name if server is not None else None

    def _label(self, server_id: Any) -> str:
        name = self._name(server_id)
        if not server_id:
            return "no server"
        return f"{name} ({server_id})" if name and name != server_id else str(server_id)

    def _alert(self, event_name: str, event: Event, summary: str, **fields: Any) -> Alert:
        registry = self._registry
        fields.setdefault("serving", registry.serving_id)
        fields.setdefault("preferred", registry.preferred_id)
        server = fields.get("server")
        fields.setdefault("server_name", self._name(server))
        return Alert(event=event_name, summary=summary, ts=event.ts, **fields)

    def _server_alert(self, name: str, event: Event, verb: str) -> Alert:
        data = event.data
        server, reason = data.get("server"), _text(data.get("reason"))
        summary = f"Server {self._label(server)} {verb}" + (f": {reason}" if reason else "")
        return self._alert(
            name,
            event,
            summary,
            server=server,
            reason=reason,
            details={"state": data.get("state"), "previous": data.get("previous")},
        )

    def _failover(self, event: Event) -> Alert:
        data = event.data
        old, new, reason = data.get("previous"), data.get("serving"), _text(data.get("reason"))
        summary = f"Failover: traffic moved from {self._label(old)} to {self._label(new)}"
        return self._alert(
            "failover",
            event,
            summary + (f": {reason}" if reason else ""),
            server=old,
            reason=reason,
            serving=new,
            preferred=data.get("preferred"),
            details={"from_server": old, "to_server": new, "kind": data.get("kind")},
        )

    def _prompt_lost(self, event: Event) -> Alert:
        data = event.data
        server, reason = data.get("server"), _text(data.get("reason"))
        prompt_id = data.get("prompt_id")
        summary = f"Prompt {prompt_id} was lost with server {self._label(server)}"
        return self._alert(
            "prompt_lost",
            event,
            summary + (f": {reason}" if reason else ""),
            server=server,
            reason=reason,
            details={"prompt_id": prompt_id},
        )

    def _episode(self, event: Event) -> list[Alert]:
        registry = self._registry
        enabled = [s.id for s in registry.servers if s.enabled]
        statuses = registry.statuses()
        everything_down = bool(enabled) and all(
            (st := statuses.get(sid)) is not None and st.state is ServerState.DOWN
            for sid in enabled
        )
        if not self.all_down:
            if not everything_down:
                return []
            self.all_down = True
            return [
                self._alert(
                    "all_down",
                    event,
                    f"All {len(enabled)} enabled server(s) are down: clients get 503 until one "
                    "comes back",
                    reason=_text(event.data.get("reason")),
                    details={"servers": enabled},
                )
            ]
        if not enabled:
            self.all_down = False  # nothing left to serve with: a configuration, not an outage
            return []
        serving = registry.serving_id
        if serving is None or not registry.is_up(serving):
            return []
        self.all_down = False
        return [
            self._alert(
                "recovered",
                event,
                f"Recovered: {self._label(serving)} is serving again after every server was down",
                server=serving,
                reason=_text(event.data.get("reason")),
            )
        ]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# -- payloads ---------------------------------------------------------------------------------


def render(
    alerts: Sequence[Alert],
    fmt: str,
    *,
    instance: str,
    version: str = __version__,
    dropped: int = 0,
    rate: int | None = None,
) -> dict[str, Any]:
    """Return the JSON body of one message carrying ``alerts`` (one, or several: a digest).

    ``dropped``: alerts lost (queue full) since the previous message; ``rate``: the webhook's
    ``max_per_minute``, mentioned in a digest's summary.
    """
    if not alerts:
        raise ValueError("no alerts to render")
    if fmt == "generic":
        return _generic(alerts, instance=instance, version=version, dropped=dropped, rate=rate)
    text = _text_message(alerts, fmt, instance=instance, version=version, dropped=dropped)
    if fmt == "slack":
        return {"text": text}
    if fmt == "discord":
        return {"content": text, "allowed_mentions": {"parse": []}}
    raise ValueError(f"unknown webhook format {fmt!r}")


def _generic(
    alerts: Sequence[Alert], *, instance: str, version: str, dropped: int, rate: int | None
) -> dict[str, Any]:
    gateway = {"instance": instance, "version": version}
    if len(alerts) == 1:
        return alerts[0].as_dict() | {"gateway": gateway, "dropped": dropped}
    last = alerts[-1]
    limit = f" (rate limit: {rate} per minute)" if rate else ""
    return {
        "event": "digest",
        "severity": _worst(alerts),
        "summary": f"{len(alerts)} alerts{limit}: " + "; ".join(a.event for a in alerts),
        "server": None,
        "server_name": None,
        "reason": None,
        "timestamp": iso_time(last.ts),
        "ts": last.ts,
        "serving": last.serving,
        "preferred": last.preferred,
        "details": {"count": len(alerts)},
        "alerts": [a.as_dict() for a in alerts],
        "gateway": gateway,
        "dropped": dropped,
    }


def _worst(alerts: Iterable[Alert]) -> str:
    return max((a.severity for a in alerts), key=_SEVERITY_ORDER.index)


def _text_message(
    alerts: Sequence[Alert], fmt: str, *, instance: str, version: str, dropped: int
) -> str:
    bold = "*" if fmt == "slack" else "**"

    def esc(text: str) -> str:
        if fmt == "slack":
            return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return text

    def line(alert: Alert) -> str:
        return f"{_ICON[alert.severity]} {bold}{alert.event}{bold} {esc(alert.summary)}"

    last = alerts[-1]
    if len(alerts) == 1:
        lines = [line(last)]
    else:
        lines = [f"{_ICON[_worst(alerts)]} {bold}{len(alerts)} alerts{bold}"]
        lines += ["\N{BULLET} " + line(a) for a in alerts[:DIGEST_LINES]]
        if len(alerts) > DIGEST_LINES:
            lines.append(f"\N{HORIZONTAL ELLIPSIS} and {len(alerts) - DIGEST_LINES} more")
    if dropped:
        lines.append(f"({dropped} earlier alert(s) dropped: the queue was full)")
    lines.append(
        esc(
            f"gateway {instance} v{version} \N{MIDDLE DOT} serving: {last.serving or '-'} "
            f"\N{MIDDLE DOT} preferred: {last.preferred or '-'} \N{MIDDLE DOT} "
            f"{iso_time(last.ts)}"
        )
    )
    text = "\n".join(lines)
    limit = TEXT_LIMIT.get(fmt, 3500)
    return text if len(text) <= limit else text[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"


# -- delivery ---------------------------------------------------------------------------------


def backoff_delay(
    retry: int, base: float, cap: float, rng: random.Random, retry_after: float | None = None
) -> float:
    """Return the wait before retry number ``retry`` (1-based): full jitter, capped.

    The ceiling doubles per retry (``base``, ``2*base``, ... up to ``cap``) and the wait is drawn
    uniformly in ``[ceiling/2, ceiling]``; a receiver's ``Retry-After`` raises it (up to ``cap``).
    """
    ceiling = min(cap, base * 2 ** (retry - 1))
    delay = rng.uniform(ceiling / 2, ceiling)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, cap))
    return delay


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date: ignored, the backoff applies


def describe_error(exc: BaseException) -> str:
    """Return a log-safe description of a delivery error (never the URL: it holds a token)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return f"{type(exc).__name__}: {os_error.strerror}"
    return type(exc).__name__


@dataclass
class WebhookStats:
    """Counters of one webhook (kept across config reloads, exported to Prometheus)."""

    sent: int = 0
    """Messages delivered (a digest counts once)."""
    failed: int = 0
    """Messages given up after their last attempt."""
    retries: int = 0
    """Attempts beyond the first."""
    dropped: int = 0
    """Alerts dropped because the queue was full."""
    alerts: int = 0
    """Alerts delivered (each alert of a digest counts)."""


Sleep = Callable[[float], Awaitable[None]]


class WebhookWorker:
    """The queue and background sender of one webhook (see the module docstring)."""

    def __init__(
        self,
        name: str,
        config: WebhookConfig,
        *,
        session: Callable[[], aiohttp.ClientSession],
        stats: WebhookStats,
        instance: str,
        queue_size: int = 100,
        version: str = __version__,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.name = name
        self.config = config
        self.stats = stats
        self.instance = instance
        self.queue_size = queue_size
        self.version = version
        self._session = session
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self._pending: deque[Alert] = deque()
        self._wake = asyncio.Event()
        self._sent_at: deque[float] = deque()
        self._unreported_drops = 0
        self._busy = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<WebhookWorker {self.name} format={self.config.format} queued={self.queued}>"

    @property
    def queued(self) -> int:
        """Return how many alerts wait to be sent."""
        return len(self._pending)

    @property
    def idle(self) -> bool:
        """Return True when nothing is queued nor being sent."""
        return not self._pending and not self._busy

    async def wait_idle(self) -> None:
        """Wait until everything queued has been sent or given up."""
        await self._idle.wait()

    def wants(self, alert: Alert) -> bool:
        """Return True when this webhook subscribed to ``alert.event``."""
        return alert.event in self.config.events

    def offer(self, alert: Alert) -> None:
        """Queue ``alert`` (never blocks; drops and counts the oldest when full)."""
        if len(self._pending) >= self.queue_size:
            self._pending.popleft()
            self.stats.dropped += 1
            self._unreported_drops += 1
            log.warning("alert queue full: oldest alert dropped", webhook=self.name)
        self._pending.append(alert)
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        """Start the background sender (idempotent)."""
        if self.task is None or self.task.done():
            self.task = spawn(self._run(), name=f"alerts-{self.name}")

    async def stop(self) -> None:
        """Cancel the sender and wait for it (queued alerts are discarded)."""
        task, self.task = self.task, None
        await cancel_and_wait(task)

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._window_wait()
            if wait > 0:
                # Over the rate limit: let alerts pile up, then send them as one digest.
                await self._sleep(wait)
                batch = list(self._pending)
                self._pending.clear()
            else:
                batch = [self._pending.popleft()]
            self._busy = True
            try:
                await self._send(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad message kill the worker
                self.stats.failed += 1
                log.exception("alert delivery crashed", webhook=self.name)
            finally:
                self._busy = False

    def _window_wait(self) -> float:
        now = self._clock()
        while self._sent_at and now - self._sent_at[0] >= WINDOW:
            self._sent_at.popleft()
        if len(self._sent_at) < self.config.max_per_minute:
            return 0.0
        return max(0.0, self._sent_at[0] + WINDOW - now)

    async def _send(self, batch: list[Alert]) -> None:
        dropped, self._unreported_drops = self._unreported_drops, 0
        payload = render(
            batch,
            self.config.format,
            instance=self.instance,
            version=self.version,
            dropped=dropped,
            rate=self.config.max_per_minute,
        )
        self._sent_at.append(self._clock())
        events = [a.event for a in batch]
        if await self.deliver(payload):
            self.stats.sent += 1
            self.stats.alerts += len(batch)
            log.info("alert sent", webhook=self.name, events=events)
        else:
            self.stats.failed += 1
            log.error("alert not delivered: giving up", webhook=self.name, events=events)

    async def deliver(self, payload: dict[str, Any]) -> bool:
        """POST ``payload`` with retries; return True once a 2xx answer came back."""
        config = self.config
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {k: v.get_secret_value() for k, v in config.headers.items()}
        headers["Content-Type"] = "application/json"
        headers.setdefault("User-Agent", f"comfyui-gateway/{self.version}")
        url = config.url.get_secret_value()
        timeout = aiohttp.ClientTimeout(total=config.timeout)
        for attempt in range(1, config.max_attempts + 1):
            retry_after: float | None = None
            try:
                async with self._session().post(
                    url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as resp:
                    await resp.read()
                    status = resp.status
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                problem, retryable = describe_error(exc), not isinstance(exc, ValueError)
            else:
                if 200 <= status < 300:
                    return True
                problem = f"HTTP {status}"
                retryable = status >= 500 or status in RETRY_STATUSES
            if not retryable or attempt == config.max_attempts:
                log.warning(
                    "alert delivery failed",
                    webhook=self.name,
                    attempt=attempt,
                    problem=problem,
                    final=True,
                )
                return False
            delay = backoff_delay(
                attempt, config.backoff, config.backoff_max, self._rng, retry_after
            )
            log.info(
                "alert delivery failed: will retry",
                webhook=self.name,
                attempt=attempt,
                problem=problem,
                retry_in=round(delay, 3),
            )
            self.stats.retries += 1
            await self._sleep(delay)
        return False  # pragma: no cover - the loop always returns


# -- the manager ------------------------------------------------------------------------------


class AlertManager:
    """Own the detector, one :class:`WebhookWorker` per configured webhook, and their session.

    ``registry``: the gateway's :class:`ServerRegistry` (its bus, its config's ``alerts``
    section, and the server states the detector reads). ``metrics_registry``: where to export
    the delivery counters (see :class:`AlertMetricsCollector`), or None.
    """

    def __init__(
        self,
        registry: ServerRegistry,
        *,
        metrics_registry: CollectorRegistry | None = None,
        drain_timeout: float = 2.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.registry = registry
        self.detector = AlertDetector(registry)
        self.drain_timeout = drain_timeout
        self.workers: dict[str, WebhookWorker] = {}
        self.stats: dict[str, WebhookStats] = {}
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._settings: AlertSettings | None = None
        self._retiring: set[WebhookWorker] = set()
        self._running = False
        self._listening = False
        if metrics_registry is not None:
            metrics_registry.register(AlertMetricsCollector(self))

    @property
    def settings(self) -> AlertSettings:
        """Return the ``alerts`` section in force."""
        return self.registry.config.alerts

    @property
    def instance(self) -> str:
        """Return this gateway's name in messages (``alerts.instance``, else the host name)."""
        return self.settings.instance or socket.gethostname()

    def session(self) -> aiohttp.ClientSession:
        """Return the HTTP session of the deliveries (created by :meth:`start`)."""
        if self._session is None or self._session.closed:
            raise RuntimeError("AlertManager is not started")
        return self._session

    async def start(self) -> None:
        """Create the session, start the workers and listen to the bus (idempotent)."""
        if self._running:
            return
        self._session = aiohttp.ClientSession(
            trust_env=False,
            connector=aiohttp.TCPConnector(limit=32),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._running = True
        if not self._listening:
            self.registry.events.add_listener(self._on_event)
            self._listening = True
        self._reconcile()

    async def stop(self) -> None:
        """Give the workers ``drain_timeout`` seconds to flush, cancel them, close the session."""
        if not self._running:
            return
        self._running = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), self.drain_timeout)
        workers = [*self.workers.values(), *self._retiring]
        self.workers.clear()
        self._retiring.clear()
        for worker in workers:
            await worker.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _drained(self) -> None:
        for worker in list(self.workers.values()):
            await worker.wait_idle()

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: start with the app, stop (drain, cancel) with it."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def notify(self, alert: Alert) -> int:
        """Queue ``alert`` for every webhook that wants it; return how many do."""
        targets = [w for w in self.workers.values() if w.wants(alert)]
        for worker in targets:
            worker.offer(alert)
        return len(targets)

    def _on_event(self, event: Event) -> None:
        if not self._running:
            return
        try:
            if event.kind == "config.applied":
                self._reconcile()
            for alert in self.detector.feed(event):
                log.info("alert", alert=alert.event, summary=alert.summary)
                self.notify(alert)
        except Exception:  # the publisher must never see an alerting problem
            log.exception("alerting failed", kind=event.kind)

    def _reconcile(self) -> None:
        settings = self.settings
        if settings == self._settings:
            return
        self._settings = settings
        wanted = dict(zip(settings.webhook_names(), settings.webhooks, strict=True))
        for name, worker in list(self.workers.items()):
            if wanted.get(name) != worker.config or worker.queue_size != settings.queue_size:
                del self.workers[name]
                self._retire(worker)
        for name in list(self.stats):
            if name not in wanted:
                del self.stats[name]
        instance = self.instance
        for name, config in wanted.items():
            if name in self.workers:
                self.workers[name].instance = instance
                continue
            worker = WebhookWorker(
                name,
                config,
                session=self.session,
                stats=self.stats.setdefault(name, WebhookStats()),
                instance=instance,
                queue_size=settings.queue_size,
                rng=self._rng,
                clock=self._clock,
                sleep=self._sleep,
            )
            self.workers[name] = worker
            worker.start()
        log.info("alert webhooks configured", webhooks=list(wanted))

    def _retire(self, worker: WebhookWorker) -> None:
        task = worker.task
        if task is None or task.done():
            return
        self._retiring.add(worker)
        task.cancel()
        task.add_done_callback(lambda _t: self._retiring.discard(worker))


class AlertMetricsCollector(Collector):
    """Export the delivery counters of every configured webhook, read at scrape time.

    ``alert_messages_total{webhook,result=sent|failed}``, ``alert_retries_total{webhook}``,
    ``alerts_dropped_total{webhook}`` and ``alert_queue_length{webhook}``. The label is the
    webhook's name, never its URL. Every configured webhook is exported (zeros included).
    """

    PREFIX = "comfyui_gateway_"

    def __init__(self, manager: AlertManager) -> None:
        self.manager = manager

    def describe(self) -> Iterable[Metric]:
        """Return the families without samples (for the registry's clash detection)."""
        return list(self._families())

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily, Any, Any]:
        p = self.PREFIX
        return (
            CounterMetricFamily(
                f"{p}alert_messages",
                "Alert webhook messages, by result: sent (2xx) or failed (gave up).",
                labels=["webhook", "result"],
            ),
            CounterMetricFamily(
                f"{p}alert_retries",
                "Alert webhook delivery attempts beyond the first.",
                labels=["webhook"],
            ),
            CounterMetricFamily(
                f"{p}alerts_dropped",
                "Alerts dropped because the webhook's queue was full.",
                labels=["webhook"],
            ),
            GaugeMetricFamily(
                f"{p}alert_queue_length",
                "Alerts waiting to be sent to the webhook.",
                labels=["webhook"],
            ),
        )

    def collect(self) -> Iterable[Metric]:
        """Return the families filled from the manager's current state."""
        messages, retries, dropped, queued = self._families()
        manager = self.manager
        for name in manager.settings.webhook_names():
            stats = manager.stats.get(name) or WebhookStats()
            worker = manager.workers.get(name)
            messages.add_metric([name, "sent"], stats.sent)
            messages.add_metric([name, "failed"], stats.failed)
            retries.add_metric([name], stats.retries)
            dropped.add_metric([name], stats.dropped)
            queued.add_metric([name], worker.queued if worker is not None else 0)
        return [messages, retries, dropped, queued]


ALERTS: web.AppKey[AlertManager] = web.AppKey("alerts", AlertManager)


def alerts_cleanup_ctx(
    registry: ServerRegistry, metrics_registry: CollectorRegistry | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return a cleanup context running an :class:`AlertManager` for ``registry``."""
    return AlertManager(registry, metrics_registry=metrics_registry).context


def setup_alerts(
    app: web.Application,
    registry: ServerRegistry,
    metrics_registry: CollectorRegistry | None = None,
) -> AlertManager:
    """Wire alerting into ``app``: store the manager under :data:`ALERTS`, run it with the app."""
    manager = AlertManager(registry, metrics_registry=metrics_registry)
    app[ALERTS] = manager
    app.cleanup_ctx.append(manager.context)
    return manager
