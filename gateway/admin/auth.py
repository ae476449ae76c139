"""Who may call the admin API: admin token, cross-origin refusal, and CSRF rules.

Rules, applied by :func:`make_guard_middleware` to every admin request, in this order:

1. **Origin** (403): a request carrying an ``Origin`` header that is not the gateway's own
   origin (``Host``, or ``X-Forwarded-Host`` when ``proxy.trust_forwarded_headers`` is on) is
   refused, as is a non-navigation request marked ``Sec-Fetch-Site: cross-site``
   (:func:`gateway.proxy.origin.origin_verdict`). ``proxy.allowed_origins`` does *not* apply
   here: it opens the ComfyUI API to other web apps, never the admin API, which answers no CORS
   preflight.
2. **Token** (401, with ``WWW-Authenticate: Bearer``): when an admin token is configured (config
   or environment, read through ``token_getter`` on every request, so a change applies at
   once), every write (any method but GET) needs it, and so do reads when
   ``protect_reads_getter()`` is true. It is presented as ``Authorization: Bearer <token>`` or
   ``X-Gateway-Token: <token>`` and compared in constant time (:func:`hmac.compare_digest`). A
   *wrong* token is refused even on a public read, so a misconfigured client fails loudly.
   Without a configured token, writes are open (the gateway refuses to listen on a non-loopback
   address in that case unless the admin explicitly allowed it) and a secrets export is
   refused by its handler with 403. ``GET /openapi.json`` is always public.
3. **CSRF** (415): a write whose ``Content-Type`` is one a cross-site HTML form or a
   "simple" cross-origin ``fetch`` can send without a preflight (``application/x-www-form-
   urlencoded``, ``multipart/form-data``, ``text/plain``) is refused. Handlers that take a body
   accept only JSON (and YAML for ``PUT /config``), see :mod:`gateway.admin.api`.

The token never appears in a response, a log line or an event.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.admin.problems import Forbidden, Handler, Unauthorized, UnsupportedMediaType
from gateway.proxy.origin import origin_verdict
from gateway.registry import ServerRegistry

TOKEN_HEADER = "X-Gateway-Token"
REALM = "comfyui-gateway admin"
FORM_CONTENT_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
READ_METHODS = frozenset({"GET", "HEAD"})

AUTHENTICATED: web.RequestKey[bool] = web.RequestKey("admin_authenticated", bool)
"""True when the request presented the configured admin token."""

_log = structlog.get_logger("gateway.admin")


def presented_token(request: web.Request) -> str | None:
    """Return the token the client sent (Bearer or ``X-Gateway-Token``), or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    token = request.headers.get(TOKEN_HEADER, "").strip()
    return token or None


def token_matches(presented: str, expected: str) -> bool:
    """Compare two tokens in constant time."""
    return hmac.compare_digest(presented.encode(), expected.encode())


def _challenge(error: str | None = None) -> dict[str, str]:
    value = f'Bearer realm="{REALM}"'
    if error:
        value += f', error="{error}"'
    return {"WWW-Authenticate": value}


def is_authenticated(request: web.Request) -> bool:
    """Return True when this request carried the valid admin token."""
    return bool(request.get(AUTHENTICATED, False))


def make_guard_middleware(
    *,
    registry: ServerRegistry,
    token_getter: Callable[[], str | None],
    protect_reads_getter: Callable[[], bool],
    public_routes: frozenset[str],
) -> Middleware:
    """Return the middleware enforcing the module's rules (origin, token, CSRF)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        _check_origin(request, registry)
        write = request.method not in READ_METHODS
        route_name = request.match_info.route.name
        expected = token_getter() or None
        presented = presented_token(request)
        request[AUTHENTICATED] = False
        if expected is not None and route_name not in public_routes:
            if presented is not None:
                if not token_matches(presented, expected):
                    _log.warning(
                        "admin token refused",
                        method=request.method,
                        path=request.rel_url.path,
                        remote=request.remote,
                    )
                    raise Unauthorized(
                        "the admin token is not valid", headers=_challenge("invalid_token")
                    )
                request[AUTHENTICATED] = True
            elif write or protect_reads_getter():
                raise Unauthorized(
                    "this admin API call needs the admin token: send "
                    f"'Authorization: Bearer <token>' or '{TOKEN_HEADER}: <token>'",
                    headers=_challenge(),
                )
        if write and request.content_type in FORM_CONTENT_TYPES:
            raise UnsupportedMediaType(
                f"{request.content_type} is not accepted by the admin API (send JSON)"
            )
        return await handler(request)

    return guard


def _check_origin(request: web.Request, registry: ServerRegistry) -> None:
    trust = registry.config.proxy.trust_forwarded_headers
    host = (request.headers.get("X-Forwarded-Host") if trust else None) or request.host
    allowed, _cors = origin_verdict(
        origin=request.headers.get("Origin"),
        host=host,
        sec_fetch_site=request.headers.get("Sec-Fetch-Site"),
        sec_fetch_mode=request.headers.get("Sec-Fetch-Mode"),
        allowed=frozenset(),
    )
    if not allowed:
        raise Forbidden(
            "cross-origin request to the admin API refused; call it from the gateway's own "
            "origin or without a browser",
            origin=request.headers.get("Origin"),
        )
