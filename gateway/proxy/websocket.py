"""Websocket relay: one client socket, one or more upstream sockets, surviving failover.

A ComfyUI client holds one socket (``/ws?clientId=X``). Events of a prompt reach only the
socket registered under the prompt's ``client_id`` *on the backend that runs it*, and are never
buffered (shared/comfyui-api.md §3). So each client socket is a :class:`ClientBridge` that keeps:

* a **primary** upstream socket on the serving backend, with the same ``clientId``;
* **secondary** upstream sockets on other backends that still run prompts of this client
  (the job layer asks for them with :meth:`WsRelay.ensure_upstream` before it forwards a prompt).

Rules:

* The client's clientId is kept; when it gives none, the gateway mints one (``uuid4().hex``, as
  ComfyUI does) and uses it towards every backend, so the ``sid`` the client learns is stable.
* The client's first text message, when it is ``feature_flags``, is remembered and replayed as
  the first message on every upstream socket the bridge opens later; the backend's reply to a
  replay is not passed to the client (it already has one).
* Text and binary frames relay both ways unchanged. Downstream ``status`` messages come from the
  primary only (the others would report another backend's queue).
* When an upstream socket dies (backend down, frozen: heartbeats notice, reset), the bridge does
  not close the client. It waits (bounded) for a serving backend, closes what is left of the old
  socket *first* (ComfyUI deregisters a new socket when an old one with the same id closes
  late), opens the new one with the same clientId and replays ``feature_flags``; the new
  backend's greeting ``status`` tells the client the new queue. Only when no backend comes back
  within ``reattach_timeout`` is the client closed (1011 with a reason).
* When the client goes, every upstream socket of the bridge is closed; close codes from a
  deliberate upstream close pass to the client when failover is not possible.
* Both sides send heartbeats so a dead peer is noticed.
* No ``permessage-deflate`` on either side. ComfyUI's server would accept it from a browser, but
  behind the gateway it cost ~85 KB of zlib state per client socket (measured: 114 KB instead
  of 28 KB per idle browser-like client) and a compression of every downstream message, for
  small JSON and previews that are PNG/JPEG already. Clients see the same messages; only the
  wire encoding differs (the extension is optional for both peers, RFC 7692).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.proxy.headers import upstream_request_headers
from gateway.proxy.observer import TrafficObserver
from gateway.proxy.upstream import Backend
from gateway.tasks import cancel_and_wait, spawn

log = structlog.get_logger("gateway.ws")

WsMessageHook = Callable[[str, str, dict[str, Any]], dict[str, Any] | None]
"""Called with (client_id, backend_id, parsed JSON message) for every downstream text message;
returns a replacement message, None to pass it unchanged, or :data:`DROP` to drop it."""

AttachHook = Callable[[str, str], Awaitable[None]]
"""Called with (client_id, backend_id) after a client's primary socket opened on a backend."""

DROP: dict[str, Any] = {}
"""Returned by a message hook to drop a message (compared by identity)."""

_ENDS = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})
"""What ``receive()`` returns when a socket is done (``async for`` stops on the first three)."""

COALESCE_MAX = 16 * 1024
"""Frames up to this size written in one event-loop iteration leave in one ``write``."""


def message_hook_keywords(*keywords: str) -> Callable[[Any], Any]:
    """Declare the only substrings a message hook can act on (a decorator).

    The relay skips parsing (and calling the hooks for) a downstream text message that contains
    none of the keywords of every hook, as long as each hook declared some: most messages
    (``progress`` without a prompt, previews' metadata, crystools' monitor...) are then passed
    on as they came. A hook without keywords sees every message.
    """

    def mark(func: Any) -> Any:
        func.ws_keywords = keywords
        return func

    return mark


