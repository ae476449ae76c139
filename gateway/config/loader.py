"""YAML file -> :class:`GatewayConfig`, with every problem located.

Contract:

* :func:`parse_config` turns text into a validated config or raises :class:`ConfigError` listing
  **all** problems at once: YAML syntax (with its line), an empty or non-mapping document, repeated
  keys, every pydantic field error, unknown keys (with a "did you mean"), and the cross-references
  the model's after-validator would check (duplicate server ids, an ``active`` that names no
  server) even when other fields failed too, because pydantic skips that validator then.
* Each :class:`ConfigProblem` has a ``location`` in the error style ``servers[1].url``, a
  ``message``, the offending ``value`` as displayed (``'ftp://x'``; None when not meaningful)
  and the 1-based YAML ``line`` when known. ``str(ConfigError)`` renders one line per problem::

      config/x.yaml:12: servers[1].url: must start with http:// or https:// (got 'ftp://x')

* Secrets are never echoed: values under any ``auth`` block and the admin token are shown as
  ``'********'``, passwords and query values inside URLs are masked, and the values of unknown
  keys (perhaps a misspelt secret) are not shown at all.
* :func:`load_config` reads a file, migrates an old single-server shape first (see
  :mod:`gateway.config.migrate`; logged as a warning naming the backup), validates it and applies
  the environment overrides (:func:`apply_env_overrides`).

Example::

    >>> parse_config("servers: [{name: A, url: 'http://a:8188'}]", "x.yaml").servers[0].id
    'a'
    >>> try:
    ...     parse_config("servers: [{id: a, url: 'ftp://x'}]\\nactive: b\\n", "x.yaml")
    ... except ConfigError as exc:
    ...     print(exc)
    x.yaml:1: servers[0].url: must start with http:// or https:// (got 'ftp://x')
    x.yaml:2: active: names no configured server (configured: a) (got 'b')
"""

from __future__ import annotations

import hashlib
import os
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import ErrorDetails
from yarl import URL

from gateway.config.models import GatewayConfig, slugify
from gateway.config.yaml_io import DataPath, YamlDocument, YamlSyntaxError, read_document

if TYPE_CHECKING:
    from gateway.config.migrate import MigrationResult

ENV_ADMIN_TOKEN = "COMFYUI_GATEWAY_ADMIN_TOKEN"
"""Environment variable that overrides ``admin.token``."""
SECRET_MASK = "********"
"""What a secret is replaced with wherever it is displayed."""

_MAX_VALUE_CHARS = 120
_FRIENDLY_MESSAGES = {  # pydantic's wording names Python types, not YAML ones
    "model_type": "must be a mapping (key: value pairs)",
    "model_attributes_type": "must be a mapping (key: value pairs)",
    "dict_type": "must be a mapping (key: value pairs)",
    "list_type": "must be a list",
}
_log = structlog.get_logger("gateway.config")
LineLookup = Callable[[DataPath], int | None]


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One located problem of a configuration file."""

    location: str
    """Where, in error style: ``servers[1].url``, ``active``; empty for the whole document."""
    message: str
    value: str | None = None
    """The offending value as displayed (``repr``, secrets masked); None when not shown."""
    line: int | None = None
    """1-based line in the file, when known."""

    def render(self, source: str) -> str:
        """Return ``source:line: location: message (got value)``, omitting unknown parts."""
        text = f"{source}:{self.line}" if self.line is not None else source
        if self.location:
            text += f": {self.location}"
        text += f": {self.message}"
        if self.value is not None:
            text += f" (got {self.value})"
        return text


class ConfigError(ValueError):
    """A configuration that cannot be used; ``problems`` lists everything that is wrong."""

    def __init__(self, source: str, problems: Iterable[ConfigProblem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: p.line or 0)
        super().__init__(str(self))

    def __str__(self) -> str:
        """Render one line per problem."""
        return "\n".join(p.render(self.source) for p in self.problems)

    def lines(self) -> list[str]:
        """Return the rendered problems, one string each."""
        return [p.render(self.source) for p in self.problems]


@dataclass(frozen=True)
class LoadedConfig:
    """What :func:`load_config` read."""

    config: GatewayConfig
    """The configuration to run with (environment overrides applied)."""
    path: Path
    migrated: bool
    """True when the file was in an old shape and has just been rewritten."""
    file_config: GatewayConfig
    """The configuration exactly as the file states it (no environment overrides)."""
    digest: str
    """sha256 of the bytes the config was parsed from (lets the store ignore its own writes)."""
    migration: MigrationResult | None = None
    legacy_shape: str | None = None
    """The old shape found (also when ``migrate=False`` converted it in memory only)."""


# -- public entry points ---------------------------------------------------------------


def parse_config(text: str, source: str) -> GatewayConfig:
    """Parse and validate YAML (or JSON) text; raise ConfigError with every located problem.

    No migration and no environment overrides: the text must be in the current shape.
    """
    return validate_document(parse_document(text, source), source)


def load_config(path: Path, *, migrate: bool = True) -> LoadedConfig:
    """Read, migrate if needed, validate and apply environment overrides; raise ConfigError.

    An old single-server file is rewritten in the new shape (a backup of the original is kept
    beside it and a warning is logged). With ``migrate=False``, or when the file cannot be
    rewritten (read-only mount; logged), it is converted in memory only and the file is left
    untouched (``check-config`` should pass ``migrate=False``). An unreadable file is a
    ConfigError too.
    """
    from gateway.config import migrate as migration  # migrate imports this module

    source = str(path)
    raw = read_bytes(path)
    doc = parse_document(decode(raw, source), source)
    shape = migration.detect_legacy_shape(doc.data)
    result: MigrationResult | None = None
    if shape is not None and migrate:
        result = _migrate_or_warn(path, migration.migrate_file)
        if result is not None:
            raw = read_bytes(path)
            doc = parse_document(decode(raw, source), source)
    if shape is not None and result is None:
        file_config = migration.convert_document(doc, source).config
    else:
        file_config = validate_document(doc, source)
    return LoadedConfig(
        config=apply_env_overrides(file_config),
        path=path,
        migrated=result is not None and result.migrated,
        file_config=file_config,
        digest=digest_of(raw),
        migration=result,
        legacy_shape=shape,
    )


def apply_env_overrides(
    config: GatewayConfig, environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Return ``config`` with ``COMFYUI_GATEWAY_ADMIN_TOKEN`` (if set and not blank) as token."""
    token = (os.environ if environ is None else environ).get(ENV_ADMIN_TOKEN, "").strip()
    if not token:
        return config
    admin = config.admin.model_copy(update={"token": SecretStr(token)})
    return config.model_copy(update={"admin": admin})


