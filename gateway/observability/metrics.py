"""Prometheus metrics for the gateway: one :class:`GatewayMetrics` per application.

Contract:

* every metric lives in the app's own :class:`~prometheus_client.CollectorRegistry` (never the
  process-global one), so several apps (tests) never collide;
* names follow Prometheus conventions: prefix ``comfyui_gateway_``, base units (``_seconds``,
  ``_bytes``), ``_total`` on counters, ``_info`` on metadata;
* labels are bounded: server id, normalised method, status class (``1xx``..``5xx``), route
  *group* (:func:`gateway.proxy.observer.route_group`), side/direction, and small enums. Never a
  raw path, prompt id, client id or file name;
* per-server state (``server_up``, ``serving``, ``preferred``, queue, latency, info) is read from
  the :class:`~gateway.registry.ServerRegistry` at scrape time by a custom collector: every
  configured server is always exported (a down server reads ``0``, never "missing"), removed
  servers disappear, new ones appear;
* traffic arrives through :class:`MetricsObserver` (a :class:`TrafficObserver` on the proxy's hot
  path: a dict lookup and a few increments per request), everything else through
  :meth:`GatewayMetrics.attach_events` (an :class:`EventBus` listener).

Wiring (in ``create_app``)::

    metrics = GatewayMetrics(servers=registry)
    metrics.attach_events(registry.events)
    observers.add(metrics.observer)
    app.router.add_get("/metrics", metrics_handler(metrics))  # before the catch-all route
"""

from __future__ import annotations

import contextlib
import platform
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp.typedefs import Handler
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.proxy.observer import TrafficObserver, UpstreamErrorKind, WsDirection, WsSide

if TYPE_CHECKING:
    from gateway.events import Event, EventBus
    from gateway.registry import ServerRegistry

__all__ = [
    "FAILOVER_KINDS",
    "HEALTH_CHECK_BUCKETS",
    "HTTP_DURATION_BUCKETS",
    "NO_SERVER",
    "PREFIX",
    "GatewayMetrics",
    "MetricsObserver",
    "ServerStateCollector",
    "metrics_handler",
]

PREFIX = "comfyui_gateway_"

NO_SERVER = "_none"
"""``server`` label value when no backend was involved (cannot collide: ids never start with _)."""

HTTP_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
HEALTH_CHECK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

FAILOVER_KINDS = frozenset({"switch", "failover", "failback", "recover"})
"""``kind`` label values of ``failovers_total``; anything else is counted as ``other``."""

_METHODS = {
    m: m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
}
_CODE_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
_UPSTREAM_KINDS = frozenset({"connect", "timeout", "reset", "status_5xx"})
_WS_SIDES = ("client", "upstream")
_WS_DIRECTIONS = ("to_client", "to_upstream")
_SERVER_LABELS = frozenset({"server", "from_server", "to_server"})
_ENUM_VALUE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
_STATES = ("up", "down", "unknown")


def _code_class(status: int) -> str:
    cls = status // 100
    return _CODE_CLASSES[cls] if 0 < cls < 6 else "other"


def _enum(value: Any) -> str:
    """Return ``value`` when it looks like a code-defined enum member, else ``other``."""
    return value if isinstance(value, str) and _ENUM_VALUE.match(value) else "other"


def _server(value: Any) -> str:
    return value if isinstance(value, str) and value else NO_SERVER


