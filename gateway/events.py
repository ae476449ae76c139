"""An in-process publish/subscribe bus for gateway events.

Producers (health checks, failover, the admin API, job tracking) publish :class:`Event` values;
consumers (the SSE stream, metrics, alerts, logs) subscribe. Publishing never blocks: each
subscriber has a bounded queue, and a subscriber that falls behind loses its oldest events (and is
told how many through ``dropped``) instead of slowing the gateway down.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

EventListener = Callable[["Event"], None]


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened; ``kind`` is a dotted name such as ``server.state``."""

    kind: str
    data: dict[str, Any]
    id: int = 0
    ts: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form used by the SSE stream and logs."""
        return {"id": self.id, "kind": self.kind, "ts": self.ts, "data": self.data}


class Subscription:
    """A bounded queue of events for one consumer."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _offer(self, event: Event) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    async def get(self) -> Event:
        """Wait for the next event."""
        return await self._queue.get()

    def close(self) -> None:
        """Stop receiving events."""
        self._bus._subscriptions.discard(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self._queue.get()


FREQUENT_KINDS = frozenset({"server.checked"})
"""Kinds published on every health check: kept in a history of their own, so that they do not
push the rarer, more important events (state changes, switches, admin changes) out."""


class EventBus:
    """Fan events out to subscribers and synchronous listeners, keeping a short history.

    Two bounded histories are kept for replay (``Last-Event-ID``): ``history`` frequent events
    and ``history * 5`` of every other kind.
    """

    def __init__(self, history: int = 200) -> None:
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[EventListener] = []
        self._ids = itertools.count(1)
        self._frequent: deque[Event] = deque(maxlen=history)
        self._important: deque[Event] = deque(maxlen=history * 5)

    def publish(self, kind: str, /, **data: Any) -> Event:
        """Publish an event to everyone; never blocks, never raises from a listener."""
        event = Event(kind=kind, data=data, id=next(self._ids))
        (self._frequent if kind in FREQUENT_KINDS else self._important).append(event)
        for sub in list(self._subscriptions):
            sub._offer(event)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken consumer must not break the producer
                import structlog

                structlog.get_logger("gateway.events").exception("event listener failed", kind=kind)
        return event

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """Return a new subscription; call ``close()`` when done."""
        sub = Subscription(self, maxsize)
        self._subscriptions.add(sub)
        return sub

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener`` synchronously for every event (must be fast)."""
        self._listeners.append(listener)

    def recent(self, after_id: int = 0) -> list[Event]:
        """Return the kept history of events newer than ``after_id``."""
        merged = [e for e in (*self._frequent, *self._important) if e.id > after_id]
        return sorted(merged, key=lambda e: e.id)