# -- building blocks (also used by migrate and store) ----------------------------------


def read_bytes(path: Path) -> bytes:
    """Return the file's bytes; raise ConfigError when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        problem = ConfigProblem("", f"cannot read the file: {exc.strerror or exc}")
        raise ConfigError(str(path), [problem]) from exc


def decode(raw: bytes, source: str) -> str:
    """Decode UTF-8 (a BOM is allowed); raise ConfigError locating the first bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        problem = ConfigProblem("", f"not UTF-8 text (byte {exc.start})", line=line)
        raise ConfigError(source, [problem]) from None


def digest_of(raw: bytes) -> str:
    """Return the content hash used to recognise a file's content."""
    return hashlib.sha256(raw).hexdigest()


def parse_document(text: str, source: str) -> YamlDocument:
    """Parse YAML text into a located document; raise ConfigError on a syntax error."""
    try:
        return read_document(text)
    except YamlSyntaxError as exc:
        problem = ConfigProblem("", f"YAML syntax error: {exc.message}", line=exc.line)
        raise ConfigError(source, [problem]) from None


def validate_document(doc: YamlDocument, source: str) -> GatewayConfig:
    """Validate a located document in the current shape; raise ConfigError with every problem."""
    if doc.data is None:
        message = "the file is empty (or only comments): expected a mapping with 'servers'"
        raise ConfigError(source, [ConfigProblem("", message, line=1)])
    if not isinstance(doc.data, dict):
        kind = type(doc.data).__name__
        message = f"the top level must be a mapping (listen, servers, ...), not a {kind}"
        raise ConfigError(source, [ConfigProblem("", message, line=doc.line_of(()))])
    return validate_mapping(doc.data, source, doc.line_of, extra=duplicate_key_problems(doc))


def duplicate_key_problems(doc: YamlDocument) -> list[ConfigProblem]:
    """Return one problem per key repeated in a mapping (YAML silently keeps the last)."""
    message = "key given more than once (YAML keeps the last)"
    return [
        ConfigProblem(format_location(path), message, line=line)
        for path, line in doc.duplicate_keys
    ]


def validate_mapping(
    data: Mapping[str, Any],
    source: str,
    line_of: LineLookup | None = None,
    *,
    extra: Sequence[ConfigProblem] = (),
) -> GatewayConfig:
    """Validate new-shape data; raise ConfigError with ``extra`` plus every problem found."""
    locate: LineLookup = line_of or (lambda _path: None)
    problems = list(extra)
    references = reference_problems(data, locate)
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            if error["loc"] == () and references:
                continue  # the after-validator's message; reference_problems located it better
            problems.append(problem_from_error(error, data, locate))
    else:
        if not problems and not references:
            return config
    raise ConfigError(source, problems + references)


# -- cross-reference checks on the raw data --------------------------------------------