class WsTrafficCollector(Collector):
    """``websocket_messages_total`` and ``websocket_message_bytes_total`` by direction.

    The relay reports every message (two per round trip); a prometheus ``Counter`` takes a
    lock per increment, which was a seventh of the relay's CPU. The counts are plain integers
    (one event loop updates them) exported as counters when the registry is collected.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self.messages: dict[str, int] = dict.fromkeys(_WS_DIRECTIONS, 0)
        self.bytes: dict[str, int] = dict.fromkeys(_WS_DIRECTIONS, 0)

    def collect(self) -> Iterable[Metric]:
        """Yield the two counter families."""
        messages = CounterMetricFamily(
            f"{self._prefix}websocket_messages",
            "Websocket messages relayed, by direction.",
            labels=["direction"],
        )
        sizes = CounterMetricFamily(
            f"{self._prefix}websocket_message_bytes",
            "Websocket payload bytes relayed, by direction.",
            labels=["direction"],
        )
        for direction in _WS_DIRECTIONS:
            messages.add_metric([direction], self.messages[direction])
            sizes.add_metric([direction], self.bytes[direction])
        return [messages, sizes]


class ServerStateCollector(Collector):
    """Export the live per-server view of a :class:`ServerRegistry` at scrape time.

    Series (all ``{server}``, one per configured server, disabled ones included):
    ``server_up`` (1 when enabled and its last verdict is up, else 0), ``server_enabled``,
    ``server_state{state}`` (one-hot over up/down/unknown), ``server_info{name,url}``,
    ``serving`` and ``preferred`` (0/1), and when known ``server_queue_length`` and
    ``server_latency_seconds`` (last health-check round trip, seconds).
    """

    def __init__(self, servers: ServerRegistry | None = None) -> None:
        self.servers = servers

    def describe(self) -> Iterable[Metric]:
        """Return the families (without samples) so the registry can detect name clashes."""
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        p = PREFIX
        yield GaugeMetricFamily(
            f"{p}server_up",
            "Whether the server is enabled and healthy (1) or not (0).",
            labels=["server"],
        )
        yield GaugeMetricFamily(
            f"{p}server_enabled",
            "Whether the server is enabled in the configuration.",
            labels=["server"],
        )
        yield GaugeMetricFamily(
            f"{p}server_state",
            "Health state of the server, one-hot over up/down/unknown.",
            labels=["server", "state"],
        )
        yield InfoMetricFamily(
            f"{p}server", "Configured server: display name and base URL.", labels=["server"]
        )
        yield GaugeMetricFamily(
            f"{p}serving", "Whether the server is the one traffic goes to now.", labels=["server"]
        )
        yield GaugeMetricFamily(
            f"{p}preferred", "Whether the server is the admin's preferred one.", labels=["server"]
        )
        yield GaugeMetricFamily(
            f"{p}server_queue_length",
            "Prompts running or pending on the server, from its last health check.",
            labels=["server"],
        )
        yield GaugeMetricFamily(
            f"{p}server_latency_seconds",
            "Round trip of the server's last health check.",
            labels=["server"],
        )

    def collect(self) -> Iterable[Metric]:
        """Return the families filled from the registry's current state."""
        up, enabled, state, info, serving, preferred, queue, latency = self._families()
        servers = self.servers
        if servers is None:
            return [up, enabled, state, info, serving, preferred, queue, latency]
        serving_id = servers.serving_id
        preferred_id = servers.preferred_id
        statuses = servers.statuses()
        for server in servers.servers:
            sid = server.id
            labels = [sid]
            up.add_metric(labels, 1.0 if servers.is_up(sid) else 0.0)
            enabled.add_metric(labels, 1.0 if server.enabled else 0.0)
            info.add_metric(labels, {"name": server.name, "url": server.url})
            serving.add_metric(labels, 1.0 if sid == serving_id else 0.0)
            preferred.add_metric(labels, 1.0 if sid == preferred_id else 0.0)
            status = statuses.get(sid)
            current = status.state.value if status is not None else "unknown"
            for name in _STATES:
                state.add_metric([sid, name], 1.0 if name == current else 0.0)
            if status is None:
                continue
            if status.queue_remaining is not None:
                queue.add_metric(labels, float(status.queue_remaining))
            if status.latency is not None:
                latency.add_metric(labels, float(status.latency))
        return [up, enabled, state, info, serving, preferred, queue, latency]


