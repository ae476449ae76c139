"""Raw keep-alive connections to one backend, for the fast lane (:mod:`gateway.proxy.fastlane`).

A :class:`RawConnection` is an ``asyncio.Protocol`` that parses the backend's answers with
``httptools`` (llhttp, the parser of Node.js) and hands each piece straight to the client
connection it serves (:class:`AnswerSink`): no ``StreamReader``, no task, no copy of the body.
:class:`RawPool` keeps the idle ones of one backend.

Limits are the backend's :class:`~gateway.proxy.upstream.Http1Pool`'s: a raw connection in use
takes one of its ``max_connections`` slots, so the fast lane and the full path together never
hold more than ``max_connections`` requests open to a backend. When no slot is free the pool
says so at once (the fast lane then leaves the request to the full path, which waits in line).
Idle connections are dropped after :data:`~gateway.proxy.upstream.KEEPALIVE` seconds, like the
``Http1Pool``'s, and whenever the backend says ``Connection: close``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

import httptools

if TYPE_CHECKING:
    from gateway.proxy.upstream import Http1Pool


class AnswerSink(Protocol):
    """Who receives a backend's answer: the fast lane's client connection."""

    def upstream_head(
        self, status: int, headers: list[tuple[bytes, bytes]], raw: bytes | None
    ) -> None:
        """The answer's status and headers arrived (interim 1xx answers are never passed).

        ``raw``, when known, is the header lines exactly as received (``Name: value\\r\\n``
        each, in order, one per entry of ``headers``).
        """

    def upstream_body(self, data: bytes) -> None:
        """A piece of the (de-chunked) body arrived."""

    def upstream_done(self, conn: RawConnection) -> None:
        """The answer is complete; ``conn`` may be released."""

    def upstream_flush(self) -> None:
        """Everything one read brought was passed on: write it out (one write per read)."""

    def upstream_lost(self, conn: RawConnection, exc: BaseException | None) -> None:
        """The connection closed or sent garbage before the answer was complete."""


class RawConnection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection to a backend, answering one request at a time."""

    __slots__ = (
        "_data",
        "_done",
        "_head_first",
        "_headers",
        "_interim",
        "_paused",
        "closed",
        "keep_alive",
        "parser",
        "since",
        "sink",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.sink: AnswerSink | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.since = 0.0
        self.closed = False
        self.keep_alive = True
        self._headers: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._paused = False
        self._done = False
        self._head_first = False  # the next read starts with an answer's status line
        self._data: bytes | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # a backend must not talk while no request is out: drop it
            self.close()
            return
        self._data = data if self._head_first else None
        self._head_first = False
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.close()
            self._lose(exc)
            return
        if self._done:
            # Released only now, outside the parser's callbacks: the next request sent on
            # this connection must not start while llhttp is still inside this one.
            self._done = False
            self.sink = None
            sink.upstream_done(self)
        else:
            sink.upstream_flush()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lose(exc)

    # -- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers, self._headers = self._headers, []
        status = self.parser.get_status_code()
        data, self._data = self._data, None
        if status < 200 and status != 101:
            self._interim = True  # 100 Continue, 103 Early Hints: skipped, as aiohttp does
            return
        self.keep_alive = self.parser.should_keep_alive()
        if self.sink is not None:
            self.sink.upstream_head(status, headers, _header_lines(data, len(headers)))

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.upstream_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._done = True

    # -- use -----------------------------------------------------------------------------

    def send(self, sink: AnswerSink, request: bytes) -> None:
        """Send ``request`` (a whole request head) and pass its answer to ``sink``."""
        self.sink = sink
        self._done = False
        self._head_first = True
        self.transport.write(request)  # type: ignore[union-attr]

    def detach(self) -> None:
        """Stop passing anything on (the sink gave up); the connection must then be closed."""
        self.sink = None

    def close(self) -> None:
        """Close the connection (never reused)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close the connection at once, dropping anything unsent."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        """Stop reading from the backend (the client reads slower than it sends)."""
        if self.transport is not None and not self.closed and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the backend again."""
        if self.transport is not None and not self.closed and self._paused:
            self._paused = False
            self.transport.resume_reading()

    def _lose(self, exc: BaseException | None) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream_lost(self, exc)


def _header_lines(data: bytes | None, count: int) -> bytes | None:
    """Return the header lines of the answer that ``data`` starts with, if all are in it."""
    if data is None:
        return None
    start = data.find(b"\r\n") + 2
    end = data.find(b"\r\n\r\n", start - 2)
    if start < 2 or end < 0:
        return None
    lines = data[start : end + 2]
    return lines if lines.count(b"\r\n") == count else None  # else: folded lines


class RawPool:
    """The idle :class:`RawConnection` s of one backend (see the module docstring)."""

    def __init__(self, slots: Http1Pool, *, keepalive: float) -> None:
        self._slots = slots  # its slots, and how it connects to the backend
        self._keepalive = keepalive
        self._idle: list[RawConnection] = []
        self._closed = False

    def take(self, now: float, *, fresh: bool = False) -> RawConnection | bool:
        """Take a slot: return an idle connection, True (connect one), or False (no slot).

        ``fresh`` asks for a new connection (a retry: when a backend dies, its kept-alive
        connections die with it and the loop may not have noticed yet).
        """
        if self._closed or not self._slots.take_slot():
            return False
        if fresh:
            return True
        idle = self._idle
        keepalive = self._keepalive
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest alive
            if not conn.closed and conn.keep_alive and now - conn.since < keepalive:
                return conn
            conn.close()
        return True

    async def connect(self) -> RawConnection:
        """Open a new connection (its slot was taken with :meth:`take`).

        Raises ``OSError`` (refused, unreachable) or ``TimeoutError`` after the backend's
        connect timeout; the slot is then the caller's to :meth:`release`.
        """
        return await self._slots.open_connection(RawConnection)

    def release(self, conn: RawConnection | None, *, reusable: bool, now: float) -> None:
        """Give back the slot, and ``conn`` (kept when ``reusable`` and still healthy)."""
        self._slots.give_back_slot()
        if conn is None:
            return
        if reusable and not self._closed and not conn.closed and conn.keep_alive:
            conn.since = now
            conn.sink = None
            conn.resume_reading()
            self._idle.append(conn)
        else:
            conn.close()

    def expire(self, now: float) -> None:
        """Close idle connections older than the keep-alive time."""
        idle = self._idle
        if not idle:
            return
        keep = [c for c in idle if not c.closed and now - c.since < self._keepalive]
        for conn in idle:
            if conn not in keep:
                conn.close()
        self._idle = keep

    def close(self) -> None:
        """Close the idle connections; those in use close when released."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
