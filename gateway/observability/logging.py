"""Structured logging: structlog for our code, the same pipeline for the stdlib's loggers.

Contract of :func:`configure_logging`:

* every line goes to **stdout** (read at write time, so a swapped ``sys.stdout`` is honoured);
* ``fmt="json"``: one JSON object per line; ``"console"``: structlog's console renderer;
  ``"auto"``: console when stdout is a terminal, JSON otherwise (containers, pipes, files);
* each line carries ``timestamp`` (ISO 8601, UTC), ``level``, ``logger`` and ``event``, plus
  everything bound with :func:`structlog.contextvars.bind_contextvars` (``request_id``,
  ``method``, ``path``, and ``server``, ``prompt_id``, ``client_id`` where the proxy binds them);
* stdlib loggers (``aiohttp.access``, ``aiohttp.server``, ``aiohttp.client``, ``aiohttp.web``,
  ``aiohttp.websocket`` and every other one) go through the same processors (one root handler
  with a :class:`structlog.stdlib.ProcessorFormatter`), ``extra=`` fields included;
* exceptions are rendered as structured tracebacks in JSON (``dict_tracebacks``) and as plain
  text on the console, **without local variables** (they may hold secrets);
* :func:`redact_secrets` runs last before rendering, on every line: secrets are never logged;
* calling it again reconfigures (idempotent: one handler, never duplicated lines). Loggers are
  cached on first use, so the minimum *level* of a structlog logger already used stays the one in
  force at its first use; the processors and output format always follow the last call.

Run ``configure_logging`` once at startup, before the first log line. To make aiohttp's startup
banner a JSON line too, pass ``print=log_banner`` to :func:`aiohttp.web.run_app`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

if TYPE_CHECKING:
    from gateway.events import Event, EventBus

__all__ = [
    "ACCESS_LOGGER_NAME",
    "REDACTED",
    "LogFormat",
    "attach_event_logging",
    "bind_log_context",
    "configure_logging",
    "log_banner",
    "log_direct",
    "redact_secrets",
    "redact_text",
    "reset_logging",
]

LogFormat = Literal["auto", "json", "console"]

REDACTED = "***"
ACCESS_LOGGER_NAME = "gateway.access"
"""Logger of the one-line-per-request access log (see :mod:`gateway.observability.access_log`)."""

AIOHTTP_LOGGERS = (
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
)

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# -- redaction --------------------------------------------------------------------------------

_SECRET_KEY = re.compile(
    r"token|passw|secret|authoriz|api[_-]?key|apikey|cookie|credential|private[_-]?key"
    r"|^auth$|^session(?:_?id)?$",
    re.IGNORECASE,
)
_SECRET_NAME = (
    r"[\w.-]*?(?:token|passw(?:or)?d|passwd|secret|api[_-]?key|apikey|authorization|cookie"
    r"|credential)[\w.-]*"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization schemes: "Bearer abc", "Basic dXNlcjpwYXNz".
    (re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]{4,}", re.IGNORECASE), r"\1 ***"),
    # user:password@ in URLs.
    (re.compile(r"(://[^/\s:@]+:)[^@/\s]+@"), r"\1***@"),
    # name=value (query strings, forms) and "name": "value" / name: value (reprs, JSON, headers).
    (
        re.compile(
            rf"(?<![\w.-])({_SECRET_NAME}['\"]?\s*[=:]\s*['\"]?)(?!\*\*\*)[^\s'\"&#,;}}\])]+",
            re.IGNORECASE,
        ),
        r"\1***",
    ),
)
_NOT_SCANNED = frozenset({"timestamp", "level", "logger"})
_SCALARS = frozenset({int, float, bool, type(None)})
_MAX_DEPTH = 12
_secret_keys: dict[str, bool] = {}


def _is_secret_key(key: Any) -> bool:
    try:
        return _secret_keys[key]
    except (KeyError, TypeError):
        pass
    secret = _SECRET_KEY.search(str(key)) is not None
    if isinstance(key, str) and len(_secret_keys) < 4096:
        _secret_keys[key] = secret
    return secret


def _may_hold_secret(text: str) -> bool:
    """Cheap pre-filter (substring tests are ~10x faster than one case-insensitive regex)."""
    low = text.lower()
    return (
        "tok" in low
        or "pass" in low
        or "secr" in low
        or "key" in low
        or "auth" in low
        or "cook" in low
        or "cred" in low
        or "bear" in low
        or "basic" in low
        or "@" in low
    )


def redact_text(text: str) -> str:
    """Return ``text`` with secret-looking values masked (``?token=abc`` -> ``?token=***``)."""
    if not _may_hold_secret(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind in _SCALARS or depth > _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if type(v) not in _SCALARS and v != "" and _is_secret_key(k)
                else _redact(v, depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple) and value:
        return type(value)(_redact(v, depth + 1) for v in value)
    return value


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Mask secrets anywhere in the event dict (a structlog processor).

    Values of keys named like ``token``, ``password``, ``secret``, ``authorization``,
    ``api_key``, ``cookie``, ``credential`` (at any depth, in dicts, lists and tuples) become
    ``"***"`` (``None``, ``""``, booleans and numbers are kept: they reveal nothing); inside every
    string, ``token=...``-style query/form values, ``"password": "..."``-style pairs,
    ``Bearer``/``Basic`` credentials and URL passwords are masked. Other objects are left to the
    renderer (``repr``): give them a safe ``repr`` (pydantic's ``SecretStr`` has one). Never
    raises on odd values.
    """
    for key, value in event_dict.items():
        kind = type(value)
        if kind in _SCALARS or key in _NOT_SCANNED:
            continue
        if _is_secret_key(key):
            if value != "":
                event_dict[key] = REDACTED
        elif kind is str:
            if _may_hold_secret(value):
                event_dict[key] = redact_text(value)
        elif isinstance(value, dict | list | tuple):
            event_dict[key] = _redact(value, 1)
    return event_dict


