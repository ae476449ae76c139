"""Configuration changes the admin API makes, as pure functions ``GatewayConfig -> GatewayConfig``.

Each function is called by ``ConfigStore.update`` under its lock, with the configuration in
force, and either returns the complete new configuration (validated by the models) or raises a
:class:`~gateway.admin.problems.Problem` (404, 409, 422). Nothing here does I/O, so every rule
is unit-testable and a refused change never touches the file.

Client JSON (server bodies and patches, settings patches) is validated in pydantic's strict mode:
JSON types must be the documented ones (``"enabled": 0`` or ``"priority": "5"`` is a 422), so
the OpenAPI schema is exact. Imported files are read like the file at startup (lenient types).

Rebuilt configurations keep pydantic's "fields set" (``model_dump(exclude_unset=True)``), so a
short hand-written file is not inflated with every default by an unrelated admin change.
"""

from __future__ import annotations

from typing import Any

import pydantic

from gateway.admin.problems import Conflict, NotFound, invalid, invalid_from
from gateway.admin.redaction import restore_masked
from gateway.admin.schemas import EDITABLE_SETTINGS, READ_ONLY_SETTINGS, ImportMode
from gateway.config.models import GatewayConfig, ServerConfig


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7396): objects merge, ``null`` removes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _dump(model: pydantic.BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="python", exclude_unset=True)


def rebuild(config: GatewayConfig, **changes: Any) -> GatewayConfig:
    """Return ``config`` with top-level ``changes``, validated as a whole."""
    data = _dump(config)
    data.update(changes)
    try:
        return GatewayConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise invalid_from(exc, what="resulting configuration") from None


def require_server(config: GatewayConfig, server_id: str) -> ServerConfig:
    """Return the server with this id or raise 404."""
    server = config.server(server_id)
    if server is None:
        raise NotFound(f"no server with id {server_id!r}", server=server_id)
    return server


def add_server(config: GatewayConfig, server: ServerConfig) -> GatewayConfig:
    """Append ``server``; 409 when its id is taken."""
    if config.server(server.id) is not None:
        raise Conflict(
            f"a server with id {server.id!r} already exists; choose another id or name",
            server=server.id,
        )
    return rebuild(config, servers=[*config.servers, server])


def update_server(
    config: GatewayConfig, server_id: str, patch: Any
) -> tuple[GatewayConfig, list[str]]:
    """Apply a merge patch to one server; return the config and the names of changed fields.

    The id is immutable (it keys affinity maps, metrics and ``active``): a patch that changes it
    is refused with 422; add a new server and delete the old one to rename. ``'********'`` in a
    secret member keeps the current secret. ``null`` resets a member to its default.
    """
    server = require_server(config, server_id)
    if not isinstance(patch, dict):
        raise invalid("", "a server patch must be a JSON object", patch)
    if patch.get("id", server_id) is None:
        patch = {k: v for k, v in patch.items() if k != "id"}  # "remove the id": it stays
    if "id" in patch and patch["id"] != server_id:
        raise invalid(
            "id",
            "the id of a server cannot change; add a server with the new id and delete this one",
            patch["id"],
        )
    current = _dump(server)
    patch = restore_masked(patch, server.model_dump(mode="python"))
    merged = merge_patch(current, patch)
    merged["id"] = server_id
    try:
        updated = ServerConfig.model_validate(merged, strict=True)
    except pydantic.ValidationError as exc:
        raise invalid_from(exc, what="server") from None
    before, after = server.model_dump(mode="python"), updated.model_dump(mode="python")
    changed = sorted(k for k in after if _secretless(after[k]) != _secretless(before.get(k)))
    servers = [updated if s.id == server_id else s for s in config.servers]
    return rebuild(config, servers=servers), changed


