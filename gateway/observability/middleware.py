"""Request ids and per-request log context.

Contract:

* every request gets an id: the client's ``X-Request-ID`` when it is 1 to 128 characters of
  ``[A-Za-z0-9._:-]``, else a fresh one: 32 random hex digits, like ``uuid4().hex`` (from the
  process's seeded PRNG rather than ``os.urandom``: a request id must be unique, not secret, and
  this saves a system call per request). It is stored in ``request[REQUEST_ID]``
  (:data:`gateway.keys.REQUEST_ID`; the forwarder passes it on to the backend), bound on the
  log context, and returned in the ``X-Request-ID`` response header;
* the log context of a request (structlog contextvars) is cleared, then bound with
  ``request_id``, ``method`` and ``path`` (the path only: query strings can carry tokens). Each
  request runs in its own task (aiohttp copies the context per request), so bindings made later
  in the request (``server=``, ``prompt_id=``, ``client_id=``) show on every line of that request
  (websocket relays included), and on its access-log line, and never leak into another request;
* the response header is set from the ``on_response_prepare`` signal, i.e. just before the
  headers leave, for *every* answer of a matched request: handler responses, streamed
  responses prepared inside the handler, websocket handshakes, ``HTTPException`` answers and
  aiohttp's own 500s. A header the handler set itself (e.g. a backend's) is kept.

Wiring: ``install_request_context(app)`` on the root application, before any other middleware
is added (it must run first, so that every other middleware logs with the request id). A
sub-application needs nothing: the signal of the root app fires for it too.
"""

from __future__ import annotations

import os
import random
import re

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from structlog.contextvars import bind_contextvars, clear_contextvars

from gateway.keys import REQUEST_ID

__all__ = [
    "REQUEST_ID_HEADER",
    "add_request_id_header",
    "install_request_context",
    "request_context_middleware",
    "request_id_from",
]

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_rng = random.Random()  # its own state, seeded from os.urandom; re-seeded in forked children
os.register_at_fork(after_in_child=_rng.seed)
_random_bits = _rng.getrandbits


def request_id_from(value: str | None) -> str:
    """Return ``value`` when it is a valid request id, else a new one (32 hex digits)."""
    if value is not None and _VALID_ID.fullmatch(value):
        return value
    return f"{_random_bits(128):032x}"


def request_context_middleware() -> Middleware:
    """Return the middleware that assigns the request id and binds the log context."""

    @web.middleware
    async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID] = request_id
        clear_contextvars()
        bind_contextvars(request_id=request_id, method=request.method, path=request.path)
        return await handler(request)

    return request_context


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` handler: add ``X-Request-ID`` unless the response has one."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None and REQUEST_ID_HEADER not in response.headers:
        response.headers[REQUEST_ID_HEADER] = request_id


def install_request_context(app: web.Application) -> None:
    """Put the request-context middleware first on ``app`` and add the header signal."""
    app.middlewares.insert(0, request_context_middleware())
    app.on_response_prepare.append(add_request_id_header)
