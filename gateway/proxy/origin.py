"""Cross-origin protection at the gateway's front door.

ComfyUI refuses a browser request whose ``Origin`` differs from its ``Host`` (on loopback hosts).
The gateway strips ``Origin`` towards the backends (they would otherwise refuse every same-origin
browser request), so it must apply the protection itself, or moving ComfyUI behind the gateway
would let any web page drive it. The rules, applied to every request that is not the gateway's
own metrics endpoint:

1. No ``Origin`` header: allowed (scripts, curl, ComfyUI API libraries, navigations).
2. ``Origin`` equal to the gateway's own origin as the browser addressed it (``Host``, or
   ``X-Forwarded-Host`` when forwarded headers are trusted): allowed. As in ComfyUI, ports are
   compared only when both sides carry one.
3. ``Origin`` listed in ``proxy.allowed_origins``: allowed, with CORS headers on the response
   (preflights are answered by the gateway) -- on ComfyUI's paths only: the gateway's own
   ``/gateway/...`` pages and admin API stay same-origin.
4. Anything else, including the opaque origin ``null``: 403 with a JSON body naming the origin.

Unlike ComfyUI, the check applies whatever the ``Host`` (not only loopback), and also refuses
``Sec-Fetch-Site: cross-site`` requests that are not top-level navigations, as newer ComfyUI
versions do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

CORS_ALLOW_HEADERS = "Content-Type, Authorization, Comfy-User, X-Request-ID, X-Gateway-Token"
CORS_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD"


def _split(netloc: str) -> tuple[str, int | None]:
    parts = urlsplit("//" + netloc.strip().lower())
    try:
        port = parts.port
    except ValueError:
        port = None
    return (parts.hostname or ""), port


def same_origin(host_header: str, origin: str) -> bool:
    """Return True when ``origin`` (an Origin header) names the host the browser addressed."""
    parsed = urlsplit(origin.strip().lower())
    if not parsed.netloc:
        return False
    host, host_port = _split(host_header)
    o_host, o_port = _split(parsed.netloc)
    if not host or host != o_host:
        return False
    return host_port is None or o_port is None or host_port == o_port


def origin_verdict(
    *,
    origin: str | None,
    host: str | None,
    sec_fetch_site: str | None,
    sec_fetch_mode: str | None,
    allowed: frozenset[str],
) -> tuple[bool, bool]:
    """Decide a request: return ``(allowed, cors)``; ``cors`` means add CORS headers."""
    if origin is None:
        if sec_fetch_site == "cross-site" and sec_fetch_mode not in (None, "navigate"):
            return False, False
        return True, False
    if origin.rstrip("/").lower() in allowed:
        return True, True
    if host and same_origin(host, origin):
        return True, False
    return False, False


def cors_headers(origin: str) -> dict[str, str]:
    """Return the CORS response headers for an explicitly allowed origin."""
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": CORS_ALLOW_METHODS,
        "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


def forbidden_origin(origin: str | None) -> web.Response:
    """Return the 403 answer for a refused cross-origin request."""
    return web.json_response(
        {
            "error": {
                "type": "cross_origin_refused",
                "message": f"cross-origin request from {origin or 'a cross-site page'} refused "
                "by the gateway; add it to proxy.allowed_origins to allow it",
                "origin": origin,
            }
        },
        status=403,
    )


GATEWAY_PREFIX = "/gateway/"
_NONE: frozenset[str] = frozenset()


def origin_middleware(allowed_origins: Callable[[], frozenset[str]]) -> Middleware:
    """Return the front-door middleware enforcing the rules of this module."""

    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        origin = headers.get("Origin")
        sec_fetch_site = headers.get("Sec-Fetch-Site")
        if origin is None and sec_fetch_site != "cross-site":
            return await handler(request)  # rule 1, without building anything else
        allowed, cors = origin_verdict(
            origin=origin,
            host=request.host,
            sec_fetch_site=sec_fetch_site,
            sec_fetch_mode=headers.get("Sec-Fetch-Mode"),
            # The gateway's own pages and admin API are same-origin only: the allow-list is
            # for ComfyUI's API (a web app on another origin driving ComfyUI), never for the
            # API that decides where traffic goes.
            allowed=_NONE if request.path.startswith(GATEWAY_PREFIX) else allowed_origins(),
        )
        if not allowed:
            return forbidden_origin(origin)
        if cors and origin is not None:
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                return web.Response(status=204, headers=cors_headers(origin))
            response = await handler(request)
            if not response.prepared:
                response.headers.update(cors_headers(origin))
            return response
        return await handler(request)

    return check_origin