def _secretless(value: Any) -> Any:
    if isinstance(value, pydantic.SecretStr):
        return ("secret", value.get_secret_value())
    if isinstance(value, dict):
        return {k: _secretless(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_secretless(v) for v in value]
    return value


def delete_server(config: GatewayConfig, server_id: str, *, serving: str | None) -> GatewayConfig:
    """Remove a server; 409 for the preferred (active) server and for the serving one.

    As in the old settings screen, the active server cannot be deleted: select another one
    first. The same holds for the server traffic goes to now (after a failover it differs from
    the preferred one): deleting it would cut its running jobs and websockets.
    """
    require_server(config, server_id)
    if config.preferred_id == server_id:
        raise Conflict(
            f"{server_id!r} is the active (preferred) server; activate another server first",
            server=server_id,
        )
    if serving == server_id:
        raise Conflict(
            f"{server_id!r} is serving traffic now (after a failover); "
            "activate another server first",
            server=server_id,
        )
    servers = [s for s in config.servers if s.id != server_id]
    return rebuild(config, servers=servers)


def activate_server(config: GatewayConfig, server_id: str) -> GatewayConfig:
    """Make ``server_id`` the persisted ``active`` server; 409 when it is disabled."""
    server = require_server(config, server_id)
    if not server.enabled:
        raise Conflict(f"{server_id!r} is disabled; enable it first", server=server_id)
    return rebuild(config, active=server_id)


def patch_settings(config: GatewayConfig, patch: Any) -> tuple[GatewayConfig, list[str]]:
    """Merge-patch the live settings sections; return the config and the changed paths."""
    if not isinstance(patch, dict):
        raise invalid("", "a settings patch must be a JSON object", patch)
    for key in patch:
        if key in READ_ONLY_SETTINGS:
            raise invalid(
                key,
                f"'{key}' is read-only here; change it with PUT /config "
                "(listen and jobs take effect after a restart)",
            )
        if key not in EDITABLE_SETTINGS:
            raise invalid(key, f"unknown settings section; editable: {list(EDITABLE_SETTINGS)}")
    data = _dump(config)
    sections: dict[str, Any] = {}
    for key, section_patch in patch.items():
        if section_patch is None:
            sections[key] = {}
            continue
        if not isinstance(section_patch, dict):
            raise invalid(key, "must be an object", section_patch)
        sections[key] = merge_patch(data.get(key, {}), section_patch)
    try:
        new = GatewayConfig.model_validate({**data, **sections}, strict=True)
    except pydantic.ValidationError as exc:
        raise invalid_from(exc, what="settings") from None
    changed = [
        f"{key}.{name}"
        for key in sections
        for name, value in getattr(new, key).model_dump().items()
        if getattr(config, key).model_dump().get(name) != value
    ]
    return new, sorted(changed)


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = _deep_merge(base.get(key), value)
        return out
    return override


KEPT_WHEN_ABSENT: tuple[str, ...] = ("listen", "admin")
"""Sections a ``replace`` import keeps when the file does not mention them."""


def import_config(
    current: GatewayConfig, incoming: GatewayConfig, mode: ImportMode
) -> GatewayConfig:
    """Combine an imported, validated file with the configuration in force.

    * ``replace``: the file becomes the configuration, as if the gateway had started from it
      (servers not in the file are removed, sections it omits take their defaults), except
      that ``listen`` and ``admin`` keep their current values when the file does not mention
      them: importing a file without an ``admin`` block never drops the admin token, and one
      without ``listen`` never moves the gateway's address at the next restart. A file without
      ``servers`` is refused (use ``merge`` to change settings only).
    * ``merge``: servers are merged by id (a server in the file replaces the current one with the
      same id, new ones are appended in file order, the others are kept); ``active`` from the
      file wins when given; settings in the file override the current ones member by member.

    Masked secrets in ``incoming`` must already be restored (:func:`restore_masked`).
    """
    given = incoming.model_fields_set
    if mode == "replace":
        if "servers" not in given:
            raise invalid(
                "servers",
                "a replace import must list the servers; use mode=merge to change settings only",
            )
        data = _dump(incoming)
        for section in KEPT_WHEN_ABSENT:
            if section not in given:
                data[section] = getattr(current, section)
    else:
        data = _dump(current)
        by_id = {s.id: s for s in current.servers}
        order = [s.id for s in current.servers]
        for server in incoming.servers:
            if server.id not in by_id:
                order.append(server.id)
            by_id[server.id] = server
        data["servers"] = [by_id[i] for i in order]
        if incoming.active is not None:
            data["active"] = incoming.active
        for section in given - {"servers", "active"}:
            data[section] = _deep_merge(data.get(section, {}), _dump(getattr(incoming, section)))
    try:
        return GatewayConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise invalid_from(exc, what="resulting configuration") from None