class _CoalescingTransport:
    """A websocket writer's transport that batches small data frames per loop iteration.

    aiohttp writes each frame with its own ``transport.write`` (a ``send`` system call). Under
    load the relay reads a dozen frames in one ``recv`` and used to write each of them with a
    syscall of its own: ~40 % of the relay's CPU. Frames up to :data:`COALESCE_MAX` are kept
    until the loop has run what is ready and then leave in one write, like a proxy that
    forwards what it read. Control frames (close, ping, pong) and large frames flush what is
    kept first and go at once, so order is kept and a close frame is on the wire before aiohttp
    closes the transport (it closes it directly, not through this object). Data written after
    the transport started closing is dropped (aiohttp would raise on it; the peer is gone).
    """

    __slots__ = ("_loop", "_parts", "_scheduled", "_transport", "get_extra_info", "is_closing")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []
        self._scheduled = False
        # The writer asks before every frame: the transport's own methods, no Python frame.
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info

    def write(self, data: bytes) -> None:
        parts = self._parts
        # Every write of aiohttp's writer starts a frame (a large unmasked payload is written
        # after its header: its first byte may look like a control frame's, which only makes
        # this flush early). Bit 3 of the first byte is set for control opcodes (0x8-0xA).
        if len(data) > COALESCE_MAX or data[0] & 0x08:
            if parts:
                parts.append(data)
                self._flush()
            else:
                self._transport.write(data)
            return
        parts.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        parts = self._parts
        if not parts:
            return
        self._parts = []
        if self._transport.is_closing():
            return
        self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def _release_server_handshake(request: web.Request) -> None:
    """Drop the HTTP request parser of an upgraded client connection (~1 KB per client).

    After the upgrade aiohttp feeds the connection's bytes to the websocket reader only; the
    HTTP parser (and the header lists of its last parse) stays referenced until the connection
    ends. ``RequestHandler._parser`` is private and checked for None wherever aiohttp uses it;
    ``tests/proxy/test_ws_memory.py`` guards it.
    """
    protocol = request.protocol
    if getattr(protocol, "_upgraded", False) and getattr(protocol, "_parser", None) is not None:
        protocol._parser = None  # type: ignore[union-attr]


