"""HTTP forwarding: stream one client request to a backend and its answer back.

Contract of :meth:`HttpForwarder.forward`:

* bodies stream both ways in chunks; memory stays bounded whatever their size (small answers
  with a known length are read whole: cheaper, and still bounded by ``SMALL_BODY``);
* the raw, still percent-encoded path and query reach the backend byte for byte;
* headers follow :mod:`gateway.proxy.headers`;
* a body larger than ``proxy.max_body_size`` is refused with 413 before anything is sent;
* a refused or timed-out connection (nothing was sent yet) is retried on the next backend
  ``pick`` offers; so is an idempotent request without a body (``GET``, ``HEAD``, ...) that
  got no answer at all: its connection closed or reset first (a backend killed under it), or
  it waited more than ``RESCUE_AFTER`` seconds on a backend ``pick`` no longer offers first
  (found down, or traffic moved away from it). Like nginx's ``proxy_next_upstream``, a dying
  or hung backend costs such requests time, not an error. Nothing else is ever retried,
  because ``POST /prompt`` is not idempotent (below this layer, the upstream pools resend an
  idempotent request once when its connection closed before any answer, as aiohttp's client
  does);
* a request still waiting for its answer longer than ``stall_after()`` seconds (the health-check
  timeout) is reported to the observer as stalled (``upstream_stalled``, every ``RESCUE_EVERY``
  seconds while it waits): passive evidence of a hung backend, which health checks confirm with a
  probe. Only requests the watchdog follows are reported (idempotent, no body, lean pool);
* upstream failures answer JSON naming the backend and the cause: connect error and reset 502,
  timeout 504, no backend at all 503. A failure after the answer started aborts the connection;
* a client that goes away cancels the handler (``handler_cancellation``), which closes the
  upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.keys import BACKEND_USED, REQUEST_ID, TRAFFIC_REPORTED
from gateway.proxy.headers import client_response_headers, upstream_request_headers
from gateway.proxy.observer import TrafficObserver, route_group
from gateway.proxy.upstream import IDEMPOTENT_METHODS, Backend, Ticket, UpstreamResponse
from gateway.tasks import spawn

SMALL_BODY = 256 * 1024
CHUNK = 256 * 1024
RESCUE_AFTER = 1.0
"""Seconds an idempotent request waits for an answer before it may move to another backend."""
RESCUE_EVERY = 0.5
"""How often waiting requests are checked (only while there are some)."""
STALL_AFTER = 2.0
"""Default of ``stall_after``: the default health-check timeout (``HealthSettings.timeout``)."""

PickBackend = Callable[[frozenset[str]], Backend | None]
"""Given the ids already tried, return the next backend to try, or None to give up."""


def error_response(
    status: int, kind: str, message: str, backend: str | None = None, **extra: Any
) -> web.Response:
    """Return the gateway's JSON error answer (ComfyUI-like ``{"error": {...}}`` envelope)."""
    error: dict[str, Any] = {"type": kind, "message": message}
    if backend is not None:
        error["backend"] = backend
    error.update(extra)
    return web.json_response({"error": error}, status=status)


class EarlierAttempt:
    """A backend that left a request unanswered: nothing came back, so the next may try.

    Made by the constructors below, one per way of failing, by :meth:`HttpForwarder.forward`
    itself and by the fast lane (which hands the request over with one); ``failure`` is the
    answer if no backend is left.
    """

    __slots__ = ("backend_id", "cause", "failure", "tried")

    def __init__(self, backend_id: str, cause: str, failure: web.Response) -> None:
        self.tried = frozenset({backend_id})
        self.backend_id = backend_id
        self.cause = cause
        self.failure = failure

    @classmethod
    def reset(cls, backend_id: str, detail: str) -> EarlierAttempt:
        """The connection closed or reset before any answer."""
        message = f"backend {backend_id!r} closed the connection: {detail}"
        return cls(backend_id, detail, error_response(502, "upstream_reset", message, backend_id))

    @classmethod
    def moved_away(cls, backend_id: str, detail: str) -> EarlierAttempt:
        """The request waited on a backend that traffic moved away from."""
        message = f"backend {backend_id!r} did not answer and no other backend could"
        return cls(backend_id, detail, error_response(504, "upstream_timeout", message, backend_id))

    @classmethod
    def connect_timeout(cls, backend_id: str) -> EarlierAttempt:
        """The connection was not made in time (nothing was sent)."""
        message = f"could not connect to backend {backend_id!r} in time"
        failure = error_response(504, "upstream_timeout", message, backend_id)
        return cls(backend_id, "connection timed out", failure)

    @classmethod
    def unreachable(cls, backend_id: str, cause: str) -> EarlierAttempt:
        """The connection was refused or could not be made (nothing was sent)."""
        message = f"could not connect to backend {backend_id!r}: {cause}"
        return cls(
            backend_id, cause, error_response(502, "upstream_unreachable", message, backend_id)
        )