class GatewayMetrics:
    """Every gateway metric, registered in one per-app registry.

    ``registry``: where to register (a fresh :class:`CollectorRegistry` when None; never pass the
    global ``REGISTRY`` unless the process runs a single app). ``servers``: the registry read at
    scrape time for per-server gauges (also settable later with :meth:`track_servers`).
    ``process_metrics``: also register the ``process_*``, ``python_info`` and ``python_gc_*``
    collectors. ``created_series``: keep prometheus_client's ``*_created`` series (off by default,
    process-wide).

    Server-labelled counters are pre-initialised to 0 for every configured server (on
    :meth:`track_servers` and on ``config.applied``), so ``rate()`` never sees a missing series.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        servers: ServerRegistry | None = None,
        version: str = __version__,
        process_metrics: bool = True,
        created_series: bool = False,
    ) -> None:
        if not created_series:
            # ``*_created`` series double the series count for little use; this switch is
            # process-wide in prometheus_client (like PROMETHEUS_DISABLE_CREATED_SERIES).
            disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        p = PREFIX
        self._server_positions: dict[MetricWrapperBase, tuple[int, ...]] = {}
        self._series: dict[MetricWrapperBase, set[tuple[str, ...]]] = {}

        self.server_state = ServerStateCollector(servers)
        reg.register(self.server_state)
        if process_metrics:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)

        self.build_info = Info(f"{p}build", "Gateway build information.", registry=reg)
        self.build_info.info({"version": version, "python": platform.python_version()})

        # -- health (from events) ---------------------------------------------------------
        self.health_check_duration = self._histogram(
            "health_check_duration_seconds",
            "Duration of active health checks.",
            ["server"],
            HEALTH_CHECK_BUCKETS,
        )
        self.health_check_failures = self._counter(
            "health_check_failures_total", "Active health checks that failed.", ["server"]
        )
        self.state_changes = self._counter(
            "server_state_changes_total",
            "Health state changes, by the state entered (up, down, unknown).",
            ["server", "state"],
        )
        self.restarts = self._counter(
            "server_restarts_total", "Backend process restarts detected.", ["server"]
        )
        self.failovers = self._counter(
            "failovers_total",
            "Changes of the serving server, by kind (failover, failback, switch, recover).",
            ["from_server", "to_server", "kind"],
        )

        # -- proxied traffic (from MetricsObserver) ---------------------------------------
        self.http_requests = self._counter(
            "http_requests_total",
            "Proxied HTTP requests, by backend, method, route group and status class.",
            ["server", "method", "group", "code_class"],
        )
        self.http_duration = self._histogram(
            "http_request_duration_seconds",
            "Time to proxy an HTTP request, until the whole answer was sent.",
            ["server", "group"],
            HTTP_DURATION_BUCKETS,
        )
        self.http_request_bytes = self._counter(
            "http_request_bytes_total", "Request body bytes received from clients.", ["server"]
        )
        self.http_response_bytes = self._counter(
            "http_response_bytes_total", "Response body bytes sent to clients.", ["server"]
        )
        self.upstream_errors = self._counter(
            "upstream_errors_total",
            "Failures talking to a backend (connect, timeout, reset, status_5xx).",
            ["server", "kind"],
        )
        self.ws_connections = Gauge(
            f"{p}websocket_connections",
            "Open websockets, on the client side and on the upstream side of the relay.",
            ["side"],
            registry=reg,
        )
        self.ws_traffic = WsTrafficCollector(p)
        reg.register(self.ws_traffic)
        for side in _WS_SIDES:
            self.ws_connections.labels(side)

        # -- jobs (from events) -----------------------------------------------------------
        self.prompts_submitted = self._counter(
            "prompts_submitted_total", "Prompts submitted to a backend.", ["server"]
        )
        self.prompts_completed = self._counter(
            "prompts_completed_total", "Prompts seen completing on a backend.", ["server"]
        )
        self.prompts_resubmitted = self._counter(
            "prompts_resubmitted_total",
            "Prompts re-submitted to another backend after a failover (label: the new one).",
            ["server"],
        )
        self.prompts_lost = self._counter(
            "prompts_lost_total",
            "Prompts lost with their backend and not re-submitted (label: the failed one).",
            ["server"],
        )
        self.prompt_copies_cancelled = self._counter(
            "prompt_copies_cancelled_total",
            "Stale copies of moved prompts cancelled on a backend that came back.",
            ["server"],
        )
        self.upload_replications = self._counter(
            "upload_replications_total",
            "Cached input files copied to another backend before a prompt ran there.",
            ["server"],
        )
        self.upload_replicated_bytes = self._counter(
            "upload_replicated_bytes_total",
            "Bytes of cached input files copied to another backend.",
            ["server"],
        )
        self.upload_cache_bytes = Gauge(
            f"{p}upload_cache_bytes", "Bytes of uploaded inputs kept for failover.", registry=reg
        )
        self.upload_cache_entries = Gauge(
            f"{p}upload_cache_entries", "Uploaded inputs kept for failover.", registry=reg
        )

        # -- control plane (from events) ---------------------------------------------------
        self.config_reloads = Counter(
            f"{p}config_reloads",
            "Configurations applied (success) or rejected (failure).",
            ["result"],
            registry=reg,
        )
        self.config_reloads.labels("success")
        self.config_reloads.labels("failure")
        self.config_last_reload_success = Gauge(
            f"{p}config_last_reload_success_timestamp_seconds",
            "When a configuration was last applied, Unix time.",
            registry=reg,
        )
        self.config_last_reload_success.set_to_current_time()
        self.admin_changes = Counter(
            f"{p}admin_changes",
            "Changes made through the admin API, by action.",
            ["action"],
            registry=reg,
        )

        self._event_handlers: dict[str, Any] = dict(self._EVENT_HANDLERS)
        self.observer = MetricsObserver(self)
        """The :class:`TrafficObserver` to add to the proxy's ``ObserverChain``."""
        if servers is not None:
            self.track_servers(servers)

    # -- construction helpers -------------------------------------------------------------

    def _track(self, metric: MetricWrapperBase, labels: Sequence[str]) -> None:
        positions = tuple(i for i, name in enumerate(labels) if name in _SERVER_LABELS)
        if positions:
            self._server_positions[metric] = positions
            self._series[metric] = set()

    def _counter(self, name: str, doc: str, labels: list[str]) -> Counter:
        # prometheus_client appends ``_total`` itself; pass the base name.
        metric = Counter(PREFIX + name.removesuffix("_total"), doc, labels, registry=self.registry)
        self._track(metric, labels)
        return metric

    def _histogram(
        self, name: str, doc: str, labels: list[str], buckets: Sequence[float]
    ) -> Histogram:
        metric = Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=self.registry)
        self._track(metric, labels)
        return metric

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """Return ``metric.labels(*labels)``, remembering server-labelled series for pruning."""
        series = self._series.get(metric)
        if series is not None:
            series.add(labels)
        return metric.labels(*labels)

    # -- servers ----------------------------------------------------------------------------

    def track_servers(self, servers: ServerRegistry) -> None:
        """Read per-server gauges from ``servers`` at scrape time; zero its servers' counters."""
        self.server_state.servers = servers
        for server in servers.servers:
            self.init_server(server.id)

    def init_server(self, server_id: str) -> None:
        """Create the 0-valued series of the ``{server}``-only counters for ``server_id``."""
        for metric in (
            self.health_check_failures,
            self.restarts,
            self.http_request_bytes,
            self.http_response_bytes,
            self.prompts_submitted,
            self.prompts_completed,
            self.prompts_resubmitted,
            self.prompts_lost,
            self.prompt_copies_cancelled,
            self.upload_replications,
            self.upload_replicated_bytes,
        ):
            self.child(metric, server_id)

    def prune_servers(self, keep: Iterable[str]) -> None:
        """Drop every series labelled with a server not in ``keep`` (removed from the config)."""
        kept = set(keep) | {NO_SERVER}
        for metric, positions in self._server_positions.items():
            series = self._series[metric]
            gone = {s for s in series if any(s[i] not in kept for i in positions)}
            for labels in gone:
                with contextlib.suppress(KeyError):
                    metric.remove(*labels)
            series -= gone
        self.observer.forget()

    # -- events -----------------------------------------------------------------------------

    def attach_events(self, bus: EventBus, *, health_checks: bool = True) -> None:
        """Count gateway events from ``bus`` (a synchronous, non-raising listener).

        Mapping: ``server.state`` -> ``server_state_changes_total{server,state}``;
        ``serving.changed`` -> ``failovers_total{from_server,to_server,kind}``;
        ``server.checked`` -> ``health_check_duration_seconds`` (when it has a latency) and
        ``health_check_failures_total`` (when not ok); ``server.restarted`` ->
        ``server_restarts_total``; ``config.applied`` -> ``config_reloads_total{result=success}``
        and pruning of removed servers; ``config.failed`` -> ``config_reloads_total{result=
        failure}``; ``admin.change`` -> ``admin_changes_total{action}``; ``prompt.submitted``,
        ``prompt.completed``, ``prompt.resubmitted``, ``prompt.lost`` -> ``prompts_*_total
        {server}``; ``prompt.copy_cancelled`` -> ``prompt_copies_cancelled_total{server}``;
        ``upload.replicated`` -> ``upload_replications_total`` and
        ``upload_replicated_bytes_total{server}``; ``uploads.cache`` -> ``upload_cache_bytes``
        and ``upload_cache_entries``. Unknown kinds are ignored.

        ``server.checked`` is de-duplicated by the health checker (published on change, else
        at most once per ``health.interval``), so the health-check metrics it feeds are a
        sample. When the checker reports every probe through :meth:`observe_health_check`, pass
        ``health_checks=False`` so probes are not counted twice.
        """
        if not health_checks:
            self._event_handlers.pop("server.checked", None)
        bus.add_listener(self.handle_event)

    def observe_health_check(self, server_id: str, ok: bool, duration: float | None) -> None:
        """Record one active health probe of ``server_id`` (``duration`` in seconds, if known)."""
        if duration is not None:
            self.child(self.health_check_duration, server_id).observe(duration)
        if not ok:
            self.child(self.health_check_failures, server_id).inc()

    def handle_event(self, event: Event) -> None:
        """Update the metrics for one event (see :meth:`attach_events`); never raises."""
        handler = self._event_handlers.get(event.kind)
        if handler is None:
            return
        try:
            handler(self, event.data)
        except Exception:  # malformed event data must not break the publisher
            return

    def _on_server_state(self, data: dict[str, Any]) -> None:
        state = data.get("state")
        self.child(
            self.state_changes, _server(data.get("server")), state if state in _STATES else "other"
        ).inc()

    def _on_serving_changed(self, data: dict[str, Any]) -> None:
        kind = data.get("kind")
        self.child(
            self.failovers,
            _server(data.get("previous")),
            _server(data.get("serving")),
            kind if kind in FAILOVER_KINDS else "other",
        ).inc()

    def _on_server_checked(self, data: dict[str, Any]) -> None:
        latency = data.get("latency")
        self.observe_health_check(
            _server(data.get("server")),
            bool(data.get("ok")),
            latency if isinstance(latency, int | float) else None,
        )

    def _on_server_restarted(self, data: dict[str, Any]) -> None:
        self.child(self.restarts, _server(data.get("server"))).inc()

    def _on_config_applied(self, data: dict[str, Any]) -> None:
        self.config_reloads.labels("success").inc()
        self.config_last_reload_success.set(time.time())
        servers = data.get("servers")
        if isinstance(servers, list | tuple | set | frozenset):
            ids = [str(s) for s in servers]
            self.prune_servers(ids)
            for server_id in ids:
                self.init_server(server_id)

    def _on_config_failed(self, data: dict[str, Any]) -> None:
        self.config_reloads.labels("failure").inc()

    def _on_admin_change(self, data: dict[str, Any]) -> None:
        self.admin_changes.labels(_enum(data.get("action"))).inc()

    def _on_prompt(self, metric: Counter, data: dict[str, Any]) -> None:
        self.child(metric, _server(data.get("server"))).inc()

    def _on_upload_replicated(self, data: dict[str, Any]) -> None:
        server = _server(data.get("server"))
        self.child(self.upload_replications, server).inc()
        size = data.get("bytes")
        if isinstance(size, int | float) and size > 0:
            self.child(self.upload_replicated_bytes, server).inc(size)

    def _on_uploads_cache(self, data: dict[str, Any]) -> None:
        if isinstance(data.get("bytes"), int | float):
            self.upload_cache_bytes.set(data["bytes"])
        if isinstance(data.get("entries"), int | float):
            self.upload_cache_entries.set(data["entries"])

    _EVENT_HANDLERS: dict[str, Any] = {
        "server.state": _on_server_state,
        "serving.changed": _on_serving_changed,
        "server.checked": _on_server_checked,
        "server.restarted": _on_server_restarted,
        "config.applied": _on_config_applied,
        "config.failed": _on_config_failed,
        "admin.change": _on_admin_change,
        "prompt.submitted": lambda self, d: self._on_prompt(self.prompts_submitted, d),
        "prompt.completed": lambda self, d: self._on_prompt(self.prompts_completed, d),
        "prompt.resubmitted": lambda self, d: self._on_prompt(self.prompts_resubmitted, d),
        "prompt.lost": lambda self, d: self._on_prompt(self.prompts_lost, d),
        "prompt.copy_cancelled": lambda self, d: self._on_prompt(self.prompt_copies_cancelled, d),
        "upload.replicated": _on_upload_replicated,
        "uploads.cache": _on_uploads_cache,
    }


