"""Serving the gateway: aiohttp's runner with the fast lane in front of its request handler.

:class:`GatewayRunner` is ``web.AppRunner`` whose protocol factory (what every site, TCP or
test server, creates per connection) is a :class:`~gateway.proxy.fastlane.FrontConnection`
when the application has a :class:`~gateway.proxy.fastlane.FastLane` (``app[FAST_LANE]``),
falling back to aiohttp's ``RequestHandler`` for everything the lane does not take. Graceful
shutdown covers both: idle connections close, answers in progress get ``shutdown_timeout``.

:func:`run` is ``web.run_app`` for the gateway: the same sites, signals (SIGINT/SIGTERM stop
it gracefully), banner and access log, on this runner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from gateway.keys import FAST_LANE
from gateway.observability.access_log import AccessLogger
from gateway.proxy.fastlane import FastLane, FrontConnection


class FastLaneServer:
    """aiohttp's low-level ``web.Server`` behind the fast lane (a drop-in for the runner).

    Calling it makes a connection's protocol; everything else is the wrapped server's.
    """

    def __init__(self, server: web.Server, lane: FastLane) -> None:
        self._server = server
        self._lane = lane

    def __call__(self) -> asyncio.Protocol:
        return FrontConnection(self._lane, self._server)

    def pre_shutdown(self) -> None:
        self._lane.pre_shutdown()
        self._server.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        await asyncio.gather(self._lane.shutdown(timeout), self._server.shutdown(timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` serving through the application's fast lane, when it has one."""

    async def _make_server(self) -> web.Server:
        # AppRunner has no public hook for the per-connection protocol factory; _make_server
        # is where it is made (unchanged since aiohttp 3.0). If it changes, every test of
        # tests/proxy/test_fastlane.py fails (they count what the lane answered).
        server = await super()._make_server()
        lane = self.app.get(FAST_LANE)
        if lane is None:
            return server
        lane.keepalive_timeout = self._kwargs.get("keepalive_timeout", lane.keepalive_timeout)
        access_class = self._kwargs.get("access_log_class")
        lane.access_log = (
            self._kwargs.get("access_log", True) is not None
            and isinstance(access_class, type)
            and issubclass(access_class, AccessLogger)
        )
        return FastLaneServer(server, lane)  # type: ignore[return-value]


def _url(address: Any) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout: float = 10.0,
    print: Callable[..., None] | None = None,  # run_app's name for it
    access_log: bool = True,
) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM (``web.run_app``'s contract)."""

    async def serve() -> None:
        kwargs: dict[str, Any] = {"access_log_class": AccessLogger}
        if not access_log:
            kwargs = {"access_log": None}
        runner = GatewayRunner(
            app,
            handle_signals=True,
            handler_cancellation=True,
            shutdown_timeout=shutdown_timeout,
            **kwargs,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            if print is not None:
                names = ", ".join(_url(address) for address in runner.addresses)
                print(f"======== Running on {names} ========\n(Press CTRL+C to quit)")
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(GracefulExit, KeyboardInterrupt):
        asyncio.run(serve())
