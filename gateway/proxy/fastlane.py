"""The fast lane: plain ``GET`` requests proxied at the socket level; the rest to aiohttp.

Every client connection starts in a :class:`FrontConnection`, an ``asyncio.Protocol`` placed
in front of aiohttp's own ``RequestHandler`` (see :mod:`gateway.serve`). It reads one request
head at a time and either

* forwards a **plain GET** itself: HTTP/1.1 keep-alive, no body (neither ``Content-Length``
  nor ``Transfer-Encoding``), no ``Origin``, ``Upgrade`` or ``Expect``, no cross-site
  ``Sec-Fetch-Site``, a path without ``%`` escapes or dot segments that is neither the
  gateway's own (``/gateway...``, ``/metrics``) nor one the ComfyUI-aware layer answers
  (:meth:`gateway.jobs.comfy.ComfyRouter.handles`: ``/view``, ``/history``, ``/queue``,
  ``/prompt``...), and a serving backend with a free connection slot. That is most of
  ComfyUI's traffic (``/system_stats``, ``/object_info``, the frontend's static files,
  ``/extensions``, ``/api/userdata``...), and the part that must cost no more than nginx:
  the request goes out on a raw keep-alive connection (:mod:`gateway.proxy.rawpool`) and the
  answer is streamed back as it arrives, with flow control (a slow client pauses the
  backend connection);
* or **hands the connection over** to aiohttp: the transport is given to a new
  ``RequestHandler`` along with every byte read so far, from the first byte of that request
  on, so aiohttp parses exactly what the client sent and the full path applies (websocket
  relay, job layer, admin API, origin rules, aiohttp's own 400/413/431 answers). The
  connection stays with aiohttp from then on.

A fast request behaves as the full path (:mod:`gateway.proxy.http`) would:

* the same upstream headers (:func:`gateway.proxy.headers.upstream_request_headers`:
  hop-by-hop and ``Connection``-listed headers, ``Host``, ``Referer`` and ``Sec-Fetch-*``
  dropped; ``X-Forwarded-For/-Proto/-Host`` and ``X-Request-ID`` set; the backend's
  credentials last) and the same answer headers (hop-by-hop dropped, ``X-Request-ID``
  added unless the backend set one, ``Date`` and ``Server`` when the backend sent none);
* the same reports: ``upstream_succeeded``/``upstream_failed`` (5xx), ``request_finished``
  (metrics) and the access-log line (when the runner logs access);
* the same failure handling: a connection closed or reset before the answer's head is retried
  once on a fresh connection (as the ``Http1Pool`` does); then, and after a refused or
  timed-out connection, or when the request waited more than
  :data:`~gateway.proxy.http.RESCUE_AFTER` seconds on a backend the routing no longer offers
  first, the failure is reported and the request (idempotent, unanswered) is handed over with
  an :class:`~gateway.proxy.http.EarlierAttempt` note (:meth:`FastLane.earlier_for`): the full
  path goes on from the next backend, and answers the error if there is none. A request still
  waiting after the health-check timeout is reported with ``upstream_stalled`` (each sweep);
  one waiting longer than the backend's read timeout is answered 504. A failure after the
  answer's head went out aborts the client connection.

Client connections idle for :attr:`FastLane.keepalive_timeout` seconds (the runner's
``keepalive_timeout``, aiohttp's default of 75 s) are closed, including one that never finishes
its request head.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools
import structlog
from aiohttp.http import SERVER_SOFTWARE

from gateway.observability.access_log import RequestLine, write_request_line
from gateway.observability.logging import ACCESS_LOGGER_NAME
from gateway.observability.middleware import request_id_from
from gateway.proxy.headers import DROP_UPSTREAM, FORWARDED, HOP_BY_HOP
from gateway.proxy.http import RESCUE_AFTER, EarlierAttempt, error_response
from gateway.proxy.observer import TrafficObserver, route_group
from gateway.tasks import spawn

if TYPE_CHECKING:
    from gateway.proxy.rawpool import RawConnection, RawPool
    from gateway.proxy.upstream import Backend

log = structlog.get_logger(__name__)

KEEPALIVE_TIMEOUT = 75.0
"""Seconds an idle client connection is kept open (aiohttp's ``keepalive_timeout``)."""
MAX_HEAD = 65536
"""A request head longer than this is left to aiohttp (which applies its own limits)."""
MAX_BUFFERED = 256 * 1024
"""Bytes of pipelined requests read ahead while an answer streams; then reading pauses."""
SWEEP_EVERY = 0.5
"""Seconds between checks of waiting requests and idle connections."""

# Request headers that send a request to the full path.
_FULL_PATH_HEADERS = frozenset(
    {b"content-length", b"transfer-encoding", b"origin", b"upgrade", b"expect"}
)


def _lower_bytes(names: Iterable[str]) -> frozenset[bytes]:
    return frozenset(name.lower().encode() for name in names)


# The rules of gateway.proxy.headers, as the lane compares them (lower-case bytes).
_DROP_UPSTREAM = _lower_bytes(DROP_UPSTREAM)
"""Request headers never forwarded (those of them in _FULL_PATH_HEADERS never get here)."""
_FORWARDED = _lower_bytes(FORWARDED)
_HOP_BY_HOP = _lower_bytes(HOP_BY_HOP)
"""Answer headers never passed to the client (hop-by-hop; framing is the lane's own)."""
_PLAIN_ANSWER_HEADERS = frozenset({b"content-type", b"cache-control", b"etag", b"last-modified"})
"""Common answer headers that need no decision (a shortcut past the checks below)."""
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus}
_SERVER_LINE = f"Server: {SERVER_SOFTWARE}\r\n".encode()
_ACCESS = logging.getLogger(ACCESS_LOGGER_NAME)