class BodyTooLarge(Exception):
    """The client's streamed body exceeded the configured limit."""


class MovedAway(Exception):
    """An idempotent request stopped waiting for a backend that is no longer the first choice."""


class NoAnswer(Exception):
    """An idempotent request's connection closed or reset before any answer came back."""


class _Rescue(Ticket):
    """A waiting request the watchdog may move: its backend and the picker it came from."""

    __slots__ = ("backend_id", "pick")

    def __init__(self, since: float, backend_id: str, pick: PickBackend) -> None:
        super().__init__(since)
        self.backend_id = backend_id
        self.pick = pick


def _cause(exc: BaseException, kind: type[BodyTooLarge]) -> BodyTooLarge | None:
    """Return the first exception of ``kind`` in ``exc``'s cause/context chain, or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


async def _limited(stream: aiohttp.StreamReader, limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream.iter_any():
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(total)
        yield chunk


class HttpForwarder:
    """Forward HTTP requests to backends; see the module docstring for the contract."""

    def __init__(
        self,
        observer: TrafficObserver,
        *,
        max_body_size: Callable[[], int],
        trust_forwarded: Callable[[], bool],
        all_down: Callable[[], bool] = lambda: False,
        stall_after: Callable[[], float] = lambda: STALL_AFTER,
    ) -> None:
        self.observer = observer
        self.stall_after = stall_after
        """Seconds without an answer after which a waiting request is reported as stalled (the
        health-check timeout; may be replaced at any time)."""
        self._all_down = all_down
        self._max_body_size = max_body_size
        self._trust_forwarded = trust_forwarded
        self._waiting: set[_Rescue] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def upstream_headers(self, request: web.Request, backend: Backend) -> CIMultiDict[str]:
        """Return the headers for ``request`` as sent to ``backend``."""
        return upstream_request_headers(
            request.headers,
            peer=request.remote,
            scheme=request.scheme,
            host=request.host,
            request_id=request.get(REQUEST_ID),
            backend_auth=backend.auth_headers,
            trust_forwarded=self._trust_forwarded(),
        )

    async def forward(
        self,
        request: web.Request,
        pick: PickBackend,
        *,
        body: bytes | None = None,
        path_qs: str | None = None,
        earlier: EarlierAttempt | None = None,
    ) -> web.StreamResponse:
        """Forward ``request`` (or ``body`` in place of its body) and return the answer.

        ``earlier``: the request was already tried (and failed, unanswered) on some backends,
        by the fast lane (:mod:`gateway.proxy.fastlane`), which reported those failures: the
        walk goes on from the next backend, and ends with that failure if none is left.
        """
        started = time.perf_counter()
        group = route_group(request.path)
        limit = 0  # only a body streamed from the client is limited here
        if body is None and request.body_exists:
            limit = self._max_body_size()
        if body is None and request.content_length is not None and request.content_length > limit:
            return self._finish(
                request,
                None,
                group,
                started,
                error_response(
                    413,
                    "request_too_large",
                    f"request body of {request.content_length} bytes exceeds the "
                    f"gateway limit of {limit} bytes",
                ),
            )
        tried: set[str] = set(earlier.tried) if earlier is not None else set()
        last = earlier  # the latest backend that left the request unanswered
        raw = path_qs if path_qs is not None else request.raw_path
        while (backend := pick(frozenset(tried))) is not None:
            tried.add(backend.id)
            try:
                return await self._exchange(
                    request, backend, raw, body, limit, group, started, pick
                )
            except NoAnswer as exc:
                self.observer.upstream_failed(backend.id, "reset", str(exc))
                last = EarlierAttempt.reset(backend.id, str(exc))
                continue  # idempotent and unanswered: safe to try the next backend
            except MovedAway as exc:
                # The backend was found down (or traffic left it) while this request waited:
                # nothing came back, and the request is idempotent; try where traffic goes now.
                last = EarlierAttempt.moved_away(backend.id, str(exc))
                continue
            except aiohttp.ConnectionTimeoutError as exc:
                self.observer.upstream_failed(backend.id, "connect", repr(exc))
                last = EarlierAttempt.connect_timeout(backend.id)
                continue  # nothing was sent: safe to try the next backend
            except aiohttp.ClientConnectorError as exc:
                self.observer.upstream_failed(backend.id, "connect", str(exc))
                last = EarlierAttempt.unreachable(backend.id, str(exc.os_error or exc))
                continue  # nothing was sent: safe to try the next backend
            except BodyTooLarge:
                return self._finish(
                    request,
                    backend.id,
                    group,
                    started,
                    error_response(
                        413,
                        "request_too_large",
                        f"request body exceeds the gateway limit of {limit} bytes",
                    ),
                )
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                self.observer.upstream_failed(backend.id, "timeout", repr(exc))
                return self._finish(
                    request,
                    backend.id,
                    group,
                    started,
                    error_response(
                        504,
                        "upstream_timeout",
                        f"backend {backend.id!r} did not answer in time",
                        backend.id,
                    ),
                )
            except (
                aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError,
                aiohttp.ClientPayloadError,
            ) as exc:
                self.observer.upstream_failed(backend.id, "reset", repr(exc))
                return self._finish(
                    request,
                    backend.id,
                    group,
                    started,
                    error_response(
                        502,
                        "upstream_reset",
                        f"backend {backend.id!r} closed the connection: {exc}",
                        backend.id,
                    ),
                )
        if last is not None:  # every backend tried left it unanswered
            failure = last.failure
            if self._all_down():
                # Health checks already know: say so plainly rather than blame one backend.
                failure = error_response(
                    503,
                    "no_backend_available",
                    "every ComfyUI backend is down; the gateway will use the first one that "
                    "comes back",
                    last_backend=last.backend_id,
                    cause=last.cause,
                )
            return self._finish(request, last.backend_id, group, started, failure)
        return self._finish(
            request,
            None,
            group,
            started,
            error_response(
                503, "no_backend_available", "no healthy ComfyUI backend is available right now"
            ),
        )

    async def _exchange(
        self,
        request: web.Request,
        backend: Backend,
        raw_path_qs: str,
        body: bytes | None,
        limit: int,
        group: str,
        started: float,
        pick: PickBackend | None = None,
    ) -> web.StreamResponse:
        headers = self.upstream_headers(request, backend)
        if body is None and not request.body_exists:
            # Most of ComfyUI's traffic: the lean keep-alive pool (see gateway.proxy.upstream).
            headers["Host"] = backend.host_header
            rescue = None
            if pick is not None and request.method in IDEMPOTENT_METHODS:
                rescue = _Rescue(time.monotonic(), backend.id, pick)
                self._waiting.add(rescue)
                if self._watchdog is None:
                    self._watchdog = spawn(self._watch(), name="http-rescue-watchdog")
            try:
                answer = await backend.http.request(
                    request.method, backend.target(raw_path_qs), headers, ticket=rescue
                )
            except aiohttp.ClientConnectorError:
                raise
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if rescue is None:
                    raise
                raise NoAnswer(str(exc)) from exc  # idempotent, nothing came back: go on
            finally:
                if rescue is not None:
                    self._waiting.discard(rescue)
            try:
                return await self._relay_response(request, backend, answer, group, started)
            finally:
                answer.release()
        data: Any = None
        if body is not None:
            data = body
            headers.popall("Content-Length", None)
        elif request.body_exists:
            data = _limited(request.content, limit)
        try:
            async with backend.session.request(
                request.method,
                backend.url(raw_path_qs),
                headers=headers,
                data=data,
                allow_redirects=False,
                compress=None,
            ) as upstream:
                return await self._relay_response(request, backend, upstream, group, started)
        except aiohttp.ClientConnectionError as exc:
            # aiohttp wraps an error raised by the streamed body ("failed to send bytes"): a
            # chunked body that grew past the limit is the client's fault (413), not the
            # backend's (502), and must not count against the backend's health.
            too_large = _cause(exc, BodyTooLarge)
            if too_large is not None:
                raise too_large from exc
            raise

    async def _watch(self) -> None:
        """Report stalled requests; move waiting idempotent ones off a backend that is no longer
        the first choice.

        Runs only while requests wait on the lean pool; each check costs one ``pick`` per
        request waiting longer than ``RESCUE_AFTER``, and one ``upstream_stalled`` report per
        request waiting longer than ``stall_after()`` (none in normal operation).
        """
        try:
            while self._waiting:
                await asyncio.sleep(RESCUE_EVERY)
                now = time.monotonic()
                try:
                    stall_after = float(self.stall_after())
                except Exception:  # a settings getter must not kill the watchdog
                    stall_after = STALL_AFTER
                for rescue in list(self._waiting):
                    if not rescue.waiting:
                        continue
                    waited = now - rescue.since
                    if waited > stall_after:
                        # Observers must not raise; if one does, the watchdog must not die.
                        with contextlib.suppress(Exception):
                            self.observer.upstream_stalled(rescue.backend_id, waited)
                    if waited < RESCUE_AFTER:
                        continue
                    try:
                        first = rescue.pick(frozenset())
                    except Exception:  # a picker must not kill the watchdog
                        continue
                    if first is not None and first.id != rescue.backend_id:
                        rescue.abandon(
                            MovedAway(
                                f"no answer from {rescue.backend_id!r}; moved to {first.id!r}"
                            )
                        )
        finally:
            self._watchdog = None

    async def _relay_response(
        self,
        request: web.Request,
        backend: Backend,
        upstream: aiohttp.ClientResponse | UpstreamResponse,
        group: str,
        started: float,
    ) -> web.StreamResponse:
        status = upstream.status
        if status >= 500:
            self.observer.upstream_failed(backend.id, "status_5xx", str(status))
        else:
            self.observer.upstream_succeeded(backend.id)
        length = upstream.content_length
        if request.method == "HEAD" or status in (204, 304) or status < 200:
            response = web.Response(status=status)
            client_response_headers(upstream.headers, response.headers)
            return self._finish(request, backend.id, group, started, response)
        if length is not None and length <= SMALL_BODY:
            payload = await upstream.read()
            response = web.Response(status=status, body=payload)
            client_response_headers(upstream.headers, response.headers, drop_length=True)
            return self._finish(request, backend.id, group, started, response, len(payload))
        stream = web.StreamResponse(status=status)
        client_response_headers(upstream.headers, stream.headers)
        if length is not None:
            stream.content_length = length
        await stream.prepare(request)
        sent = 0
        async for chunk in upstream.content.iter_chunked(CHUNK):
            await stream.write(chunk)
            sent += len(chunk)
        await stream.write_eof()
        return self._finish(request, backend.id, group, started, stream, sent)

    def report(
        self, request: web.Request, response: web.StreamResponse, started: float
    ) -> web.StreamResponse:
        """Report an answer built elsewhere (the ComfyUI-aware layer), unless already reported."""
        if request.get(TRAFFIC_REPORTED):
            return response
        return self._finish(
            request, request.get(BACKEND_USED), route_group(request.path), started, response
        )

    def _finish(
        self,
        request: web.Request,
        backend: str | None,
        group: str,
        started: float,
        response: web.StreamResponse,
        sent: int | None = None,
    ) -> web.StreamResponse:
        if backend is not None:
            request[BACKEND_USED] = backend
        request[TRAFFIC_REPORTED] = True
        if sent is None:
            body = getattr(response, "body", None)
            sent = len(body) if isinstance(body, bytes | bytearray) else 0
        self.observer.request_finished(
            backend,
            request.method,
            group,
            response.status,
            time.perf_counter() - started,
            request.content_length or 0,
            sent,
        )
        return response
