"""The catch-all entry point: every path the gateway does not own belongs to ComfyUI.

One handler dispatches websocket upgrades to the :class:`~gateway.proxy.websocket.WsRelay` and
everything else to the ComfyUI-aware layer (which may answer itself, e.g. merging ``/queue``
across backends) or, by default, to the :class:`~gateway.proxy.http.HttpForwarder` towards the
backend chosen by the routing policy.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from gateway.proxy.http import EarlierAttempt, HttpForwarder, PickBackend
from gateway.proxy.websocket import WsRelay

ComfyHook = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
"""Answers a request itself (ComfyUI-aware routing) or returns None to forward it plainly."""


def is_websocket_upgrade(request: web.Request) -> bool:
    """Return True for a websocket handshake."""
    return (
        request.method == "GET"
        and request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        and "upgrade" in request.headers.get(hdrs.CONNECTION, "").lower()
    )


def make_proxy_handler(
    *,
    forwarder: HttpForwarder,
    relay: WsRelay,
    pick_serving: Callable[[], PickBackend],
    comfy_hook: Callable[[], ComfyHook | None],
    earlier_for: Callable[[web.Request], EarlierAttempt | None] = lambda request: None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Return the catch-all handler.

    ``earlier_for(request)`` says how the fast lane fared with a request it handed over.
    """

    async def proxy(request: web.Request) -> web.StreamResponse:
        if is_websocket_upgrade(request):
            return await relay.handle(request)
        hook = comfy_hook()
        if hook is not None:
            started = time.perf_counter()
            answer = await hook(request)
            if answer is not None:
                return forwarder.report(request, answer, started)
        return await forwarder.forward(request, pick_serving(), earlier=earlier_for(request))

    return proxy
