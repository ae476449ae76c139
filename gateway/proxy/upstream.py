"""Upstream connections: one pooled ``ClientSession`` per backend, with its credentials.

A :class:`Backend` knows how to reach one ComfyUI server: its base URL, its connection pool and
the credentials that go to it and to no one else. :class:`BackendPool` keeps one per configured
server and follows configuration changes (a changed URL, credentials or limits gets a new
session; the old one is closed once its in-flight requests are done).
"""

from __future__ import annotations

import asyncio
import base64

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.config.models import GatewayConfig, ServerConfig
from gateway.tasks import spawn


class Backend:
    """One ComfyUI server as the data plane sees it."""

    def __init__(self, server: ServerConfig) -> None:
        self.server = server
        self.id = server.id
        self.base_url = URL(server.url)
        self.auth_headers = _auth_headers(server)
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
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()


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