# -- configuration ----------------------------------------------------------------------------


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler writing to ``sys.stdout`` as it is *now* (or to a fixed stream)."""

    gateway_handler = True

    def __init__(self, stream: TextIO | None = None) -> None:
        self._fixed = stream
        super().__init__(stream or sys.stdout)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return self._fixed if self._fixed is not None else sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it
        pass


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r} (use one of {', '.join(sorted(_LEVELS))})"
        ) from None


def _is_tty(stream: TextIO | None) -> bool:
    target = stream if stream is not None else sys.stdout
    try:
        return bool(target.isatty())
    except (AttributeError, ValueError):
        return False


_FIRST_KEYS = ("timestamp", "level", "logger", "event")


def _order_keys(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Put timestamp, level, logger and event first: easier to read, same JSON."""
    ordered = {k: event_dict.pop(k) for k in _FIRST_KEYS if k in event_dict}
    ordered.update(event_dict)
    return ordered


def _json_renderer() -> Processor:
    """Return a compact one-line JSON renderer (orjson when installed: ~10x faster)."""
    try:
        import orjson
    except ImportError:  # pragma: no cover - depends on the environment
        orjson = None

    def render(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        if orjson is not None:
            try:
                return orjson.dumps(  # type: ignore[no-any-return]
                    event_dict, default=repr, option=orjson.OPT_NON_STR_KEYS
                ).decode()
            except TypeError:  # e.g. an int beyond 64 bits: let the stdlib try
                pass
        return json.dumps(event_dict, default=repr, separators=(",", ":"))

    return render


class _Direct:
    """What :func:`log_direct` needs: the final processors and the handler to write with."""

    def __init__(self, processors: list[Processor], handler: _StdoutHandler) -> None:
        self.processors = processors
        self.handler = handler


_direct: _Direct | None = None

# The same list object is handed to structlog on every call and updated in place, so loggers
# cached before a reconfiguration follow the new chain.
_STRUCTLOG_PROCESSORS: list[Processor] = []


def configure_logging(
    level: str | int = "info",
    fmt: LogFormat = "auto",
    *,
    stream: TextIO | None = None,
    access_log: bool = True,
) -> None:
    """Configure structlog and the stdlib's logging as described in the module docstring.

    ``level``: ``debug``, ``info``, ``warning``, ``error`` or ``critical`` (or a ``logging``
    number); applies to structlog and stdlib loggers alike. ``fmt``: ``auto``, ``json`` or
    ``console``. ``stream``: write there instead of the current ``sys.stdout``. ``access_log``:
    False silences the one-line-per-request access log (``gateway.access``) to save its cost on
    the hot path. Raises ValueError on an unknown level or format.
    """
    global _direct
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r} (use auto, json or console)")
    min_level = _level(level)
    console = fmt == "console" or (fmt == "auto" and _is_tty(stream))

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    renderer: Processor
    exceptions: Processor
    if console:
        exceptions = structlog.processors.format_exc_info  # plain text, no locals
        renderer = structlog.dev.ConsoleRenderer(
            colors=_is_tty(stream), exception_formatter=structlog.dev.plain_traceback
        )
    else:
        exceptions = structlog.processors.ExceptionRenderer(
            ExceptionDictTransformer(show_locals=False)
        )
        renderer = _json_renderer()

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            exceptions,
            redact_secrets,
            _order_keys,
            renderer,
        ],
    )

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "gateway_handler", False):
            root.removeHandler(old)
    handler = _StdoutHandler(stream)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(min_level)
    for name in AIOHTTP_LOGGERS:
        stdlib_logger = logging.getLogger(name)
        stdlib_logger.setLevel(logging.NOTSET)
        stdlib_logger.propagate = True
    logging.getLogger(ACCESS_LOGGER_NAME).setLevel(
        logging.NOTSET if access_log else logging.CRITICAL + 1
    )
    _direct = _Direct(
        [
            structlog.contextvars.merge_contextvars,
            timestamper,
            redact_secrets,
            _order_keys,
            renderer,
        ],
        handler,
    )

    _STRUCTLOG_PROCESSORS[:] = [
        *shared,
        structlog.processors.StackInfoRenderer(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ]
    structlog.configure(
        processors=_STRUCTLOG_PROCESSORS,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        context_class=dict,
        cache_logger_on_first_use=True,
    )


def log_direct(logger_name: str, level: str, event_dict: dict[str, Any]) -> None:
    """Write one line straight to the output, skipping the stdlib's ``logging`` round trip.

    For the hot path (the access log): the same context merge, timestamp, redaction and
    renderer as every other line, at about a third of the cost. ``event_dict`` must hold
    ``event`` and is consumed. The caller checks the level (``logging.getLogger(name)
    .isEnabledFor``). Before :func:`configure_logging` it falls back to structlog. Never raises.
    """
    direct = _direct
    try:
        if direct is None:
            getattr(structlog.get_logger(logger_name), level)(**event_dict)
            return
        event_dict["level"] = level
        event_dict["logger"] = logger_name
        line: Any = event_dict
        for processor in direct.processors:
            line = processor(None, level, line)
        handler = direct.handler
        with handler.lock:  # type: ignore[union-attr]
            out = handler.stream
            out.write(f"{line}\n")
            out.flush()
    except Exception:  # a log line must never break a request
        return


def reset_logging() -> None:
    """Undo :func:`configure_logging` (remove its handler, reset structlog); for tests."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "gateway_handler", False):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(ACCESS_LOGGER_NAME).setLevel(logging.NOTSET)
    structlog.reset_defaults()
    global _direct
    _direct = None


_BANNER = re.compile(r"Running on (.+?) =+")


def log_banner(*args: Any, **kwargs: Any) -> None:
    """Log aiohttp's startup banner as one structured line (``run_app(print=log_banner)``).

    ``"======== Running on http://127.0.0.1:8190 ========"`` becomes ``event="listening"`` with
    ``addresses=["http://127.0.0.1:8190"]``; anything else is logged as it is.
    """
    text = " ".join(str(a) for a in args)
    log = structlog.get_logger("aiohttp.web")
    match = _BANNER.search(text)
    if match:
        log.info("listening", addresses=[a.strip() for a in match.group(1).split(",")])
    elif text.strip():
        log.info(text.strip())


def bind_log_context(**values: Any) -> None:
    """Bind ``values`` (``server=``, ``prompt_id=``, ``client_id=``...) on the current context.

    Thin alias of :func:`structlog.contextvars.bind_contextvars`, for callers that should not
    import structlog; ``None`` values are skipped.
    """
    structlog.contextvars.bind_contextvars(**{k: v for k, v in values.items() if v is not None})


def _event_level(kind: str, data: Mapping[str, Any]) -> str:
    if kind == "server.state":
        return "warning" if data.get("state") == "down" else "info"
    if kind == "serving.changed":
        lost = data.get("kind") == "failover" or data.get("serving") is None
        return "warning" if lost else "info"
    if kind == "prompt.lost":
        return "error"
    if kind in ("server.checked", "uploads.cache"):
        return "debug"
    return "info"


def attach_event_logging(bus: EventBus, *, logger_name: str = "gateway.events") -> None:
    """Log every event published on ``bus`` as one structured line (a synchronous listener).

    The line's ``event`` is the event kind (``server.state``, ``serving.changed``,
    ``admin.change``...), its data are the line's fields (``reason`` included) plus
    ``event_id``. Levels: a server going down, a failover or losing every server: warning; a lost
    prompt: error; ``server.checked`` and ``uploads.cache``: debug; everything else: info.
    """
    log = structlog.get_logger(logger_name)

    def listener(event: Event) -> None:
        data = dict(event.data)
        if "event" in data:
            data["event_data"] = data.pop("event")
        method: Callable[..., Any] = getattr(log, _event_level(event.kind, data))
        method(event.kind, event_id=event.id, **data)

    bus.add_listener(listener)
