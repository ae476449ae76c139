"""Old single-server configuration shapes -> the current shape.

Recognised old shapes (a mapping without ``servers``):

* a top-level backend URL string: ``url:``, ``comfyui_url:`` or ``server_url:``;
* a ``comfyui:`` block: ``{host, port}`` plus optionally ``scheme: https`` or ``https: true``
  (``ssl``/``tls`` too), or a ``url`` inside the block;
* the old app's JSON settings ``{"serverUrl": "http://..."}`` (any other keys it holds).

The result has one server ``{id: default, name: Default Server, url: ...}`` that is ``active``.
Credentials written inside the old URL move to the server's ``auth`` block (``user:pass@`` to
``basic``, ``?token=`` to ``query_token``), since the new shape refuses them in URLs. ``listen``
(a mapping, a port number or ``"host:port"``) or top-level ``host``/``port`` become ``listen``;
the sections that already exist in the new shape (``health``, ``failover``, ``proxy``, ``admin``,
``jobs``) are carried over as they are. Every other key is listed in
:attr:`MigrationResult.dropped_keys`: nothing is lost, because :func:`migrate_file` first keeps
the original file, byte for byte, in a backup beside it (``PATH.bak-<UTC timestamp>``).

:func:`migrate_file` is idempotent: a file already in the current shape is left alone.
A converted config that does not validate raises :class:`~gateway.config.loader.ConfigError`
located in the *old* file (``url (as servers[0].url): must start with http://...``) and nothing is
written. The file keeps its name (also a ``.json`` one), so the same ``--config`` keeps working;
its content is YAML from then on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from yarl import URL

from gateway.config.loader import (
    ConfigError,
    ConfigProblem,
    decode,
    duplicate_key_problems,
    format_location,
    parse_document,
    read_bytes,
    validate_document,
    validate_mapping,
)
from gateway.config.models import DEFAULT_BACKEND_URL, GatewayConfig
from gateway.config.store import (
    BACKUP_MODE,
    DEFAULT_FILE_MODE,
    SECRET_FILE_MODE,
    ConfigSaveError,
    atomic_write_bytes,
    file_mode,
    has_secrets,
    to_yaml,
)
from gateway.config.yaml_io import DataPath, YamlDocument

LEGACY_URL_KEYS = ("url", "comfyui_url", "server_url", "serverUrl")
"""Top-level keys that held the one backend URL, in order of precedence."""
LEGACY_BLOCK_KEY = "comfyui"
DEFAULT_SERVER_ID = "default"
DEFAULT_SERVER_NAME = "Default Server"
CARRIED_SECTIONS = ("health", "failover", "proxy", "admin", "jobs", "alerts")
"""Sections of the current shape copied as they are when an old file has them."""

_BLOCK_TLS_FLAGS = ("https", "ssl", "tls")


@dataclass(frozen=True)
class Conversion:
    """An old-shape mapping converted to current-shape data (not validated yet)."""

    shape: str
    """Human description of the old shape, e.g. ``top-level 'url'``."""
    data: dict[str, Any]
    dropped: tuple[str, ...]
    """Old keys not carried over (dotted for keys inside the ``comfyui`` block)."""
    origins: dict[str, DataPath] = field(default_factory=dict)
    """New location prefix -> old path it came from (to locate problems in the old file)."""


@dataclass(frozen=True)
class Converted:
    """A validated conversion."""

    config: GatewayConfig
    conversion: Conversion


@dataclass(frozen=True)
class MigrationResult:
    """What :func:`migrate_file` did."""

    path: Path
    migrated: bool
    """False when the file was already in the current shape (nothing written)."""
    shape: str | None = None
    backup_path: Path | None = None
    dropped_keys: tuple[str, ...] = ()
    url: str | None = None
    """The backend URL of the migrated ``default`` server."""

    def summary(self) -> str:
        """Return one line for humans (the ``migrate`` command prints it)."""
        if not self.migrated:
            return f"{self.path}: already in the current shape, nothing to do"
        text = (
            f"{self.path}: migrated from the old single-server shape ({self.shape}) to server "
            f"{DEFAULT_SERVER_ID!r} ({DEFAULT_SERVER_NAME}, {self.url}); "
            f"original kept in {self.backup_path}"
        )
        if self.dropped_keys:
            text += f"; not carried over (still in the backup): {', '.join(self.dropped_keys)}"
        return text


# -- detection and conversion (pure) ---------------------------------------------------


def detect_legacy_shape(data: Any) -> str | None:
    """Return a description of the old shape ``data`` is in, or None (current shape or other)."""
    if not isinstance(data, dict) or "servers" in data:
        return None
    for key in LEGACY_URL_KEYS:
        if isinstance(data.get(key), str):
            return "JSON settings 'serverUrl'" if key == "serverUrl" else f"top-level {key!r}"
    if isinstance(data.get(LEGACY_BLOCK_KEY), dict):
        return f"{LEGACY_BLOCK_KEY!r} block"
    return None


def convert_legacy(data: Mapping[str, Any]) -> Conversion:
    """Convert an old-shape mapping to current-shape data; ValueError if it is not one."""
    shape = detect_legacy_shape(data)
    if shape is None:
        raise ValueError("not an old single-server configuration")
    url_key = next((k for k in LEGACY_URL_KEYS if isinstance(data.get(k), str)), None)
    dropped: list[str] = []
    if url_key is not None:
        url, source = data[url_key].strip(), url_key
    else:
        block = data[LEGACY_BLOCK_KEY]
        url, unused = _url_from_block(block)
        source = LEGACY_BLOCK_KEY
        dropped += [f"{LEGACY_BLOCK_KEY}.{key}" for key in unused]
    listen, listen_origins = _listen_from(data)
    new: dict[str, Any] = {} if listen is None else {"listen": listen}
    new["servers"] = [{"id": DEFAULT_SERVER_ID, "name": DEFAULT_SERVER_NAME, **_url_and_auth(url)}]
    new["active"] = DEFAULT_SERVER_ID
    new |= {section: data[section] for section in CARRIED_SECTIONS if section in data}
    consumed = {source, *CARRIED_SECTIONS, *(path[0] for path in listen_origins.values())}
    dropped = [str(key) for key in data if key not in consumed] + dropped
    origins: dict[str, DataPath] = {"servers[0]": (source,), **listen_origins}
    return Conversion(shape, new, tuple(dropped), origins)


def _url_from_block(block: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Return the URL a ``comfyui:`` block describes, and the block keys it did not use."""
    if isinstance(block.get("url"), str):
        used = {"url"}
        url = block["url"].strip()
    else:
        used = {"host", "port", "scheme", *_BLOCK_TLS_FLAGS} & set(block)
        scheme = block.get("scheme")
        if not isinstance(scheme, str):
            scheme = "https" if any(block.get(f) is True for f in _BLOCK_TLS_FLAGS) else "http"
        default = URL(DEFAULT_BACKEND_URL)
        host = str(block.get("host") or default.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6 literal
        url = f"{scheme}://{host}:{block.get('port', default.port)}"
    return url, [str(key) for key in block if key not in used]


def _url_and_auth(url: str) -> dict[str, Any]:
    """Split credentials out of an old URL into an ``auth`` block (the new shape refuses them)."""
    try:
        parsed = URL(url)
        token = parsed.query.get("token")
    except (ValueError, TypeError):
        return {"url": url}
    auth: dict[str, Any] = {}
    if parsed.user is not None or parsed.password is not None:
        auth["basic"] = {"username": parsed.user or "", "password": parsed.password or ""}
        parsed = parsed.with_user(None)
    if token is not None:
        auth["query_token"] = token
        rest = [(k, v) for k, v in parsed.query.items() if k != "token"]
        parsed = parsed.with_query(rest or None)
    if not auth:
        return {"url": url}
    return {"url": str(parsed), "auth": auth}


def _listen_from(data: Mapping[str, Any]) -> tuple[Any, dict[str, DataPath]]:
    """Return the new ``listen`` value (None: default) and where its parts came from."""
    if "listen" in data:
        value = data["listen"]
        if isinstance(value, int) and not isinstance(value, bool):
            value = {"port": value}
        elif isinstance(value, str) and value.rpartition(":")[2].isdigit():
            host, _, port = value.rpartition(":")
            value = {"host": host.strip("[]") or "0.0.0.0", "port": int(port)}
        return value, {"listen": ("listen",)}
    listen = {key: data[key] for key in ("host", "port") if key in data}
    origins: dict[str, DataPath] = {f"listen.{key}": (key,) for key in listen}
    return (listen or None), origins


# -- validation, located in the old file -----------------------------------------------


def convert_document(doc: YamlDocument, source: str) -> Converted:
    """Convert and validate an old-shape document; ConfigError problems point into the old file."""
    conversion = convert_legacy(doc.data)

    def line_of(path: DataPath) -> int | None:
        old = _origin(format_location(path), conversion)
        return doc.line_of(old[1] if old else path)

    try:
        duplicates = duplicate_key_problems(doc)
        config = validate_mapping(conversion.data, source, line_of, extra=duplicates)
    except ConfigError as exc:
        raise ConfigError(source, [_relocate(p, conversion) for p in exc.problems]) from None
    return Converted(config, conversion)


def _origin(location: str, conversion: Conversion) -> tuple[str, DataPath] | None:
    for prefix, old in conversion.origins.items():
        if location == prefix or location.startswith((f"{prefix}.", f"{prefix}[")):
            return prefix, old
    return None


def _relocate(problem: ConfigProblem, conversion: Conversion) -> ConfigProblem:
    origin = _origin(problem.location, conversion)
    if origin is None or format_location(origin[1]) == origin[0]:
        return problem
    location = f"{format_location(origin[1])} (as {problem.location})"
    return ConfigProblem(location, problem.message, problem.value, problem.line)


# -- the file operation ----------------------------------------------------------------


def migrate_file(path: Path, *, now: datetime | None = None) -> MigrationResult:
    """Rewrite an old single-server config file in the current shape, keeping a backup.

    Returns ``migrated=False`` and writes nothing when the file is already current. Raises
    ConfigError when the file cannot be read or parsed, is not a mapping, or converts to an
    invalid config (nothing written), and ConfigSaveError when writing fails (the original file
    is intact; a backup may already exist). Order: backup written and fsynced, then the new
    content replaces the original atomically.
    """
    source = str(path)
    raw = read_bytes(path)
    doc = parse_document(decode(raw, source), source)
    if detect_legacy_shape(doc.data) is None:
        if not isinstance(doc.data, dict):
            validate_document(doc, source)  # raises the located "not a mapping" problem
        return MigrationResult(path, migrated=False)
    converted = convert_document(doc, source)
    conversion = converted.conversion
    stamp = (now or datetime.now(UTC)).astimezone(UTC)
    backup = _free_backup_path(path, stamp)
    notes = _header_notes(conversion, backup, stamp)
    text = to_yaml(converted.config, include_secrets=True, notes=notes)
    secret = has_secrets(converted.config)
    try:
        atomic_write_bytes(backup, raw, mode=BACKUP_MODE)
        mode = SECRET_FILE_MODE if secret else file_mode(path, DEFAULT_FILE_MODE)
        atomic_write_bytes(path, text.encode(), mode=mode)
    except OSError as exc:
        raise ConfigSaveError(path, exc) from exc
    return MigrationResult(
        path=path,
        migrated=True,
        shape=conversion.shape,
        backup_path=backup,
        dropped_keys=conversion.dropped,
        url=converted.config.servers[0].url,
    )


def _free_backup_path(path: Path, stamp: datetime) -> Path:
    base = f"{path.name}.bak-{stamp.strftime('%Y%m%dT%H%M%SZ')}"
    candidate = path.with_name(base)
    counter = 1
    while candidate.exists():
        candidate = path.with_name(f"{base}-{counter}")
        counter += 1
    return candidate


def _header_notes(conversion: Conversion, backup: Path, stamp: datetime) -> list[str]:
    notes = [
        "",
        f"Migrated on {stamp.strftime('%Y-%m-%dT%H:%M:%SZ')} from the old single-server shape "
        f"({conversion.shape}).",
        f"The original file is kept unchanged in {backup.name}.",
    ]
    if conversion.dropped:
        notes.append(f"Not carried over (still in that file): {', '.join(conversion.dropped)}.")
    return notes
