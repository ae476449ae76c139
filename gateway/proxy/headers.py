"""Pure header rules for both directions of the proxy.

Towards a backend (:func:`upstream_request_headers`):

* hop-by-hop headers (RFC 9110 §7.6.1: ``Connection`` and every header it lists,
  ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``) and
  ``Host`` (set from the backend URL) are dropped;
* ``Origin``, ``Referer`` and ``Sec-Fetch-*`` are dropped: ComfyUI answers 403 when a loopback
  ``Host`` meets a different ``Origin`` (shared/comfyui-api.md §4); the gateway performs the same
  protection at its own front door (:mod:`gateway.proxy.origin`) before forwarding;
* ``X-Forwarded-For`` gets the client's address appended; ``X-Forwarded-Proto`` and
  ``X-Forwarded-Host`` are set (a client's own values are kept only when trusted);
* the backend's own credentials are added last, so they win over anything the client sent.

Towards the client (:func:`client_response_headers`): hop-by-hop headers are dropped; everything
else, duplicates included (``Set-Cookie``), passes unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy, istr

HOP_BY_HOP = frozenset(
    istr(h)
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
DROP_UPSTREAM = HOP_BY_HOP | {istr("Host"), istr("Origin"), istr("Referer")}
_CONTENT_LENGTH = frozenset({istr("Content-Length")})
FORWARDED = frozenset(
    istr(h) for h in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded")
)
_WS_HANDSHAKE = frozenset(
    istr(h)
    for h in (
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Accept",
        "Sec-WebSocket-Protocol",
    )
)


def _connection_listed(headers: Mapping[str, str]) -> set[str]:
    listed: set[str] = set()
    for value in headers.getall("Connection", ()) if hasattr(headers, "getall") else ():
        listed.update(istr(token.strip()) for token in value.split(",") if token.strip())
    return listed


def upstream_request_headers(
    headers: CIMultiDictProxy[str],
    *,
    peer: str | None,
    scheme: str,
    host: str | None,
    request_id: str | None,
    backend_auth: Mapping[str, str],
    trust_forwarded: bool = False,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """Return the headers to send to a backend for a client request."""
    drop = _connection_listed(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name in DROP_UPSTREAM or name in drop or name.startswith(("Sec-Fetch-", "sec-fetch-")):
            continue
        if websocket and name in _WS_HANDSHAKE:
            continue
        if not trust_forwarded and name in FORWARDED:
            continue
        out.add(name, value)
    if peer:
        previous = out.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{previous}, {peer}" if previous else peer
    if not (trust_forwarded and "X-Forwarded-Proto" in out):
        out["X-Forwarded-Proto"] = scheme
    if host and not (trust_forwarded and "X-Forwarded-Host" in out):
        out["X-Forwarded-Host"] = host
    if request_id:
        out["X-Request-ID"] = request_id
    for name, value in backend_auth.items():
        out[name] = value
    return out


def client_response_headers(
    headers: CIMultiDictProxy[str],
    into: CIMultiDict[str] | None = None,
    *,
    drop_length: bool = False,
) -> CIMultiDict[str]:
    """Return the backend's response headers as they go to the client.

    With ``into`` (e.g. a new ``web.Response``'s own headers) they are added there, saving a
    copy; ``drop_length`` also leaves ``Content-Length`` out (the proxy sets its own).
    """
    out: CIMultiDict[str] = CIMultiDict() if into is None else into
    drop = _connection_listed(headers) if "Connection" in headers else ()
    add = out.add
    for name, value in headers.items():
        if name in HOP_BY_HOP or (drop and name in drop):
            continue
        if drop_length and name in _CONTENT_LENGTH:
            continue
        add(name, value)
    return out