class MetricsObserver(TrafficObserver):
    """Record proxied traffic into :class:`GatewayMetrics`; cheap and never raising.

    Label children are bound once per label combination and cached, so a finished request
    costs a normalising dict lookup, a cached-tuple lookup, two increments and one histogram
    observation.
    """

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._requests: dict[tuple[str, str, str, int], tuple[Any, Any, Any, Any]] = {}
        self._errors: dict[tuple[str, str], Any] = {}
        m = metrics
        self._ws_conn = {side: m.ws_connections.labels(side) for side in _WS_SIDES}
        self._ws_msgs = m.ws_traffic.messages
        self._ws_bytes = m.ws_traffic.bytes

    def forget(self) -> None:
        """Drop the cached label children (after series were removed from the metrics)."""
        self._requests.clear()
        self._errors.clear()

    def request_finished(
        self,
        backend: str | None,
        method: str,
        group: str,
        status: int,
        duration: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        """Count the request, observe its duration and add its body sizes."""
        key = (backend or NO_SERVER, _METHODS.get(method, "other"), group, status // 100)
        children = self._requests.get(key)
        if children is None:
            children = self._bind(key)
        requests, duration_h, bytes_in_c, bytes_out_c = children
        requests.inc()
        duration_h.observe(duration)
        if bytes_in > 0:
            bytes_in_c.inc(bytes_in)
        if bytes_out > 0:
            bytes_out_c.inc(bytes_out)

    def _bind(self, key: tuple[str, str, str, int]) -> tuple[Any, Any, Any, Any]:
        server, method, group, cls = key
        m = self._metrics
        children = (
            m.child(m.http_requests, server, method, group, _code_class(cls * 100)),
            m.child(m.http_duration, server, group),
            m.child(m.http_request_bytes, server),
            m.child(m.http_response_bytes, server),
        )
        self._requests[key] = children
        return children

    def upstream_failed(self, backend: str, kind: UpstreamErrorKind, detail: str) -> None:
        """Count an upstream failure by backend and kind (``detail`` is never a label)."""
        key = (backend or NO_SERVER, kind if kind in _UPSTREAM_KINDS else "other")
        child = self._errors.get(key)
        if child is None:
            child = self._errors[key] = self._metrics.child(self._metrics.upstream_errors, *key)
        child.inc()

    def ws_opened(self, side: WsSide, backend: str | None) -> None:
        """Count an open websocket on ``side``."""
        child = self._ws_conn.get(side)
        if child is not None:
            child.inc()

    def ws_closed(self, side: WsSide, backend: str | None) -> None:
        """Uncount a websocket closed on ``side``."""
        child = self._ws_conn.get(side)
        if child is not None:
            child.dec()

    def ws_relayed(self, direction: WsDirection, backend: str, binary: bool, size: int) -> None:
        """Count one relayed websocket message and its payload size."""
        msgs = self._ws_msgs
        if direction in msgs:
            msgs[direction] += 1
            self._ws_bytes[direction] += size


def metrics_handler(metrics: GatewayMetrics) -> Handler:
    """Return the ``GET /metrics`` handler for ``metrics`` (content negotiation, gzip, name[])."""
    return make_aiohttp_handler(metrics.registry)
