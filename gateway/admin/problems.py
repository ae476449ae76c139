"""The admin API's one error envelope: RFC 9457 ``application/problem+json``.

Handlers never build error responses. They raise a :class:`Problem` (or one of its subclasses,
which carry the HTTP status), and :func:`problem_middleware` renders it. The middleware is the
outermost one of the admin sub-app, so it also renders:

* aiohttp's own HTTP errors (unknown route 404, 405 with its ``Allow`` header, 413 for a body over
  the size limit, ...) as problems with the same status;
* a :class:`pydantic.ValidationError` that escaped a handler as a 422 with field errors;
* **any other exception** as a 500 problem whose detail says nothing about the cause: the
  exception is logged with its traceback, the client never sees one.

Every problem has ``type`` (a URN naming the kind), ``title``, ``status`` and ``detail``. A 422
adds ``errors``: ``[{"location": "servers[0].url", "message": "...", "value": ...}]`` where
``location`` is a dotted path with ``[i]`` indices relative to the document the client sent, and
``value`` is the offending input (omitted for objects and lists, masked for secrets, credentials
in URLs masked, long strings cut).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import pydantic
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:comfyui-gateway:problem:"
MASK = "********"
"""What a secret looks like in any response, export or error (and means "keep" on import)."""

_log = structlog.get_logger("gateway.admin")
_SECRET_LOCATION_PARTS = frozenset(
    {"auth", "token", "password", "bearer_token", "query_token", "webhooks", "headers"}
)
"""Values under these keys may be secrets (backend credentials, admin token, alert webhooks)."""
_URL_CREDENTIALS = re.compile(r"(?i)(//[^/@\s:]*:)[^/@\s]*@")
_MAX_VALUE_CHARS = 200

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FieldError(BaseModel):
    """One located problem in a request body, query or imported file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    location: str = Field(
        description="Where: a dotted path with [i] indices ('servers[0].url'), or a query "
        "parameter name; '' for the document as a whole.",
        examples=["servers[0].url", "url"],
    )
    message: str = Field(description="What is wrong.")
    value: Any = Field(
        None,
        description="The offending value when it is a scalar (secrets masked).",
    )
    line: int | None = Field(None, description="Line in an imported file, when known.")


class ProblemDetails(BaseModel):
    """An RFC 9457 problem document, the body of every admin API error."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URN naming the kind of problem.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What happened, for this occurrence.")
    errors: list[FieldError] | None = Field(
        None, description="Field errors (422 only): location, message, value."
    )


class Problem(Exception):
    """An error the admin API reports to its client; subclasses fix the status and kind."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """Return the problem document."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = [e.model_dump(exclude_none=True) for e in self.errors]
        body.update(self.extra)
        return body

    def response(self) -> web.Response:
        """Return the ``application/problem+json`` response."""
        return problem_response(self.status, self.body(), self.headers)


class BadRequest(Problem):
    """The request cannot be parsed (malformed JSON or YAML, undecodable body)."""

    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(Problem):
    """No admin token, or a wrong one, where one is required."""

    status, slug, title = 401, "unauthorized", "Admin token required"


class Forbidden(Problem):
    """Refused whatever the credentials (cross-origin, secrets export without a token)."""

    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(Problem):
    """No such server (or route)."""

    status, slug, title = 404, "not-found", "Not found"


class Conflict(Problem):
    """The change contradicts the current state (duplicate id, deleting the active server)."""

    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(Problem):
    """The body is over the admin API's size limit."""

    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(Problem):
    """The body's Content-Type is not one this route accepts."""

    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class Invalid(Problem):
    """The request was understood but its content is invalid; ``errors`` says where and why."""

    status, slug, title = 422, "validation-error", "Invalid request"


class SaveFailed(Problem):
    """The configuration file could not be written; nothing changed."""

    status, slug, title = 500, "config-not-saved", "Configuration not saved"


class Unavailable(Problem):
    """A dependency of this route is missing or the gateway is stopping."""

    status, slug, title = 503, "unavailable", "Service unavailable"


_HTTP_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
}


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    """Return a problem document as an ``application/problem+json`` response."""
    return web.Response(
        status=status,
        body=json.dumps(body, default=str).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def format_location(loc: Iterable[str | int], prefix: str = "") -> str:
    """Join a pydantic ``loc`` into ``servers[0].url`` form (``prefix`` goes in front)."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def is_secret_location(loc: Iterable[str | int] | str) -> bool:
    """Return True when a location (parts, or ``servers[0].auth`` text) may hold a secret."""
    if isinstance(loc, str):
        loc = [p for p in re.split(r"[.\[\]]", loc) if p]
    return any(isinstance(p, str) and p in _SECRET_LOCATION_PARTS for p in loc)


def safe_value(value: Any, *, secret: bool = False) -> Any:
    """Return ``value`` as it may appear in an error: scalars only, secrets and URLs masked."""
    if isinstance(value, pydantic.SecretStr) or (secret and value is not None):
        return MASK
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, str):
        value = _URL_CREDENTIALS.sub(r"\1" + MASK + "@", value)
        if len(value) > _MAX_VALUE_CHARS:
            value = value[:_MAX_VALUE_CHARS] + "..."
        return value
    return None


def field_errors(
    exc: pydantic.ValidationError, *, prefix: str = "", base: Sequence[str | int] = ()
) -> list[FieldError]:
    """Turn a pydantic error into located field errors (``prefix`` is prepended to locations).

    ``base`` is the location of the validated object in the client's document, used only to
    decide whether a value is a secret.
    """
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        message = err.get("msg", "invalid")
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        secret = is_secret_location((*base, *loc))
        out.append(
            FieldError(
                location=format_location(loc, prefix),
                message=message,
                value=safe_value(err.get("input"), secret=secret),
            )
        )
    return out


def invalid_from(
    exc: pydantic.ValidationError,
    *,
    prefix: str = "",
    what: str = "request",
    base: Sequence[str | int] = (),
) -> Invalid:
    """Return the 422 problem for a pydantic error."""
    errors = field_errors(exc, prefix=prefix, base=base)
    noun = "problem" if len(errors) == 1 else "problems"
    return Invalid(f"the {what} has {len(errors)} {noun}", errors=errors)


def invalid(location: str, message: str, value: Any = None, *, secret: bool = False) -> Invalid:
    """Return a 422 problem with a single field error."""
    return Invalid(
        f"{location or 'the request'}: {message}",
        errors=[
            FieldError(location=location, message=message, value=safe_value(value, secret=secret))
        ],
    )


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    status = exc.status
    detail = exc.text if exc.text and not exc.text.startswith(f"{status}:") else exc.reason
    if status == 404:
        detail = "no such route in the admin API"
    elif status == 405:
        detail = f"method not allowed; allowed: {exc.headers.get('Allow', '')}"
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
    body = {
        "type": PROBLEM_TYPE_PREFIX + _HTTP_SLUGS.get(status, f"http-{status}"),
        "title": exc.reason,
        "status": status,
        "detail": detail,
    }
    return problem_response(status, body, headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error raised below as an RFC 9457 problem; never leak a traceback."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response()
    except pydantic.ValidationError as exc:
        return invalid_from(exc).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        _log.exception("admin request failed", method=request.method, path=request.rel_url.path)
        return Problem("the gateway failed to handle this request; the error was logged").response()