# FrontConnection states.
_IDLE, _CONNECTING, _WAITING, _STREAMING, _HANDED, _CLOSED = range(6)

Pick = Callable[[frozenset[str]], "Backend | None"]


def _rebuilt(headers: list[tuple[bytes, bytes]], upstream_chunked: bool) -> list[bytes]:
    """Return the answer's header lines without hop-by-hop and ``Connection``-listed ones."""
    listed: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed.update(t.strip().lower() for t in value.split(b",") if t.strip())
    lines = []
    for name, value in headers:
        low = name.lower()
        if low in _HOP_BY_HOP or low in listed:
            continue
        if upstream_chunked and low == b"content-length":
            continue  # Transfer-Encoding wins (RFC 9112 §6.3); the lane re-frames
        lines.append(b"%s: %s\r\n" % (name, value))
    return lines


class FastLane:
    """What the fast lane needs from the application; one per gateway application.

    ``pick`` is the routing picker of plain forwarding, ``handles(method, path)`` says which
    requests the ComfyUI-aware layer answers, ``stall_after()`` is the health-check timeout.
    The runner (:mod:`gateway.serve`) sets :attr:`access_log`.
    """

    def __init__(
        self,
        *,
        pick: Pick,
        observer: TrafficObserver,
        handles: Callable[[str, str], bool],
        trust_forwarded: Callable[[], bool],
        stall_after: Callable[[], float],
        backends: Callable[[], Iterable[Backend]],
    ) -> None:
        self.pick = pick
        self.observer = observer
        self.handles = handles
        self.trust_forwarded = trust_forwarded
        self.stall_after = stall_after
        self._backends = backends
        self.access_log = False
        """Write an access-log line per request (the runner's ``access_log_class`` choice)."""
        self.keepalive_timeout = KEEPALIVE_TIMEOUT
        """Seconds an idle client connection stays open (the runner's ``keepalive_timeout``)."""
        self.fronts: set[FrontConnection] = set()
        self.answered = 0
        """Requests the lane answered itself."""
        self.handed_over = 0
        """Connections handed over to aiohttp."""
        self._earlier: dict[asyncio.BaseTransport, EarlierAttempt] = {}
        self.closing = False
        self._gone = asyncio.Event()

    async def context(self, app: Any) -> AsyncIterator[None]:
        """``cleanup_ctx``: run the sweeper while the application runs."""
        sweeper = spawn(self._sweep(), name="fast-lane-sweeper")
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            now = loop.time()
            for front in list(self.fronts):
                try:
                    front.check(now)
                except Exception:  # one broken connection must not stop the sweeps
                    log.exception("fast lane check failed")
                    front.abort()
            for backend in self._backends():
                backend.raw.expire(now)
            for transport in [t for t in self._earlier if t.is_closing()]:
                del self._earlier[transport]  # handed over, then closed before a request

    def earlier_for(self, transport: asyncio.BaseTransport | None) -> EarlierAttempt | None:
        """Return (once) how the request handed over on ``transport`` fared in the lane."""
        if transport is None or not self._earlier:
            return None
        return self._earlier.pop(transport, None)

    def note_earlier(self, transport: asyncio.BaseTransport, earlier: EarlierAttempt) -> None:
        """Record how a request about to be handed over on ``transport`` fared."""
        self._earlier[transport] = earlier

    def pre_shutdown(self) -> None:
        """Stop keeping connections alive; close the idle ones now."""
        self.closing = True
        for front in list(self.fronts):
            front.close_if_idle()

    async def shutdown(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds for answers in progress, then abort the rest."""
        if self.fronts:
            self._gone.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while self.fronts:
                        await self._gone.wait()
                        self._gone.clear()
        for front in list(self.fronts):
            front.abort()

    def forget(self, front: FrontConnection) -> None:
        """A client connection closed or was handed over."""
        self.fronts.discard(front)
        if self.closing:
            self._gone.set()


class FrontConnection(asyncio.Protocol):
    """One client connection (see the module docstring for what it does)."""

    __slots__ = (
        "_backend",
        "_block",
        "_body",
        "_buffer",
        "_chunked",
        "_close_delimited",
        "_complete",
        "_conn",
        "_fallback",
        "_head_len",
        "_head_sent",
        "_headers",
        "_lane",
        "_last",
        "_loop",
        "_out",
        "_parser",
        "_path",
        "_peer",
        "_reading_paused",
        "_request",
        "_request_id",
        "_retried",
        "_scheme",
        "_since",
        "_started",
        "_state",
        "_status",
        "_transport",
        "_url",
        "_writing_paused",
    )

    def __init__(self, lane: FastLane, fallback: Callable[[], asyncio.Protocol]) -> None:
        self._lane = lane
        self._fallback = fallback
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._buffer = bytearray()
        self._state = _IDLE
        self._reading_paused = False
        self._writing_paused = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._complete = False
        self._head_len = 0
        self._backend: Backend | None = None
        self._block: tuple[Any, ...] | None = None
        self._conn: RawConnection | None = None
        self._request = b""
        self._request_id = b""
        self._retried = False
        self._path = ""
        self._peer: bytes | None = None
        self._scheme = b"http"
        self._since = 0.0
        self._started = 0.0
        self._last = 0.0
        self._status = 0
        self._head_sent = 0
        self._body = 0
        self._chunked = False
        self._close_delimited = False
        self._out: list[bytes] = []

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, (list, tuple)):
            self._peer = str(peer[0]).encode()
        elif peer:
            self._peer = str(peer).encode()
        if transport.get_extra_info("sslcontext") is not None:
            self._scheme = b"https"
        self._since = self._loop.time()
        self._lane.fronts.add(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._state == _IDLE:
            self._next()
        elif len(self._buffer) > MAX_BUFFERED and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> None:
        return None  # as aiohttp: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _HANDED:
            return
        self._state = _CLOSED
        self._lane.forget(self)
        self._drop_upstream()

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._conn is not None:
            self._conn.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._conn is not None:
            self._conn.resume_reading()

    # -- httptools callbacks (request) ---------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_message_complete(self) -> None:
        self._complete = True

    # -- one request ---------------------------------------------------------------------

    def _next(self) -> None:
        """Take the next request head from the buffer, if a whole one is there."""
        buf = self._buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            # Too long, or lines ending in a bare LF: aiohttp decides what that is.
            if len(buf) > MAX_HEAD or b"\n\n" in buf or b"\n\r\n" in buf:
                self._hand_off()
            return
        self._head_len = end + 4
        self._url = b""
        self._headers = []
        self._complete = False
        try:
            self._parser.feed_data(bytes(buf[: self._head_len]))
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._hand_off()
            return
        if not self._complete or not self._start():
            self._hand_off()

    def _start(self) -> bool:
        """Send the parsed request to its backend; return False to leave it to aiohttp."""
        parser = self._parser
        if (
            parser.get_method() != b"GET"
            or parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
        ):
            return False
        url = self._url
        query = url.find(b"?")
        raw_path = url if query < 0 else url[:query]
        if (
            not raw_path.startswith(b"/")
            or b"%" in raw_path
            or b"/." in raw_path
            or b"#" in url
            or not url.isascii()
        ):
            return False
        path = raw_path.decode("ascii")
        lane = self._lane
        if (
            path == "/metrics"
            or path == "/gateway"
            or path.startswith("/gateway/")
            or lane.handles("GET", path)
        ):
            return False
        request = self._upstream_request(url, path)
        if request is None:
            return False
        backend, head = request
        pool = backend.raw
        now = self._loop.time()
        taken = pool.take(now)
        if taken is False:
            return False  # no free slot: the full path waits in line
        self._backend = backend
        self._request = head
        self._retried = False
        self._path = path
        self._since = self._last = now
        self._started = time.perf_counter()
        if taken is True:
            self._state = _CONNECTING
            spawn(self._connect(pool), name="fast-lane-connect")
        else:
            self._send(taken)
        return True

    def _upstream_request(self, url: bytes, path: str) -> tuple[Backend, bytes] | None:
        """Return the backend and the request head for it, or None (full path).

        A client sends the same headers on most requests of a connection: the header block
        built for the previous request is reused when the headers, the backend and the
        forwarded-headers setting are the same (only the target and the request id change).
        """
        lane = self._lane
        backend = lane.pick(frozenset())
        if backend is None:
            return None  # the full path answers 503
        trust = lane.trust_forwarded()
        headers = self._headers
        block = self._block
        if block is None or block[0] is not backend or block[1] != trust or block[2] != headers:
            built = self._header_block(backend, trust)
            if built is None:
                return None
            block = self._block = (backend, trust, headers, *built)
        rid = self._request_id = request_id_from(block[3]).encode()
        target = backend.target(url.decode("ascii")).encode("latin-1")
        return backend, b"GET %s HTTP/1.1\r\n%sX-Request-ID: %s\r\n%s" % (
            target,
            block[4],
            rid,
            block[5],
        )

    def _header_block(
        self, backend: Backend, trust: bool
    ) -> tuple[str | None, bytes, bytes] | None:
        """Return the client's request id, and the header lines before and after it.

        None sends the request to the full path (see the module docstring).
        """
        host = request_id = forwarded_for = connection = None
        has_proto = has_host = False
        kept: list[tuple[bytes, bytes, bytes]] = []
        for name, value in self._headers:
            low = name.lower()
            if low in _FULL_PATH_HEADERS:
                return None
            if low in _DROP_UPSTREAM:
                if low == b"host":
                    if host is not None:
                        return None  # two Host headers: aiohttp's answer
                    host = value
                elif low == b"connection":
                    connection = value if connection is None else connection + b"," + value
                continue
            if low.startswith(b"sec-fetch-"):
                if low == b"sec-fetch-site" and value.lower() == b"cross-site":
                    return None  # the origin rules decide
                continue
            if low == b"x-request-id":
                if request_id is None:
                    request_id = value
                continue
            if low in _FORWARDED:
                if not trust:
                    continue
                if low == b"x-forwarded-for":
                    if forwarded_for is None:
                        forwarded_for = value
                    continue
                if low == b"x-forwarded-proto":
                    has_proto = True
                elif low == b"x-forwarded-host":
                    has_host = True
            kept.append((low, name, value))
        if host is None:
            return None
        drop = backend.raw_auth_names
        if connection is not None:
            drop = drop | {t.strip().lower() for t in connection.split(b",")}
        lines = [b"%s: %s\r\n" % (name, value) for low, name, value in kept if low not in drop]
        peer = self._peer
        if peer:
            if forwarded_for:
                peer = forwarded_for + b", " + peer
            lines.append(b"X-Forwarded-For: %s\r\n" % peer)
        elif forwarded_for is not None:
            lines.append(b"X-Forwarded-For: %s\r\n" % forwarded_for)
        if not has_proto:
            lines.append(b"X-Forwarded-Proto: %s\r\n" % self._scheme)
        if host and not has_host:
            lines.append(b"X-Forwarded-Host: %s\r\n" % host)
        tail = b"%sHost: %s\r\n\r\n" % (backend.raw_auth, backend.host_header.encode("latin-1"))
        client_id = request_id.decode("latin-1") if request_id is not None else None
        return client_id, b"".join(lines), tail

    async def _connect(self, pool: RawPool) -> None:
        try:
            conn = await pool.connect()
        except (OSError, TimeoutError) as exc:
            pool.release(None, reusable=False, now=self._loop.time())
            if self._state == _CONNECTING:
                self._connect_failed(exc)
            return
        except BaseException:
            pool.release(None, reusable=False, now=self._loop.time())
            raise
        if self._state != _CONNECTING:  # the client left, or the lane gave up, meanwhile
            pool.release(conn, reusable=True, now=self._loop.time())
            return
        self._send(conn)

    def _send(self, conn: RawConnection) -> None:
        self._conn = conn
        self._state = _WAITING
        conn.send(self, self._request)
        if self._writing_paused:  # the client still has not read the previous answer
            conn.pause_reading()

    # -- the answer (RawConnection callbacks) --------------------------------------------

    def upstream_head(
        self, status: int, headers: list[tuple[bytes, bytes]], raw: bytes | None = None
    ) -> None:
        """Send the answer's head to the client (see the module docstring for the rules).

        The backend's header lines are passed on as received (``raw``) when none of them has
        to go; else they are rebuilt one by one.
        """
        if self._state != _WAITING:
            return
        self._state = _STREAMING
        backend_id = self._backend.id  # type: ignore[union-attr]
        observer = self._lane.observer
        if status >= 500:
            observer.upstream_failed(backend_id, "status_5xx", str(status))
        else:
            observer.upstream_succeeded(backend_id)
        lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
        length = None
        upstream_chunked = has_id = has_date = has_server = hop = False
        for name, value in headers:
            low = name.lower()
            if low in _PLAIN_ANSWER_HEADERS:
                continue
            if low in _HOP_BY_HOP:
                hop = True
                upstream_chunked = upstream_chunked or low == b"transfer-encoding"
            elif low == b"content-length":
                length = value
            elif low == b"x-request-id":
                has_id = True
            elif low == b"date":
                has_date = True
            elif low == b"server":
                has_server = True
        if raw is not None and not hop:
            lines.append(raw)
        else:
            lines += _rebuilt(headers, upstream_chunked)
        if not has_id:
            lines.append(b"X-Request-ID: %s\r\n" % self._request_id)
        if not has_date:
            lines.append(b"Date: %s\r\n" % formatdate(usegmt=True).encode())
        if not has_server:
            lines.append(_SERVER_LINE)
        bodyless = status in (204, 304) or status < 200
        self._chunked = not bodyless and (upstream_chunked or length is None)
        self._close_delimited = not bodyless and not upstream_chunked and length is None
        if self._chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        if self._lane.closing:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        self._out.append(head)  # written with the body's first piece (upstream_flush)
        del self._buffer[: self._head_len]  # the request is answered: never handed over now
        self._status = status
        self._head_sent = len(head)
        self._body = 0

    def upstream_body(self, data: bytes) -> None:
        """Pass a piece of the body on."""
        if self._state != _STREAMING:
            return
        self._body += len(data)
        self._last = self._loop.time()
        if self._chunked:
            size = b"%x\r\n" % len(data)
            self._head_sent += len(size) + 2  # framing counts as sent, not as body
            self._out += (size, data, b"\r\n")
        else:
            self._out.append(data)

    def upstream_flush(self) -> None:
        """Write what the last read from the backend produced, in one system call."""
        out = self._out
        if not out or self._state >= _HANDED:  # handed over or closed
            out.clear()
            return
        if len(out) == 1:
            self._transport.write(out[0])  # type: ignore[union-attr]
        elif len(out) <= 4 and len(out[-1]) <= 16384:
            self._transport.write(b"".join(out))  # type: ignore[union-attr]
        else:
            self._transport.writelines(out)  # type: ignore[union-attr]
        out.clear()

    def upstream_done(self, conn: RawConnection) -> None:
        """The answer is complete: report it, free the connection, take the next request."""
        if self._state != _STREAMING:
            return
        self._conn = None
        self._backend.raw.release(conn, reusable=True, now=self._loop.time())  # type: ignore[union-attr]
        self._finish()

    def upstream_lost(self, conn: RawConnection, exc: BaseException | None) -> None:
        """The backend connection closed (or sent garbage) before the answer was complete."""
        state = self._state
        if state not in (_WAITING, _STREAMING) or conn is not self._conn:
            return
        self._conn = None
        backend = self._backend
        backend.raw.release(conn, reusable=False, now=self._loop.time())  # type: ignore[union-attr]
        if state == _WAITING:
            self._no_answer(exc)  # nothing came back
        elif self._close_delimited and exc is None:
            self._finish()  # a body that ends with the connection
        else:
            self._lane.observer.upstream_failed(backend.id, "reset", repr(exc))  # type: ignore[union-attr]
            self.abort()

    def _finish(self) -> None:
        transport = self._transport
        if self._chunked:
            self._out.append(b"0\r\n\r\n")
        self.upstream_flush()
        self._report(self._status, self._head_sent + self._body + (5 if self._chunked else 0))
        self._lane.answered += 1
        self._backend = None
        self._state = _IDLE
        self._since = self._loop.time()
        if self._lane.closing:
            transport.close()  # type: ignore[union-attr]
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()  # type: ignore[union-attr]
        if self._buffer:
            self._next()

    def _report(self, status: int, sent: int) -> None:
        backend_id = self._backend.id if self._backend is not None else None
        duration = time.perf_counter() - self._started
        path = self._path
        self._lane.observer.request_finished(
            backend_id, "GET", route_group(path), status, duration, 0, self._body
        )
        if self._lane.access_log and _ACCESS.isEnabledFor(logging.INFO):
            write_request_line(
                RequestLine(
                    "GET",
                    path,
                    status,
                    round(duration, 6),
                    sent,
                    self._request_id.decode(),
                    self._peer.decode() if self._peer is not None else None,
                    backend_id,
                )
            )

    # -- the sweeper's checks ------------------------------------------------------------

    def check(self, now: float) -> None:
        """Apply the timeouts of the module docstring (called every :data:`SWEEP_EVERY`)."""
        state = self._state
        if state == _WAITING:
            self._check_waiting(now)
        elif state == _STREAMING:
            backend = self._backend
            if backend is not None and now - self._last >= backend.server.timeouts.read:
                self._lane.observer.upstream_failed(backend.id, "timeout", "body stalled")
                self.abort()
        elif state == _IDLE and now - self._since >= self._lane.keepalive_timeout:
            self._transport.close()  # type: ignore[union-attr]

    def _check_waiting(self, now: float) -> None:
        backend = self._backend
        if backend is None:
            return
        lane = self._lane
        waited = now - self._since
        if waited >= backend.server.timeouts.read:
            self._time_out(backend)
            return
        if waited >= lane.stall_after():
            lane.observer.upstream_stalled(backend.id, waited)
        if waited >= RESCUE_AFTER:
            first = lane.pick(frozenset())
            if first is not None and first.id != backend.id:
                # Traffic moved while this request waited: the full path sends it there.
                self._hand_over_after(
                    EarlierAttempt.moved_away(
                        backend.id, f"no answer from {backend.id!r}; moved to {first.id!r}"
                    )
                )

    def _time_out(self, backend: Backend) -> None:
        """Answer 504: the backend took longer than its read timeout."""
        self._drop_upstream()
        self._lane.observer.upstream_failed(backend.id, "timeout", "read timeout")
        answer = error_response(
            504, "upstream_timeout", f"backend {backend.id!r} did not answer in time", backend.id
        )
        body = answer.body  # the full path's answer to a read timeout, byte for byte
        head = (
            b"%sContent-Type: %s\r\nContent-Length: %d\r\nX-Request-ID: %s\r\nDate: %s\r\n%s\r\n"
            % (
                _STATUS_LINES[504],
                answer.headers["Content-Type"].encode(),
                len(body),
                self._request_id,
                formatdate(usegmt=True).encode(),
                _SERVER_LINE,
            )
        )
        self._out.append(head + body)
        del self._buffer[: self._head_len]
        self._state = _STREAMING
        self._chunked = False
        self._head_sent = len(head)
        self._body = len(body)
        self._status = 504
        self._finish()

    def close_if_idle(self) -> None:
        """Close the connection unless an answer is in progress (at shutdown)."""
        if self._state == _IDLE and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the client connection and the backend request at once."""
        self._drop_upstream()
        if self._transport is not None:
            self._transport.abort()

    def _drop_upstream(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._backend is not None:
            conn.detach()
            conn.abort()
            self._backend.raw.release(conn, reusable=False, now=self._loop.time())

    # -- failures before the answer ------------------------------------------------------

    def _no_answer(self, exc: BaseException | None) -> None:
        """The connection closed or reset before any answer: retry once, then hand over."""
        backend = self._backend
        assert backend is not None
        if not self._retried:
            self._retried = True
            if backend.raw.take(self._loop.time(), fresh=True):  # a slot, for a new connection
                self._state = _CONNECTING
                spawn(self._connect(backend.raw), name="fast-lane-connect")
                return
        detail = str(exc) if exc is not None else "connection closed before any answer"
        self._lane.observer.upstream_failed(backend.id, "reset", detail)
        self._hand_over_after(EarlierAttempt.reset(backend.id, detail))

    def _connect_failed(self, exc: BaseException) -> None:
        backend = self._backend
        assert backend is not None
        if isinstance(exc, TimeoutError):
            self._lane.observer.upstream_failed(backend.id, "connect", repr(exc))
            self._hand_over_after(EarlierAttempt.connect_timeout(backend.id))
        else:
            self._lane.observer.upstream_failed(backend.id, "connect", str(exc))
            self._hand_over_after(EarlierAttempt.unreachable(backend.id, str(exc)))

    def _hand_over_after(self, earlier: EarlierAttempt) -> None:
        """Hand the request over with a note of the backend that left it unanswered."""
        if self._transport is not None:
            self._lane.note_earlier(self._transport, earlier)
        self._hand_off()

    # -- handing over --------------------------------------------------------------------

    def _hand_off(self) -> None:
        """Give the connection, and every byte of it not yet answered, to aiohttp."""
        if self._state in (_HANDED, _CLOSED):
            return
        self._drop_upstream()
        self._state = _HANDED
        self._lane.forget(self)
        self._lane.handed_over += 1
        transport = self._transport
        handler = self._fallback()
        transport.set_protocol(handler)  # type: ignore[union-attr]
        handler.connection_made(transport)  # type: ignore[arg-type]
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()  # type: ignore[union-attr]
        data, self._buffer = bytes(self._buffer), bytearray()
        if data:
            handler.data_received(data)  # type: ignore[attr-defined]
