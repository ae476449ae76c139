"""What the data plane reports about the traffic it moves.

The proxy knows nothing about metrics, logs or health policy; it reports outcomes to a
:class:`TrafficObserver`. Passive health checks, Prometheus metrics and access logs each
implement the part they care about; :class:`ObserverChain` fans a report out to all of them.
Every method must be cheap and must not raise: it runs on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

UpstreamErrorKind = Literal["connect", "timeout", "reset", "status_5xx"]
WsSide = Literal["client", "upstream"]
WsDirection = Literal["to_client", "to_upstream"]


class TrafficObserver:
    """Base observer: every hook is a no-op; subclasses override what they need."""

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
        """Record one proxied HTTP exchange (``backend`` None when none was reachable)."""

    def upstream_failed(self, backend: str, kind: UpstreamErrorKind, detail: str) -> None:
        """Record a failure talking to a backend (refused, reset, timeout, 5xx)."""

    def upstream_succeeded(self, backend: str) -> None:
        """Record a healthy exchange with a backend."""

    def upstream_stalled(self, backend: str, waited: float) -> None:
        """Record that a request to ``backend`` has waited ``waited`` seconds with no answer.

        Reported (at most every half second per waiting request) by the data plane for
        requests still waiting longer than the backend's health-check timeout: evidence that
        the backend may be hung, for passive health to act on. Not a failure by itself (a slow
        ``/object_info`` also waits).
        """

    def ws_opened(self, side: WsSide, backend: str | None) -> None:
        """Record a websocket opened on one side of the relay."""

    def ws_closed(self, side: WsSide, backend: str | None) -> None:
        """Record a websocket closed on one side of the relay."""

    def ws_relayed(self, direction: WsDirection, backend: str, binary: bool, size: int) -> None:
        """Record one relayed websocket message."""


class ObserverChain(TrafficObserver):
    """Forward every report to each registered observer.

    Each hook calls only the observers that override it (the base class's hooks are no-ops),
    and a hook with a single such observer is that observer's bound method: on the hot path a
    report costs one call per interested observer, nothing for the others.
    """

    _HOOKS = (
        "request_finished",
        "upstream_failed",
        "upstream_succeeded",
        "upstream_stalled",
        "ws_opened",
        "ws_closed",
        "ws_relayed",
    )

    def __init__(self) -> None:
        self.observers: list[TrafficObserver] = []
        self._rebind()

    def add(self, observer: TrafficObserver) -> None:
        """Register an observer."""
        self.observers.append(observer)
        self._rebind()

    def _rebind(self) -> None:
        for hook in self._HOOKS:
            base = getattr(TrafficObserver, hook)
            targets = [
                getattr(o, hook)
                for o in self.observers
                if getattr(type(o), hook, base) is not base or hook in vars(o)
            ]
            if not targets:
                setattr(self, hook, _noop)
            elif len(targets) == 1:
                setattr(self, hook, targets[0])
            else:
                setattr(self, hook, _fan_out(targets))


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _fan_out(targets: list[Callable[..., None]]) -> Callable[..., None]:
    def report(*args: Any, **kwargs: Any) -> None:
        for target in targets:
            target(*args, **kwargs)

    return report


def route_group(path: str) -> str:
    """Return the bounded metrics label for a request path (never the raw path)."""
    p = path[4:] if path.startswith("/api/") else path
    if p in ("/prompt", "/queue", "/interrupt", "/free") or p.startswith("/history"):
        return "prompt"
    if p.startswith("/view"):
        return "view"
    if p.startswith("/upload/"):
        return "upload"
    if p == "/ws":
        return "ws"
    if p in ("/system_stats", "/features", "/object_info") or p.startswith("/object_info/"):
        return "info"
    if p.startswith(("/userdata", "/v2/userdata", "/settings", "/users")):
        return "userdata"
    if p == "/" or p.startswith(
        ("/assets/", "/extensions/", "/templates/", "/scripts/", "/fonts/")
    ):
        return "static"
    if p.startswith("/internal/"):
        return "internal"
    return "other"
