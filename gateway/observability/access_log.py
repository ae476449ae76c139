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
(context merge, timestamp, redaction, renderer; the fields the gateway produces itself are not
scanned for secrets, the path and the log context are). They are written in batches: within
:data:`FLUSH_WITHIN` (0.1 s), or at once when :data:`FLUSH_LINES` are pending, or before any
other log line (so the output keeps the order in which lines were written), and at exit. A write
is a system call (per line when ``PYTHONUNBUFFERED`` is set, as in most container images) and
would cost a busy proxy more than the rest of the line; Envoy flushes its access log every
second, nginx's ``buffer=`` option batches likewise. :func:`flush` writes them out at once.

Wiring: ``web.run_app(app, access_log_class=AccessLogger)`` (or ``AppRunner(app,
access_log_class=AccessLogger)``). Turn the log off with ``configure_logging(access_log=False)``
(or ``run_app(access_log=None)``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import json
import logging
import re
import time
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from structlog.contextvars import merge_contextvars
from structlog.processors import TimeStamper

from gateway.keys import BACKEND_USED, REQUEST_ID
from gateway.observability import logging as obs_logging
from gateway.observability.logging import (
    ACCESS_LOGGER_NAME,
    log_direct,
    redact_secrets,
    redact_text,
)

__all__ = ["BACKEND_USED", "AccessLogger", "write_access_line"]


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
            write_access_line(fields)
        except Exception:  # the access log must never break a request
            return

    @property
    def enabled(self) -> bool:
        """Return whether ``gateway.access`` logs at info (checked once per connection)."""
        return logging.getLogger(ACCESS_LOGGER_NAME).isEnabledFor(logging.INFO)


FLUSH_WITHIN = 0.1
"""Seconds within which a written access line reaches the output."""
FLUSH_LINES = 64
"""Pending access lines that make a write at once."""
_TRUSTED = frozenset(
    {
        "event",
        "method",
        "path",  # scanned on its own (below)
        "status",
        "duration_s",
        "bytes_sent",
        "request_id",
        "remote",
        "server",
    }
)
"""Access-line fields the gateway produces itself, never able to carry a secret: the method is
an HTTP token, the request id matches ``[A-Za-z0-9._:-]``, the rest are numbers, an address and
a configured server id. The ``path`` and whatever the log context adds are scanned."""


_known_chain: list[Any] = [None, False]
"""The configured chain last seen, and whether it is configure_logging's standard one."""


def write_access_line(fields: dict[str, Any]) -> None:
    """Render one access line; it reaches the output within :data:`FLUSH_WITHIN` seconds.

    Also used by the fast lane (:mod:`gateway.proxy.fastlane`), which logs its requests
    without aiohttp's request objects.
    """
    direct = obs_logging._direct  # the configured processors and handler (log_direct's)
    if direct is None:
        log_direct(ACCESS_LOGGER_NAME, "info", fields)
        return
    processors = direct.processors
    known = _known_chain
    if known[0] is not direct:  # configure_logging makes a new one: check it once
        known[0], known[1] = direct, _is_standard(processors)
    if known[1]:
        line: Any = processors[4](None, "info", _standard_chain(fields))
    else:  # a chain this module does not know: run it as it is
        fields["level"] = "info"
        fields["logger"] = ACCESS_LOGGER_NAME
        line = fields
        for processor in processors:
            line = processor(None, "info", line)
    _queue(direct.handler, f"{line}\n")


class RequestLine(NamedTuple):
    """An access line's values, as the fast lane has them (the fields of :class:`AccessLogger`)."""

    method: str
    path: str
    status: int
    duration_s: float
    bytes_sent: int
    request_id: str
    remote: str | None
    server: str | None

    def fields(self) -> dict[str, Any]:
        """Return the line's fields as :func:`write_access_line` takes them."""
        fields: dict[str, Any] = {"event": "request", **self._asdict()}
        if self.server is None:
            del fields["server"]
        return fields


def write_request_line(values: RequestLine) -> None:
    """:func:`write_access_line` for ``values`` (the fast lane's): the same line, cheaper.

    With configure_logging's JSON chain and nothing bound on the log context, the line is
    written from a template that was checked, when the chain was configured, to render exactly
    as the chain does (:func:`_template_for`); otherwise it goes through the chain.
    """
    direct = obs_logging._direct
    template = _template[1] if _template[0] is direct else _template_for(direct)
    if template is None or _context_bound():
        write_access_line(values.fields())
        return
    _queue(direct.handler, template(values))  # type: ignore[union-attr]


_PLAIN = re.compile(r"[ !#-\[\]-~]*")
"""Printable ASCII without ``"`` or backslash: a JSON string is the value in quotes."""
_template: list[Any] = [None, None]
"""The configuration last seen, and its line template (None: use the chain)."""


def _template_for(direct: Any) -> Any:
    """Return the line template for ``direct``'s chain if it renders exactly as the chain."""
    _template[0], _template[1] = direct, None
    if direct is None or not _is_standard(direct.processors):
        return None
    try:
        import orjson

        def dumps(value: Any) -> str:
            return orjson.dumps(value).decode()
    except ImportError:  # pragma: no cover - depends on the environment

        def dumps(value: Any) -> str:
            return json.dumps(value, separators=(",", ":"))

    head = '{"timestamp":"%s","level":"info","logger":"' + ACCESS_LOGGER_NAME + '",'

    def text(value: str | None) -> str:
        # Most values need no escaping: quoting them is what the encoder would do.
        if value is not None and _PLAIN.fullmatch(value):
            return f'"{value}"'
        return dumps(value)

    def template(v: RequestLine) -> str:
        duration = v.duration_s
        seconds = repr(duration) if 0.0001 <= duration < 1e15 else dumps(duration)
        line = (
            f'{head % _utc_timestamp()}"event":"request","method":{text(v.method)},'
            f'"path":{text(redact_text(v.path))},"status":{v.status},'
            f'"duration_s":{seconds},"bytes_sent":{v.bytes_sent},'
            f'"request_id":{text(v.request_id)},"remote":{text(v.remote)}'
        )
        if v.server is not None:
            return f'{line},"server":{text(v.server)}}}\n'
        return line + "}\n"

    # Checked in an empty log context (the chain merges whatever is bound).
    return contextvars.Context().run(_same_lines, template, direct)


def _same_lines(template: Any, direct: Any) -> Any:
    """Return ``template`` if it renders sample lines exactly as ``direct``'s chain, else None."""
    samples = [
        RequestLine("GET", "/system_stats", 200, 0.000123, 922, "a" * 32, "127.0.0.1", "gpu-a"),
        RequestLine("GET", '/a"b\\c/token=x\u00e9', 504, 5e-05, 0, "r-1", None, None),
        RequestLine("GET", "/", 200, 12.5, 10**12, "x", "::1", "b"),
        RequestLine("GET", "/x", 200, 0.0001, 1, "y", "10.0.0.1", "c"),
        RequestLine("GET", "/x", 200, 0.0, 1, "y", "10.0.0.1", "c"),
    ]
    render = direct.processors[4]
    for values in samples:
        chain = render(None, "info", _standard_chain(values.fields()))
        ours = template(values)
        # Everything after the timestamp must be the same text.
        if chain.partition('"level"')[2] != ours.rstrip("\n").partition('"level"')[2]:
            return None  # not the JSON renderer this template writes like: use the chain
    _template[1] = template
    return template


def _context_bound() -> bool:
    """Return True when something is bound on structlog's log context (the chain merges it)."""
    for var, value in contextvars.copy_context().items():
        if value is not Ellipsis and var.name.startswith("structlog_"):
            return True
    return False


def _queue(handler: Any, line: str) -> None:
    """Queue one rendered line (with its newline) for ``handler``'s stream."""
    if handler is not _pending.handler:
        _pending.switch_to(handler)
    lines = _pending.lines
    lines.append(line)
    if len(lines) >= FLUSH_LINES:
        flush()
    elif len(lines) == 1:
        try:
            asyncio.get_running_loop().call_later(FLUSH_WITHIN, flush)
        except RuntimeError:  # no loop: nothing would flush later
            flush()


def _is_standard(processors: list[Any]) -> bool:
    """Return True for the chain :func:`configure_logging` builds (checked per configuration)."""
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
    path = fields.get("path")
    if type(path) is str:
        out["path"] = redact_text(path)  # what redact_secrets does with a plain string
    extra = fields.keys() - _TRUSTED
    scan = {key: fields[key] for key in extra} if extra else {}
    for var, value in contextvars.copy_context().items():
        name = var.name
        if name.startswith("structlog_") and value is not Ellipsis and name[10:] not in out:
            scan[name[10:]] = value
    if scan:  # the same redaction as the chain's, on what may hold a secret
        out.update(redact_secrets(None, "info", scan))
    return out


_second: list[Any] = [-1, ""]


def _utc_timestamp() -> str:
    """Return now as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it, cheaper."""
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    if seconds != _second[0]:
        _second[0] = seconds
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    micros = nanos // 1000
    return f"{_second[1]}.{micros:06d}Z" if micros else f"{_second[1]}Z"


class _Pending:
    """Access lines written but not yet out, and the handler they go to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.handler: logging.Handler | None = None

    def switch_to(self, handler: logging.Handler) -> None:
        """Send what is pending to the old handler; buffer for ``handler`` from now on.

        Every other line goes through ``handler``'s filters first: one of them writes the
        pending access lines, so the output keeps the order in which lines were written.
        """
        flush()
        self.handler = handler
        if _write_pending_first not in handler.filters:
            handler.addFilter(_write_pending_first)


_pending = _Pending()


def flush() -> None:
    """Write the pending access lines out (one write for all of them) and flush."""
    lines, handler = _pending.lines, _pending.handler
    if not lines or handler is None:
        return
    text = "".join(lines)
    lines.clear()
    try:
        with handler.lock:  # type: ignore[union-attr]
            out = handler.stream  # type: ignore[attr-defined]
            out.write(text)
            out.flush()
    except Exception:  # a closed or broken stream must not break the loop
        return


def _write_pending_first(record: logging.LogRecord) -> bool:
    flush()
    return True


atexit.register(flush)