def reference_problems(data: Mapping[str, Any], line_of: LineLookup) -> list[ConfigProblem]:
    """Check duplicate server ids and ``active`` on raw data (works even if fields failed)."""
    servers = data.get("servers", [])
    if not isinstance(servers, list):
        return []
    problems: list[ConfigProblem] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(servers):
        server_id = raw_server_id(item)
        if server_id is None:
            continue
        if server_id in first_index:
            path: DataPath = ("servers", index, "id")
            message = f"duplicate server id {server_id!r} (also servers[{first_index[server_id]}])"
            problems.append(ConfigProblem(format_location(path), message, line=line_of(path)))
        else:
            first_index[server_id] = index
    active = data.get("active")
    if isinstance(active, str) and active not in first_index:
        known = ", ".join(first_index) or "none"
        problems.append(
            ConfigProblem(
                "active",
                f"names no configured server (configured: {known})",
                value=repr(active),
                line=line_of(("active",)),
            )
        )
    return problems


def raw_server_id(item: Any) -> str | None:
    """Return the id a raw server entry gets (given, else derived from its name), or None."""
    if not isinstance(item, dict):
        return None
    server_id = item.get("id")
    if not server_id and isinstance(item.get("name"), str):
        server_id = slugify(item["name"])
    return server_id if isinstance(server_id, str) else None


# -- pydantic errors -> problems -------------------------------------------------------


def problem_from_error(
    error: ErrorDetails, data: Mapping[str, Any], line_of: LineLookup
) -> ConfigProblem:
    """Convert one pydantic error into a located, secret-safe problem."""
    path: DataPath = tuple(error["loc"])
    kind = error["type"]
    value: str | None = None
    if kind == "extra_forbidden":
        message = _unknown_key_message(path)
    elif kind == "missing":
        message = "required"
    else:
        message = _FRIENDLY_MESSAGES.get(kind) or error["msg"].removeprefix("Value error, ")
        value = display_value(path, error.get("input"))
    return ConfigProblem(format_location(path), message, value=value, line=line_of(path))


def format_location(path: DataPath) -> str:
    """Spell a data path the way errors show it: ``("servers", 1, "url")`` -> ``servers[1].url``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def display_value(path: DataPath, value: Any) -> str | None:
    """Return how a bad value is shown: ``repr`` of scalars, secrets masked, None otherwise."""
    if value is not None and not isinstance(value, str | int | float | bool):
        return None
    if is_secret_path(path):
        return repr(SECRET_MASK)
    if isinstance(value, str):
        value = mask_url(value)
        if len(value) > _MAX_VALUE_CHARS:
            value = value[:_MAX_VALUE_CHARS] + "..."
    return repr(value)


def is_secret_path(path: DataPath) -> bool:
    """Return True for paths whose values may be secrets (``auth`` blocks, the admin token,
    webhook URLs and headers, which carry tokens)."""
    return (
        "auth" in path
        or path == ("admin",)
        or path[:2] == ("admin", "token")
        or (path[:1] == ("alerts",) and ("url" in path or "headers" in path))
    )


def mask_url(text: str) -> str:
    """Mask a password and query values inside a URL-looking string (others unchanged)."""
    if "://" not in text:
        return text
    try:
        url = URL(text.strip())
        if url.password:
            url = url.with_password(SECRET_MASK)
        if url.query_string:
            url = url.with_query(dict.fromkeys(url.query, SECRET_MASK))
    except (ValueError, TypeError):
        return text.split("://", 1)[0] + "://" + SECRET_MASK
    return str(url)


def _unknown_key_message(path: DataPath) -> str:
    allowed = _allowed_keys(path[:-1])
    if not allowed:
        return "unknown key"
    key = str(path[-1])
    import difflib  # only for a file with a mistake: not loaded by a gateway that starts fine

    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key ({hint}allowed: {', '.join(allowed)})"


def _allowed_keys(path: DataPath) -> list[str]:
    model: type[BaseModel] | None = GatewayConfig
    for part in path:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return []
        model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """Return the model class inside ``X``, ``list[X]``, ``X | None`` or ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _migrate_or_warn(
    path: Path, migrate_file: Callable[[Path], MigrationResult]
) -> MigrationResult | None:
    """Migrate the file; when it cannot be rewritten (read-only mount), warn and return None."""
    try:
        result = migrate_file(path)
    except OSError as exc:
        _log.warning(
            "config file is in the old single-server shape and cannot be rewritten: "
            "running from a converted copy in memory",
            path=str(path),
            error=str(exc),
        )
        return None
    _log.warning(
        "config migrated from the old single-server shape",
        path=str(result.path),
        shape=result.shape,
        backup=str(result.backup_path),
        not_carried_over=list(result.dropped_keys),
    )
    return result
