"""The access log: one structured line per request, written when its answer is complete.

Each line (logger ``gateway.access``, level info) holds ``event="request"``, ``method``,
``path`` (without the query: query strings can carry tokens), ``status``, ``duration_s`` (from
the first byte read to the last byte written; for a websocket, the whole session),
``bytes_sent`` (as written to the client, headers included), ``request_id``, ``server`` (the
backend that answered; absent when none did) and ``remote`` (the client's address), plus
whatever the request bound on the log context (``prompt_id``, ``client_id``...).

The backend comes from ``request[BACKEND_USED]``: **the proxy sets it** once it picked the
backend that answers (the last one tried). Values are read from the request, not from the
log context, as aiohttp does not promise to call the access logger in the handler's context.

Lines go through the same processors as :func:`~gateway.observability.logging.log_direct`
(context merge, timestamp, redaction, renderer) and are written at once, in order with every
other line; the stream is flushed once per event-loop iteration rather than once per line (a
busy proxy finishes several requests per iteration, and a flush is a system call), so a line
reaches the output within that iteration, before the loop waits for I/O again.

Wiring: ``web.run_app(app, access_log_class=AccessLogger)`` (or ``AppRunner(app,
access_log_class=AccessLogger)``). Turn the log off with ``configure_logging(access_log=False)``
(or ``run_app(access_log=None)``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Any, TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from structlog.contextvars import merge_contextvars
from structlog.processors import TimeStamper

from gateway.keys import BACKEND_USED, REQUEST_ID
from gateway.observability import logging as obs_logging
from gateway.observability.logging import ACCESS_LOGGER_NAME, log_direct, redact_secrets

__all__ = ["BACKEND_USED", "AccessLogger"]


class AccessLogger(AbstractAccessLogger):
    """aiohttp access logger writing one structured line per request; never raises."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the access line for ``request`` (see the module docstring for its fields)."""
        try:
            fields = {
                "event": "request",
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_s": round(time, 6),
                "bytes_sent": response.body_length,
                "request_id": request.get(REQUEST_ID),
                "remote": request.remote,
            }
            server = request.get(BACKEND_USED)
            if server is not None:  # else a ``server`` bound on the log context, if any
                fields["server"] = server
            _write(fields)
        except Exception:  # the access log must never break a request
            return

    @property
    def enabled(self) -> bool:
        """Return whether ``gateway.access`` logs at info (checked once per connection)."""
        return logging.getLogger(ACCESS_LOGGER_NAME).isEnabledFor(logging.INFO)


_unflushed: list[TextIO] = []


def _write(fields: dict[str, Any]) -> None:
    """Render and write one access line; flush at the end of this loop iteration."""
    direct = obs_logging._direct  # the configured processors and handler (log_direct's)
    if direct is None:
        log_direct(ACCESS_LOGGER_NAME, "info", fields)
        return
    processors = direct.processors
    if _is_standard(processors):
        line: Any = processors[4](None, "info", _standard_chain(fields))
    else:  # a chain this module does not know: run it as it is
        fields["level"] = "info"
        fields["logger"] = ACCESS_LOGGER_NAME
        line = fields
        for processor in processors:
            line = processor(None, "info", line)
    handler = direct.handler
    with handler.lock:  # type: ignore[union-attr]
        out = handler.stream
        out.write(f"{line}\n")
    if out in _unflushed:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        out.flush()
        return
    if not _unflushed:
        loop.call_soon(_flush)
    _unflushed.append(out)


def _is_standard(processors: list[Any]) -> bool:
    """Return True for the chain :func:`configure_logging` builds (checked per line: cheap)."""
    return (
        len(processors) == 5
        and processors[0] is merge_contextvars
        and type(processors[1]) is TimeStamper
        and processors[1].fmt == "iso"
        and processors[1].utc
        and processors[2] is redact_secrets
        and processors[3] is obs_logging._order_keys
    )


def _standard_chain(fields: dict[str, Any]) -> dict[str, Any]:
    """Do what configure_logging's chain does before rendering, in one pass.

    That chain is: merge the log context (keys already present win), add the ISO UTC
    ``timestamp``, redact, put ``timestamp``, ``level``, ``logger``, ``event`` first. The dict
    is built in its final order, so only the redaction is left to do.
    """
    out: dict[str, Any] = {
        "timestamp": _utc_timestamp(),
        "level": "info",
        "logger": ACCESS_LOGGER_NAME,
    }
    out.update(fields)
    for var, value in contextvars.copy_context().items():
        name = var.name
        if name.startswith("structlog_") and value is not Ellipsis:
            out.setdefault(name[10:], value)
    return redact_secrets(None, "info", out)


_second: list[Any] = [-1, ""]


def _utc_timestamp() -> str:
    """Return now as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it, cheaper."""
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    if seconds != _second[0]:
        _second[0] = seconds
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    micros = nanos // 1000
    return f"{_second[1]}.{micros:06d}Z" if micros else f"{_second[1]}Z"


def _flush() -> None:
    while _unflushed:
        out = _unflushed.pop()
        try:
            out.flush()
        except Exception:  # a closed or broken stream must not break the loop
            continue
