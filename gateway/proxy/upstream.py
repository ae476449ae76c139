"""Upstream connections: pooled connections per backend, with its credentials.

A :class:`Backend` knows how to reach one ComfyUI server: its base URL, its connection pools and
the credentials that go to it and to no one else. :class:`BackendPool` keeps one per configured
server and follows configuration changes (a changed URL, credentials or limits gets new pools;
the old ones are closed once their in-flight requests are done).

Each backend has two pools for HTTP:

* :attr:`Backend.session`, an aiohttp ``ClientSession``: requests with a body and the job
  layer's own requests (websockets have :attr:`Backend.ws_session`, uncapped: one per client);
* :attr:`Backend.http`, a :class:`Http1Pool`: the proxy's requests without a body (``GET``,
  ``HEAD``, ...; most of ComfyUI's traffic). It speaks HTTP/1.1 keep-alive with aiohttp's own
  protocol, parser and writer, minus the per-request machinery of ``ClientSession`` (URL
  objects, cookie jar, tracing, redirects, auto headers) that costs more CPU than the rest of
  the proxy put together. It keeps the session's semantics: ``max_connections`` in use at once,
  ``timeouts.connect`` and ``timeouts.read``, aiohttp's exception types (a refused connection
  raises ``ClientConnectorError``), one retry of an idempotent request whose connection was
  closed under it, idle connections dropped after 30 s, bodies streamed with flow control.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.http import RawResponseMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config.models import GatewayConfig, ServerConfig
from gateway.proxy.rawpool import RawPool
from gateway.tasks import spawn

P = TypeVar("P", bound=asyncio.Protocol)


class Backend:
    """One ComfyUI server as the data plane sees it."""

    def __init__(self, server: ServerConfig) -> None:
        self.server = server
        self.id = server.id
        self.base_url = URL(server.url)
        self.auth_headers = _auth_headers(server)
        self.raw_auth = b"".join(
            f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
            for name, value in self.auth_headers.items()
        )
        """:attr:`auth_headers` as header lines (``Name: value\\r\\n`` each), for the fast lane."""
        self.raw_auth_names = frozenset(name.lower().encode() for name in self.auth_headers)
        """The lower-case names of :attr:`auth_headers` (a client's headers of these names
        never reach the backend)."""
        auth = server.auth
        self.query_token = (
            auth.query_token.get_secret_value() if auth and auth.query_token else None
        )
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=server.timeouts.connect,
            sock_read=server.timeouts.read,
        )
        self._session: aiohttp.ClientSession | None = None
        self._ws_session: aiohttp.ClientSession | None = None
        self._http: Http1Pool | None = None
        self._raw: RawPool | None = None
        base_path = self.base_url.raw_path.rstrip("/")
        self._target_prefix = base_path
        self.host_header = self.base_url.host_port_subcomponent or ""
        """The ``Host`` header requests to this backend carry (as aiohttp would set it)."""

    @property
    def http(self) -> Http1Pool:
        """Return this backend's keep-alive pool for requests without a body."""
        if self._http is None:
            self._http = Http1Pool(self)
        return self._http

    @property
    def raw(self) -> RawPool:
        """Return this backend's raw connections for the fast lane (slots shared with http)."""
        if self._raw is None:
            self._raw = RawPool(self.http, keepalive=KEEPALIVE)
        return self._raw

    def target(self, raw_path_qs: str) -> str:
        """Return the request target (path and query, still encoded) for a client's raw one.

        The client's bytes are kept as they are; the backend's ``query_token``, if any, replaces
        a ``token`` parameter the client sent.
        """
        raw = raw_path_qs if raw_path_qs.startswith("/") else "/" + raw_path_qs
        if self.query_token is not None:
            path, sep, query = raw.partition("?")
            kept = (
                [p for p in query.split("&") if p and p.split("=", 1)[0] != "token"] if sep else []
            )
            kept.append("token=" + _quote_query(self.query_token))
            raw = path + "?" + "&".join(kept)
        return self._target_prefix + raw

    @property
    def ws_session(self) -> aiohttp.ClientSession:
        """Return the session for upstream websockets: no ``max_connections`` cap.

        A relayed websocket holds its connection for as long as the client stays, one per
        client; counted against ``max_connections`` they would make the 101st browser tab wait
        for a free slot (and fail after the connect timeout) and starve the session's HTTP
        requests (``POST /prompt``) once that many tabs are open.
        """
        if self._ws_session is None or self._ws_session.closed:
            self._ws_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=False),
                timeout=self.timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
            )
        return self._ws_session

    @property
    def session(self) -> aiohttp.ClientSession:
        """Return this backend's pooled session, created on first use inside the loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.server.max_connections,
                limit_per_host=self.server.max_connections,
                keepalive_timeout=30,
                enable_cleanup_closed=False,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
            )
        return self._session

    def url(self, raw_path_qs: str) -> URL:
        """Return the upstream URL for a client's raw (still percent-encoded) path and query."""
        base = str(self.base_url)
        url = URL(
            base + raw_path_qs if raw_path_qs.startswith("/") else base + "/" + raw_path_qs,
            encoded=True,
        )
        if self.query_token is not None:
            url = url.update_query(token=self.query_token)
        return url

    def ws_url(self, raw_path_qs: str) -> URL:
        """Return the upstream websocket URL (``ws://`` or ``wss://``)."""
        url = self.url(raw_path_qs)
        return url.with_scheme("wss" if url.scheme == "https" else "ws")

    def same_wiring(self, server: ServerConfig) -> bool:
        """Return True when ``server`` can keep using this backend's session."""
        s = self.server
        return (s.url, s.auth, s.timeouts, s.max_connections) == (
            server.url,
            server.auth,
            server.timeouts,
            server.max_connections,
        )

    async def close(self) -> None:
        """Close the connection pools."""
        if self._raw is not None:
            self._raw.close()
        if self._http is not None:
            self._http.close()
        if self._session is not None:
            await self._session.close()
        if self._ws_session is not None:
            await self._ws_session.close()