def _release_client_handshake(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop what an upstream socket keeps of its handshake (~2 KB per socket).

    The 101 response's headers, the request's (with the backend's credentials) and the HTTP
    response parser of the connection are not used once the websocket reader owns it. All
    private (``ClientResponse._headers``, ``_raw_headers``, ``_request_info``, ``_cache``,
    ``ResponseHandler._parser``), guarded by ``tests/proxy/test_ws_memory.py``; left alone when
    aiohttp's shape differs.
    """
    response = getattr(ws, "_response", None)
    if response is None:
        return
    if hasattr(response, "_headers") and hasattr(response, "_raw_headers"):
        response._headers = _NO_HEADERS
        response._raw_headers = ()
    info = getattr(response, "_request_info", None)
    if isinstance(info, aiohttp.RequestInfo):
        response._request_info = aiohttp.RequestInfo(
            info.url, info.method, _NO_HEADERS, info.real_url
        )
    cache = getattr(response, "_cache", None)
    if isinstance(cache, dict):  # aiohttp's reify cache of the same
        for name in ("headers", "raw_headers", "request_info"):
            cache.pop(name, None)
    connection = getattr(response, "connection", None)
    protocol = getattr(connection, "protocol", None)
    if getattr(protocol, "_payload_parser", None) is not None and hasattr(protocol, "_parser"):
        protocol._parser = None  # type: ignore[union-attr]


def _coalesce_writes(ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    """Put a :class:`_CoalescingTransport` under a prepared/connected websocket's writer.

    Uses aiohttp's private ``_writer.transport`` (checked by ``tests/proxy/test_ws_coalesce.py``);
    when it is not there the socket keeps writing frame by frame.
    """
    writer = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None or isinstance(transport, _CoalescingTransport):
        return
    writer.transport = _CoalescingTransport(transport, asyncio.get_running_loop())  # type: ignore[union-attr]


def _share_compression_state(
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    lock: asyncio.Lock,
    tasks: set[asyncio.Task[None]],
) -> None:
    """Give a writer that does not compress the relay's lock and task set (~0.7 KB a socket).

    aiohttp's writer creates an ``asyncio.Lock`` and a set for compressed frames only (private
    ``_send_lock`` and ``_background_tasks``); the relay compresses nothing, on either side.
    Shared ones stay correct should a compressed frame ever be sent (they serialise it with
    other sockets' compressed frames, which is only slower).
    """
    writer = getattr(ws, "_writer", None)
    if getattr(writer, "compress", None) != 0:
        return
    if isinstance(getattr(writer, "_send_lock", None), asyncio.Lock):
        writer._send_lock = lock  # type: ignore[union-attr]
    if isinstance(getattr(writer, "_background_tasks", None), set):
        writer._background_tasks = tasks  # type: ignore[union-attr]


@dataclass
class WsSettings:
    """Knobs of the relay (from ``proxy`` settings)."""

    max_msg_size: int = 64 * 1024 * 1024
    heartbeat: float = 30.0
    reattach_timeout: float = 30.0
    connect_timeout: float = 10.0
    trust_forwarded: bool = False


@dataclass(eq=False, slots=True)
class _Upstream:
    backend_id: str
    ws: aiohttp.ClientWebSocketResponse
    reader: asyncio.Task[None] | None = None
    swallow_flags_reply: bool = False
    closed_by_us: bool = False


@dataclass(eq=False, slots=True)
class ClientBridge:
    """One client websocket and its upstream sockets.

    An idle bridge costs no task of its own: the client → backend relay runs in the request
    handler's task, each upstream socket has its reader task, and a keeper task exists only
    while the primary socket is being re-attached (:meth:`WsRelay._lose_primary`).
    """

    client_id: str
    client: web.WebSocketResponse
    request: web.Request
    feature_flags: str | None = None
    first_client_text_seen: bool = False
    primary: str | None = None
    upstreams: dict[str, _Upstream] = field(default_factory=dict)
    superseded: bool = False
    last_upstream_close: int | None = None
    """Close code of the last upstream socket the backend closed (passed on when giving up)."""
    primary_lost: bool = False
    """Set when the primary socket must be (re-)attached; the keeper task clears it."""
    keeper: asyncio.Task[None] | None = None
    """The task re-attaching the primary socket, while one runs."""
    backoff: float = 0.0
    attached_at: float = 0.0
    ready: bool = False
    """Set once the client handshake is done: upstream readers start then."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class UpstreamRefused(Exception):
    """A backend refused the websocket handshake with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WsRelay:
    """Accept client websockets and relay them to backends (see module docstring)."""

    def __init__(
        self,
        *,
        backend_for: Callable[[str], Backend | None],
        serving_id: Callable[[], str | None],
        candidates: Callable[[frozenset[str]], list[str]],
        observer: TrafficObserver,
        settings: Callable[[], WsSettings],
        queue_length: Callable[[str], int | None] = lambda backend_id: None,
    ) -> None:
        self._backend_for = backend_for
        self._serving_id = serving_id
        self._candidates = candidates
        self._observer = observer
        self._settings = settings
        self._queue_length = queue_length
        self._bridges: dict[str, ClientBridge] = {}
        self._all: set[ClientBridge] = set()
        self._serving_changed = asyncio.Condition()
        self.message_hooks: list[WsMessageHook] = []
        self.attach_hooks: list[AttachHook] = []
        """Run (in the background) whenever a client's primary socket opens on a backend."""
        self.keep_secondary: Callable[[str, str], bool] = lambda client_id, backend_id: False
        self._pins: Counter[tuple[str, str]] = Counter()
        self._keywords: tuple[str, ...] | None = None
        self._writer_lock = asyncio.Lock()
        self._writer_tasks: set[asyncio.Task[None]] = set()
        self._keywords_key: tuple[int, int] | None = None

    # -- public API used by the app and the job layer ------------------------------------

    def bridge(self, client_id: str) -> ClientBridge | None:
        """Return the live bridge of a client id, or None."""
        return self._bridges.get(client_id)

    def connected_clients(self) -> int:
        """Return how many client sockets are open."""
        return len(self._all)

    async def serving_changed(self) -> None:
        """Tell bridges that the serving backend changed (they move their primary socket)."""
        async with self._serving_changed:
            self._serving_changed.notify_all()
        for bridge in list(self._all):
            self._lose_primary(bridge)

    async def ensure_upstream(self, client_id: str, backend_id: str) -> bool:
        """Make sure the client has an upstream socket on ``backend_id`` (before a prompt)."""
        bridge = self._bridges.get(client_id)
        if bridge is None or bridge.superseded or bridge.client.closed:
            return False
        async with bridge.lock:
            if backend_id in bridge.upstreams and not bridge.upstreams[backend_id].ws.closed:
                return True
            try:
                await self._open_upstream(bridge, backend_id)
            except (aiohttp.ClientError, TimeoutError, UpstreamRefused) as exc:
                log.warning(
                    "ws upstream open failed",
                    client_id=client_id,
                    server=backend_id,
                    error=str(exc),
                )
                return False
        return True

    @contextlib.contextmanager
    def pinned(self, client_id: str | None, backend_id: str) -> Iterator[None]:
        """Keep the client's socket on ``backend_id`` open for the duration of the block.

        The job layer pins it while ``POST /prompt`` is in flight there: until the backend
        accepts the prompt nothing in :attr:`keep_secondary` knows about it, and a serving change
        in that window would close the socket the prompt's events must arrive on (ComfyUI does
        not buffer them). ``client_id`` None pins nothing.
        """
        if client_id is None:
            yield
            return
        key = (client_id, backend_id)
        self._pins[key] += 1
        try:
            yield
        finally:
            self._pins[key] -= 1
            if self._pins[key] <= 0:
                del self._pins[key]

    def _keeps(self, client_id: str, backend_id: str) -> bool:
        """Return True when a non-primary socket must stay open (pinned or still needed)."""
        return self._pins[(client_id, backend_id)] > 0 or self.keep_secondary(client_id, backend_id)

    def release_upstream(self, client_id: str, backend_id: str) -> None:
        """Close a client's socket on a backend it no longer needs (never the primary).

        The close runs in the background: a frozen backend would hold the close handshake.
        """
        bridge = self._bridges.get(client_id)
        if bridge is None or backend_id == bridge.primary or self._pins[(client_id, backend_id)]:
            return
        upstream = bridge.upstreams.pop(backend_id, None)
        if upstream is not None:
            spawn(self._close_upstream(upstream), name=f"ws-release-{client_id}-{backend_id}")

    async def send_to_client(self, client_id: str, message: dict[str, Any]) -> bool:
        """Send a JSON message to a client's socket; return False when it is not connected."""
        bridge = self._bridges.get(client_id)
        if bridge is None or bridge.client.closed:
            return False
        with contextlib.suppress(ConnectionError, RuntimeError):
            await bridge.client.send_str(json.dumps(message))
            return True
        return False

    async def close_all(self, code: int = WSCloseCode.GOING_AWAY) -> None:
        """Close every client and upstream socket (application shutdown)."""
        for bridge in list(self._all):
            bridge.superseded = True
            await self._close_upstreams(bridge)
            with contextlib.suppress(Exception):
                await bridge.client.close(code=code, message=b"gateway shutting down")

    # -- handshake ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve a client websocket upgrade on ``/ws`` or ``/api/ws``."""
        settings = self._settings()
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        client = web.WebSocketResponse(
            max_msg_size=settings.max_msg_size,
            heartbeat=settings.heartbeat,
            autoping=True,
            compress=False,  # no permessage-deflate: see the module docstring
        )
        bridge = ClientBridge(client_id=client_id, client=client, request=request)
        previous = self._bridges.get(client_id)
        if previous is not None:
            # Same clientId reconnecting (or a duplicated tab): the newer socket wins, like
            # ComfyUI; close the older one's upstreams first so ComfyUI's late deregistration
            # cannot remove the new registration (comfyui-api.md §3.1).
            previous.superseded = True
            async with previous.lock:
                await self._close_upstreams(previous)
        self._bridges[client_id] = bridge
        try:
            try:
                async with bridge.lock:
                    await self._attach_primary(bridge, frozenset())
            except UpstreamRefused as exc:
                return web.Response(status=exc.status, text=str(exc))
            if not bridge.upstreams:
                return web.json_response(
                    {
                        "error": {
                            "type": "no_backend_available",
                            "message": "no ComfyUI backend accepted the websocket",
                        }
                    },
                    status=503,
                )
            await client.prepare(request)
            _coalesce_writes(client)
            _share_compression_state(client, self._writer_lock, self._writer_tasks)
            _release_server_handshake(request)
            bridge.ready = True
            bridge.attached_at = asyncio.get_running_loop().time()
            for upstream in bridge.upstreams.values():
                if upstream.reader is None:
                    self._start_reader(bridge, upstream)
            self._all.add(bridge)
            self._observer.ws_opened("client", None)
            try:
                await self._run(bridge)
            finally:
                self._all.discard(bridge)
                self._observer.ws_closed("client", None)
            return client
        finally:
            if self._bridges.get(client_id) is bridge:
                del self._bridges[client_id]
            # The handler is cancelled when the client's connection drops (the app runs with
            # handler_cancellation): the upstream sockets must close all the same.
            await asyncio.shield(
                spawn(self._teardown(bridge), name=f"ws-teardown-{bridge.client_id}")
            )

    async def _teardown(self, bridge: ClientBridge) -> None:
        await cancel_and_wait(bridge.keeper)
        await self._close_upstreams(bridge)

    def _upstream_path(self, bridge: ClientBridge) -> str:
        url = URL(bridge.request.raw_path, encoded=True)
        return str(url.update_query(clientId=bridge.client_id))

    async def _open_upstream(
        self, bridge: ClientBridge, backend_id: str, *, primary: bool = False
    ) -> _Upstream:
        backend = self._backend_for(backend_id)
        if backend is None:
            raise UpstreamRefused(502, f"unknown backend {backend_id!r}")
        settings = self._settings()
        stale = bridge.upstreams.pop(backend_id, None)
        if stale is not None:
            await self._close_upstream(stale)
        headers = upstream_request_headers(
            bridge.request.headers,
            peer=bridge.request.remote,
            scheme=bridge.request.scheme,
            host=bridge.request.host,
            request_id=None,
            backend_auth=backend.auth_headers,
            trust_forwarded=settings.trust_forwarded,
            websocket=True,
        )
        try:
            ws = await backend.ws_session.ws_connect(
                backend.ws_url(self._upstream_path(bridge)),
                headers=headers,
                max_msg_size=settings.max_msg_size,
                heartbeat=settings.heartbeat,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                compress=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise UpstreamRefused(
                exc.status, f"backend {backend_id!r} refused: {exc.message}"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            self._observer.upstream_failed(backend_id, "connect", str(exc))
            raise
        _coalesce_writes(ws)
        _share_compression_state(ws, self._writer_lock, self._writer_tasks)
        _release_client_handshake(ws)
        upstream = _Upstream(backend_id=backend_id, ws=ws)
        if bridge.feature_flags is not None:
            upstream.swallow_flags_reply = True
            await ws.send_str(bridge.feature_flags)
        bridge.upstreams[backend_id] = upstream
        if primary:
            # Before the reader starts: the backend's greeting `status` (the new queue) must
            # pass to the client, and only the primary's status messages do.
            bridge.primary = backend_id
            for hook in self.attach_hooks:
                spawn(hook(bridge.client_id, backend_id), name=f"ws-attach-{backend_id}")
        self._observer.ws_opened("upstream", backend_id)
        if bridge.ready:
            self._start_reader(bridge, upstream)
        return upstream

    def _start_reader(self, bridge: ClientBridge, upstream: _Upstream) -> None:
        upstream.reader = spawn(
            self._pump_down(bridge, upstream),
            name=f"ws-down-{bridge.client_id}-{upstream.backend_id}",
        )

    async def _attach_primary(self, bridge: ClientBridge, tried: frozenset[str]) -> bool:
        """Open the primary socket on the serving backend (or the next candidate)."""
        tried_now = set(tried)
        while True:
            options = [c for c in self._candidates(frozenset(tried_now)) if c not in tried_now]
            if not options:
                return False
            backend_id = options[0]
            tried_now.add(backend_id)
            existing = bridge.upstreams.get(backend_id)
            if existing is not None and not existing.ws.closed:
                # Promoted from secondary: its greeting was not passed on, so tell the client
                # the queue of its new backend ourselves.
                bridge.primary = backend_id
                await self._send_status(bridge, backend_id)
                return True
            try:
                await asyncio.wait_for(
                    self._open_upstream(bridge, backend_id, primary=True),
                    self._settings().connect_timeout,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("ws upstream unavailable", server=backend_id, error=str(exc))
                continue
            bridge.primary = backend_id
            return True

    async def _send_status(self, bridge: ClientBridge, backend_id: str) -> None:
        queue = self._queue_length(backend_id)
        message = {
            "type": "status",
            "data": {
                "status": {"exec_info": {"queue_remaining": queue if queue is not None else 0}}
            },
        }
        with contextlib.suppress(ConnectionError, RuntimeError):
            await bridge.client.send_str(json.dumps(message))

    # -- relay loops ----------------------------------------------------------------------

    async def _run(self, bridge: ClientBridge) -> None:
        """Relay client → primary upstream in the handler's task until the client goes."""
        client = bridge.client
        receive = client.receive
        relayed = self._observer.ws_relayed
        try:
            while True:
                msg = await receive()
                kind = msg.type
                if kind is WSMsgType.TEXT:
                    data = msg.data
                    binary = False
                    if not bridge.first_client_text_seen:
                        bridge.first_client_text_seen = True
                        if _is_feature_flags(data):
                            bridge.feature_flags = data
                elif kind is WSMsgType.BINARY:
                    data = msg.data
                    binary = True
                elif kind in _ENDS:
                    break
                else:
                    continue
                upstream = bridge.upstreams.get(bridge.primary)  # type: ignore[arg-type]
                if upstream is None or upstream.ws.closed:
                    continue  # between backends: ComfyUI ignores client messages anyway (§3.1)
                try:
                    if binary:
                        await upstream.ws.send_bytes(data)
                    else:
                        await upstream.ws.send_str(data)
                except (ConnectionError, RuntimeError):
                    continue
                relayed("to_upstream", upstream.backend_id, binary, len(data))
        finally:
            if not client.closed:
                with contextlib.suppress(Exception):
                    await client.close()

    async def _pump_down(self, bridge: ClientBridge, upstream: _Upstream) -> None:
        """Relay one upstream → client until that upstream closes."""
        client = bridge.client
        backend_id = upstream.backend_id
        receive = upstream.ws.receive
        relayed = self._observer.ws_relayed
        try:
            while True:
                msg = await receive()
                kind = msg.type
                if kind is WSMsgType.TEXT:
                    text = self._downstream_text(bridge, upstream, msg.data)
                    if text is None:
                        continue
                    if client.closed:
                        break
                    await client.send_str(text)
                    relayed("to_client", backend_id, False, len(text))
                elif kind is WSMsgType.BINARY:
                    if client.closed:
                        break
                    data = msg.data
                    await client.send_bytes(data)
                    relayed("to_client", backend_id, True, len(data))
                elif kind in _ENDS:
                    break
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._observer.ws_closed("upstream", backend_id)
            if not upstream.closed_by_us:
                code = upstream.ws.close_code
                bridge.last_upstream_close = code
                if bridge.upstreams.get(backend_id) is upstream:
                    del bridge.upstreams[backend_id]
                if backend_id == bridge.primary and is_deliberate_close(code):
                    # The backend meant it (normal or application close): pass it on.
                    spawn(
                        self._close_client(bridge, code or WSCloseCode.OK),
                        name=f"ws-close-{bridge.client_id}",
                    )
                else:
                    if not client.closed:
                        self._observer.upstream_failed(backend_id, "reset", "websocket closed")
                    if backend_id == bridge.primary:
                        self._lose_primary(bridge)

    async def _close_client(self, bridge: ClientBridge, code: int) -> None:
        bridge.superseded = True
        with contextlib.suppress(Exception):
            await bridge.client.close(code=code, message=b"closed by the ComfyUI backend")

    def _hook_keywords(self) -> tuple[str, ...] | None:
        """Return the substrings some message hook may act on; None: every message counts."""
        hooks = self.message_hooks
        key = (id(hooks), len(hooks))
        if self._keywords_key != key:
            words: list[str] = []
            for hook in hooks:
                declared = getattr(hook, "ws_keywords", None)
                if declared is None:
                    words = None  # type: ignore[assignment]
                    break
                words.extend(declared)
            self._keywords = None if words is None else tuple(words)
            self._keywords_key = key
        return self._keywords

    def _downstream_text(self, bridge: ClientBridge, upstream: _Upstream, text: str) -> str | None:
        """Return the text to pass to the client (maybe rewritten by hooks), or None to drop."""
        if not upstream.swallow_flags_reply and upstream.backend_id == bridge.primary:
            # From the primary the relay itself drops nothing: only the hooks may care.
            hooks = self.message_hooks
            keywords = (
                self._keywords
                if self._keywords_key == (id(hooks), len(hooks))
                else self._hook_keywords()
            )
            if keywords is not None:
                for word in keywords:
                    if word in text:
                        break
                else:
                    return text
        parsed = _parse(text)
        if parsed is None:
            return text
        kind = parsed.get("type")
        if kind == "feature_flags" and upstream.swallow_flags_reply:
            upstream.swallow_flags_reply = False
            return None
        if kind == "status" and upstream.backend_id != bridge.primary:
            return None
        rewritten = False
        for hook in self.message_hooks:
            replacement = hook(bridge.client_id, upstream.backend_id, parsed)
            if replacement is DROP:
                return None
            if replacement is not None:
                parsed, rewritten = replacement, True
        return json.dumps(parsed) if rewritten else text

    def _lose_primary(self, bridge: ClientBridge) -> None:
        """Have the bridge's primary socket re-attached (lost, or the serving backend moved)."""
        bridge.primary_lost = True
        if bridge.keeper is None and bridge.ready:
            bridge.keeper = spawn(self._keep_primary(bridge), name=f"ws-keep-{bridge.client_id}")

    async def _keep_primary(self, bridge: ClientBridge) -> None:
        """Re-attach the primary socket until nothing asks for it again, then end."""
        try:
            await self._reattach(bridge)
        except Exception:  # never leave a client on a socket nobody keeps
            log.exception("ws re-attach failed", client_id=bridge.client_id)
            bridge.superseded = True
        finally:
            bridge.keeper = None
        if bridge.superseded and not bridge.client.closed:
            # Replaced by a newer socket with its clientId, or closed on the backend's word.
            with contextlib.suppress(Exception):
                await bridge.client.close()

    async def _reattach(self, bridge: ClientBridge) -> None:
        loop = asyncio.get_running_loop()
        while bridge.primary_lost and not bridge.client.closed and not bridge.superseded:
            bridge.primary_lost = False
            # A backend that keeps dropping sockets right away must not cause a tight loop.
            backoff = bridge.backoff
            backoff = (
                0.0 if loop.time() - bridge.attached_at > 5.0 else min(max(backoff * 2, 0.1), 2.0)
            )
            bridge.backoff = backoff
            if backoff:
                await asyncio.sleep(backoff)
            async with bridge.lock:
                await self._reconcile_primary(bridge)
            detached = bridge.primary is None or bridge.primary not in bridge.upstreams
            # Nothing to attach to: wait for a backend to come back, bounded.
            if detached and not await self._wait_for_backend(bridge):
                code = bridge.last_upstream_close
                if code is None or code < 1000 or code in (1005, 1006, 1015):
                    code = WSCloseCode.INTERNAL_ERROR  # not sendable on the wire
                await bridge.client.close(code=code, message=b"no ComfyUI backend available")
                return
            bridge.attached_at = loop.time()

    async def _reconcile_primary(self, bridge: ClientBridge) -> None:
        serving = self._serving_id()
        current = bridge.primary
        alive = current is not None and current in bridge.upstreams
        if alive and current == serving:
            return
        old = bridge.upstreams.get(current or "")
        if await self._attach_primary(bridge, frozenset()):
            if (
                old is not None
                and current != bridge.primary
                and not self._keeps(bridge.client_id, old.backend_id)
            ):
                bridge.upstreams.pop(old.backend_id, None)
                await self._close_upstream(old)
        else:
            bridge.primary = None

    async def _wait_for_backend(self, bridge: ClientBridge) -> bool:
        deadline = asyncio.get_running_loop().time() + self._settings().reattach_timeout
        while not bridge.client.closed and not bridge.superseded:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 1.0)), self._serving_changed:
                    await self._serving_changed.wait()
            async with bridge.lock:
                await self._reconcile_primary(bridge)
            if bridge.primary is not None and bridge.primary in bridge.upstreams:
                return True
        return True

    async def _close_upstream(self, upstream: _Upstream) -> None:
        upstream.closed_by_us = True
        with contextlib.suppress(Exception):
            await upstream.ws.close()
        await cancel_and_wait(upstream.reader)

    async def _close_upstreams(self, bridge: ClientBridge) -> None:
        for upstream in list(bridge.upstreams.values()):
            await self._close_upstream(upstream)
        bridge.upstreams.clear()


def is_deliberate_close(code: int | None) -> bool:
    """Return True for close codes a backend sends on purpose (not failures or restarts).

    1000 (normal), 1003, 1007, 1008, 1009, 1010 and the application range 3000-4999 pass to the
    client. 1001 (going away: the backend stops), 1006 (no close frame), 1011-1014 (server
    trouble) and a missing code mean the backend failed: the relay re-attaches elsewhere.
    """
    if code is None:
        return False
    return code in (1000, 1003, 1007, 1008, 1009, 1010) or 3000 <= code <= 4999


def _is_feature_flags(text: str) -> bool:
    parsed = _parse(text)
    return parsed is not None and parsed.get("type") == "feature_flags"


def _parse(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
