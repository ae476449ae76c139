"""Secrets in, masks out: the admin API's view of credentials.

Configuration secrets are :class:`pydantic.SecretStr` values. Every document the admin API sends
(server JSON, settings, exports, SSE events, test results, errors) goes through one of these
functions, so that a token or password can only leave the gateway in an export explicitly asked
for with ``include_secrets=true`` and a valid admin token.

* :func:`plain` turns a ``model_dump(mode="python")`` tree into JSON-ready data, replacing each
  secret with :data:`MASK` (or with its value when ``reveal=True``).
* :func:`restore_masked` is the inverse used on the way in: a :data:`MASK` where the current
  configuration has a secret means "keep the current secret", so export -> import round-trips.
* :func:`redact` scrubs free text and event payloads coming from elsewhere (error messages of a
  probe may carry a URL with ``?token=``): known secret values, ``token=`` query parameters,
  ``Bearer``/``Basic`` credentials, URL user-info and secret-named keys are masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, SecretStr

from gateway.admin.problems import MASK, FieldError, Invalid, format_location
from gateway.config.models import slugify

_SECRET_KEYS = re.compile(r"(?i)(token|password|secret|authorization|api[-_]?key|cookie)")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:token|access_token|api_key|key)=)[^&\s#'\"]+")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_URL_USERINFO = re.compile(r"(//)[^/@\s]+@")
_MIN_SECRET_LEN = 4


def plain(value: Any, *, reveal: bool = False) -> Any:
    """Return JSON-ready data from a python-mode dump, secrets masked unless ``reveal``."""
    if isinstance(value, SecretStr):
        return value.get_secret_value() if reveal else MASK
    if isinstance(value, dict):
        return {k: plain(v, reveal=reveal) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, reveal=reveal) for v in value]
    return value


def _key_of(item: Any) -> str | None:
    if isinstance(item, dict):
        if isinstance(item.get("id"), str) and item["id"]:
            return str(item["id"])
        if isinstance(item.get("name"), str):
            return slugify(item["name"])
    return None


def restore_masked(new: Any, current: Any, *, loc: tuple[str | int, ...] = ()) -> Any:
    """Replace every :data:`MASK` in ``new`` by the secret at the same place in ``current``.

    ``new`` is client data (plain JSON types); ``current`` is a python-mode dump of the
    configuration in force, where secrets are ``SecretStr``. Lists of objects with an ``id``
    (servers) are matched by id, not by position. A mask with no current secret to keep raises
    :class:`Invalid` naming the location.
    """
    if isinstance(new, str) and new == MASK:
        if isinstance(current, SecretStr):
            return current
        if (loc and isinstance(loc[-1], str) and _SECRET_KEYS.search(loc[-1])) or _in_headers(loc):
            raise Invalid(
                "a masked secret has no current value to keep",
                errors=[
                    FieldError(
                        location=format_location(loc),
                        message=f"'{MASK}' means 'keep the current secret', "
                        "but there is no current secret here; send the real value",
                        value=MASK,
                    )
                ],
            )
        return new
    if isinstance(new, dict):
        cur = current if isinstance(current, dict) else {}
        return {k: restore_masked(v, cur.get(k), loc=(*loc, k)) for k, v in new.items()}
    if isinstance(new, list):
        cur_list = current if isinstance(current, list) else []
        by_key = {k: c for c in cur_list if (k := _key_of(c)) is not None}
        out = []
        for i, item in enumerate(new):
            key = _key_of(item)
            match = by_key.get(key) if key is not None else None
            if match is None and key is None and i < len(cur_list):
                match = cur_list[i]
            out.append(restore_masked(item, match, loc=(*loc, i)))
        return out
    return new


def _in_headers(loc: tuple[str | int, ...]) -> bool:
    return len(loc) >= 2 and loc[-2] == "headers" and "auth" in loc


def secret_values(config: BaseModel, extra: Iterable[str | None] = ()) -> frozenset[str]:
    """Return every secret string in ``config`` (a model; plus ``extra``), for :func:`redact`."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.add(value.get_secret_value())
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    walk(config.model_dump(mode="python"))
    found.update(s for s in extra if s)
    return frozenset(s for s in found if len(s) >= _MIN_SECRET_LEN)


def redact_text(text: str, secrets: frozenset[str] = frozenset()) -> str:
    """Mask secrets inside free text (error messages, reasons)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    text = _QUERY_SECRET.sub(r"\1" + MASK, text)
    text = _AUTH_SCHEME.sub(r"\1 " + MASK, text)
    return _URL_USERINFO.sub(r"\1" + MASK + "@", text)


def redact(value: Any, secrets: frozenset[str] = frozenset()) -> Any:
    """Return ``value`` (JSON-like data) with secrets masked, recursively."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(k, str) and _SECRET_KEYS.search(k) and isinstance(v, str) and v:
                out[k] = MASK
            else:
                out[k] = redact(v, secrets)
        return out
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    return value
