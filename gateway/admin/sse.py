"""``GET /events``: the event bus as a Server-Sent Events stream.

Wire format (WHATWG HTML "Server-sent events"), one block per bus event::

    id: 42
    event: serving.changed
    data: {"id": 42, "kind": "serving.changed", "ts": 1767000000.1, "data": {...}}

Contract:

* On connect the stream first replays the kept history newer than ``Last-Event-ID`` (the header
  a browser's ``EventSource`` sends when it reconnects, or the ``last_event_id`` query
  parameter), then follows live events; no event is sent twice. When the requested id is older
  than the kept history, a ``resync`` event (no id) says that events were lost and the client
  should re-read ``GET /servers``; the same happens as ``events.dropped`` when this client fell
  so far behind that its queue overflowed.
* A comment line (``: ping``) is sent every ``heartbeat`` seconds (15 s) so proxies keep the
  connection open and a vanished client is noticed.
* Payloads never contain secrets: every event is passed through
  :func:`gateway.admin.redaction.redact` with the current configuration's secret values.
* On application shutdown (the admin sub-app's ``on_shutdown``) every stream ends cleanly with
  the end of the response, instead of being cut mid-event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.events import Event, EventBus
from gateway.registry import ServerRegistry
from gateway.tasks import cancel_and_wait, spawn

HEARTBEAT_SECONDS = 15.0


class EventStreams:
    """Open SSE streams of one admin app, closed together on shutdown."""

    def __init__(self, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.heartbeat = heartbeat
        self._closing: asyncio.Event | None = None
        self.open = 0

    @property
    def closing(self) -> asyncio.Event:
        """Return the event set when the application shuts down (created in the loop)."""
        if self._closing is None:
            self._closing = asyncio.Event()
        return self._closing

    async def on_shutdown(self, _app: web.Application) -> None:
        """End every open stream (an ``on_shutdown`` signal handler)."""
        self.closing.set()


def format_event(event: Event, secrets: frozenset[str]) -> bytes:
    """Return one SSE block for a bus event, secrets masked."""
    from gateway.admin.redaction import redact  # with the handlers, not at start-up

    payload = redact(event.as_dict(), secrets)
    data = json.dumps(payload, separators=(",", ":"), default=str)
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n".encode()


def format_notice(kind: str, data: dict[str, Any]) -> bytes:
    """Return an SSE block without an id (stream notices such as ``resync``)."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def last_event_id(request: web.Request) -> int:
    """Return the id to resume after (header, then query), 0 when absent or not a number."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or "0"
    try:
        return max(0, int(raw.strip()))
    except ValueError:
        return 0


async def stream_events(
    request: web.Request,
    *,
    bus: EventBus,
    registry: ServerRegistry,
    streams: EventStreams,
    extra_secrets: Callable[[], str | None],
) -> web.StreamResponse:
    """Serve one SSE client until it leaves or the application shuts down."""
    from gateway.admin.redaction import secret_values  # with the handlers, not at start-up

    after = last_event_id(request)
    subscription = bus.subscribe()  # before the replay, so nothing falls in between
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    getter: asyncio.Task[Event] | None = None
    stopper = spawn(streams.closing.wait(), name="admin-sse-stop")
    streams.open += 1

    def secrets() -> frozenset[str]:
        return secret_values(registry.config, [extra_secrets()])

    try:
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        history = bus.recent(0)
        newest = history[-1].id if history else 0
        if after > newest:  # an id from before a restart: nothing to resume from
            await response.write(format_notice("resync", {"reason": "unknown event id"}))
            after, history = 0, []
        else:
            history = [e for e in history if e.id > after]
            if after and history and history[0].id > after + 1:
                await response.write(format_notice("resync", {"reason": "events lost"}))
        sent = after
        for event in history:
            await response.write(format_event(event, secrets()))
            sent = event.id
        dropped = 0
        while not stopper.done():
            if getter is None:
                getter = spawn(subscription.get(), name="admin-sse-get")
            done, _ = await asyncio.wait(
                {getter, stopper}, timeout=streams.heartbeat, return_when=asyncio.FIRST_COMPLETED
            )
            if getter in done:
                event = getter.result()
                getter = None
                if subscription.dropped != dropped:
                    lost = subscription.dropped - dropped
                    dropped = subscription.dropped
                    await response.write(format_notice("events.dropped", {"dropped": lost}))
                if event.id > sent:
                    await response.write(format_event(event, secrets()))
                    sent = event.id
            elif not done:
                await response.write(b": ping\n\n")
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
    except ConnectionError:
        pass  # the client went away; nothing to clean up beyond the finally block
    finally:
        streams.open -= 1
        subscription.close()
        await cancel_and_wait(getter, stopper)
    return response