def _quote_query(value: str) -> str:
    return str(URL.build(query={"t": value}, encoded=False)).split("=", 1)[1]


def _auth_headers(server: ServerConfig) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    auth = server.auth
    if auth is None:
        return headers
    for name, value in auth.headers.items():
        headers[name] = value.get_secret_value()
    if auth.basic is not None:
        raw = f"{auth.basic.username}:{auth.basic.password.get_secret_value()}"
        headers["Authorization"] = "Basic " + base64.b64encode(raw.encode()).decode()
    if auth.bearer_token is not None:
        headers["Authorization"] = "Bearer " + auth.bearer_token.get_secret_value()
    return headers


class BackendPool:
    """One :class:`Backend` per configured server, kept in step with the configuration."""

    def __init__(self, config: GatewayConfig) -> None:
        self._backends: dict[str, Backend] = {s.id: Backend(s) for s in config.servers}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, server_id: str) -> Backend | None:
        """Return the backend for a server id, or None."""
        return self._backends.get(server_id)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._backends.values()))

    def sync(self, config: GatewayConfig) -> None:
        """Follow a new configuration: add, rewire or drop backends."""
        wanted = {s.id: s for s in config.servers}
        for server_id, backend in list(self._backends.items()):
            server = wanted.get(server_id)
            if server is None or not backend.same_wiring(server):
                del self._backends[server_id]
                self._close_later(backend)
            elif server != backend.server:
                backend.server = server
        for server_id, server in wanted.items():
            if server_id not in self._backends:
                self._backends[server_id] = Backend(server)

    def _close_later(self, backend: Backend) -> None:
        # In-flight requests hold their own connection; a short grace lets them finish reading.
        async def close() -> None:
            await asyncio.sleep(5)
            await backend.close()

        try:
            task = spawn(close(), name=f"close-backend-{backend.id}")
        except RuntimeError:  # no running loop (tests building pools synchronously)
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every session (at application cleanup)."""
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await asyncio.gather(*(b.close() for b in self._backends.values()))


IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
KEEPALIVE = 30.0
"""Seconds an idle upstream connection is kept (aiohttp's backend servers keep theirs 75 s)."""


class Http1Pool:
    """Keep-alive HTTP/1.1 connections to one backend, for requests without a body.

    See the module docstring for what it keeps of ``ClientSession``'s behaviour. Not for
    websockets (:attr:`Backend.session` does those) nor for request bodies.
    """

    def __init__(self, backend: Backend) -> None:
        server = backend.server
        url = backend.base_url
        self._host = url.raw_host or ""
        self._port = url.port
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if url.scheme == "https" else None
        )
        self._key = ConnectionKey(
            self._host, self._port or 0, self._ssl is not None, True, None, None, None, None
        )
        self._limit = server.max_connections
        self._connect_timeout = server.timeouts.connect
        self._read_timeout = server.timeouts.read
        self._idle: deque[tuple[ResponseHandler, float]] = deque()
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        *,
        ticket: Ticket | None = None,
    ) -> UpstreamResponse:
        """Send a request without a body; return the answer once its headers arrived.

        Raises what ``ClientSession.request`` raises: ``ClientConnectorError`` (nothing was
        sent), ``ConnectionTimeoutError``, ``SocketTimeoutError``, ``ServerDisconnectedError``,
        ``ClientOSError``; and the exception given to :meth:`Ticket.abandon`, if the caller
        gave up waiting. The caller must :meth:`UpstreamResponse.release` the answer.
        """
        loop = asyncio.get_running_loop()
        retry = method in IDEMPOTENT_METHODS
        fresh = False
        while True:
            proto = await self._acquire(loop, ticket, fresh=fresh)
            try:
                if ticket is not None:
                    ticket.waiting_on(proto)
                proto.set_response_params(
                    read_timeout=self._read_timeout,
                    skip_payload=method == "HEAD",
                    read_until_eof=True,
                    auto_decompress=False,
                )
                writer = StreamWriter(proto, loop)
                await writer.write_headers(f"{method} {target} HTTP/1.1", headers)
                await writer.write_eof()
                proto.start_timeout()
                message, payload = await proto.read()
                while 100 <= message.code < 200 and message.code != 101:
                    message, payload = await proto.read()  # 1xx interim answers: skipped
                if ticket is not None:
                    ticket.answered()
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                self._release(proto, reusable=False)
                if retry:  # RFC 9112 §9.3.1, as ClientSession does
                    retry, fresh = False, True
                    continue
                raise exc
            except aiohttp.ClientConnectionResetError as exc:
                self._release(proto, reusable=False)
                if retry:
                    retry, fresh = False, True
                    continue
                raise aiohttp.ClientOSError(str(exc)) from exc
            except BaseException:
                self._release(proto, reusable=False)
                raise
            return UpstreamResponse(self, proto, message, payload)

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, ticket: Ticket | None, *, fresh: bool = False
    ) -> ResponseHandler:
        """Return a connection: a kept-alive one, or (``fresh``, or none idle) a new one.

        A retry asks for a fresh one: when a backend dies, its other kept-alive connections
        die with it, and the loop may not have noticed yet.
        """
        while True:
            now = loop.time()
            idle = self._idle
            while idle and not fresh:
                proto, since = idle.pop()  # the most recently used: the likeliest alive
                if proto.is_connected() and not proto.should_close and now - since < KEEPALIVE:
                    self._in_use += 1
                    return proto
                proto.close()
            if self._in_use < self._limit:
                self._in_use += 1
                try:
                    return await self._connect(loop)
                except BaseException:
                    self._in_use -= 1
                    self._wake()
                    raise
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            if ticket is not None:
                ticket.waiting_on(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled() and waiter.done():
                    self._wake()  # pass the slot we were given on
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                raise

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> ResponseHandler:
        if self._closed:
            raise aiohttp.ClientConnectorError(self._key, OSError("connection pool closed"))
        try:
            proto = await self.open_connection(lambda: ResponseHandler(loop))
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(
                f"Connection timeout to host {self._host}:{self._port}"
            ) from exc
        except OSError as exc:
            raise aiohttp.ClientConnectorError(self._key, exc) from exc
        return proto

    async def open_connection(self, factory: Callable[[], P]) -> P:
        """Open a connection to the backend with ``factory``'s protocol (also the fast lane's).

        Raises ``TimeoutError`` after the backend's connect timeout, ``OSError`` when refused
        or unreachable. Takes no slot: the caller holds one.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, proto = await loop.create_connection(
                factory,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
            )
        return proto

    def take_slot(self) -> bool:
        """Take one of the ``max_connections`` slots if one is free and nobody waits for it."""
        if self._in_use < self._limit and not self._waiters and not self._closed:
            self._in_use += 1
            return True
        return False

    def give_back_slot(self) -> None:
        """Give back a slot taken with :meth:`take_slot`."""
        self._in_use -= 1
        self._wake()

    def _release(self, proto: ResponseHandler, *, reusable: bool) -> None:
        self._in_use -= 1
        if reusable and not self._closed and proto.is_connected() and not proto.should_close:
            now = asyncio.get_running_loop().time()
            idle = self._idle
            while idle and now - idle[0][1] >= KEEPALIVE:
                idle.popleft()[0].close()
            idle.append((proto, now))
        else:
            proto.close()
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close the idle connections; those in use close when released."""
        self._closed = True
        while self._idle:
            self._idle.pop()[0].close()


class Ticket:
    """Lets the caller of :meth:`Http1Pool.request` give up while it still waits.

    ``abandon(exc)`` makes the request raise ``exc`` if it is waiting for a free connection or
    for its answer's headers (its connection is then closed, never reused); once the headers
    arrived it does nothing. Cheap enough to create for every request.
    """

    __slots__ = ("_on", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self._on: ResponseHandler | asyncio.Future[None] | None = None

    def waiting_on(self, thing: ResponseHandler | asyncio.Future[None]) -> None:
        """Record what the request waits on now (a pool slot or a connection's answer)."""
        self._on = thing

    def answered(self) -> None:
        """The headers arrived: nothing can be abandoned any more."""
        self._on = None

    @property
    def waiting(self) -> bool:
        """Return True while the request has no answer yet."""
        return self._on is not None

    def abandon(self, exc: BaseException) -> None:
        """Make the waiting request raise ``exc`` (no-op once answered)."""
        on, self._on = self._on, None
        if isinstance(on, ResponseHandler) or (on is not None and not on.done()):
            on.set_exception(exc)


class UpstreamResponse:
    """A backend's answer from :class:`Http1Pool`: status, headers and the streamed body.

    Shaped like the parts of ``aiohttp.ClientResponse`` the proxy uses (``status``,
    ``headers``, ``content``, ``read()``, ``release()``).
    """

    __slots__ = ("_pool", "_proto", "content", "headers", "status")

    def __init__(
        self,
        pool: Http1Pool,
        proto: ResponseHandler,
        message: RawResponseMessage,
        payload: StreamReader,
    ) -> None:
        self._pool: Http1Pool | None = pool
        self._proto = proto
        self.status: int = message.code
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content = payload

    @property
    def content_length(self) -> int | None:
        """Return the ``Content-Length`` of the answer, if it has a valid one."""
        value = self.headers.get("Content-Length")
        if value is None or not value.isdigit():
            return None
        return int(value)

    async def read(self) -> bytes:
        """Read the whole body, then give the connection back."""
        try:
            data = await self.content.read()
        except BaseException:
            self.release()
            raise
        self.release()
        return data

    def release(self) -> None:
        """Give the connection back: kept alive when the body was read to its end."""
        pool = self._pool
        if pool is None:
            return
        self._pool = None
        pool._release(self._proto, reusable=self.content.is_eof())
