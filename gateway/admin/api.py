"""The admin REST API: handlers, and the operations table that documents them.

The sub-app is built by :func:`gateway.admin.routes.create_admin_app` (re-exported here) and
mounted by the main app with ``app.add_subapp("/gateway/api", admin_app)``; the paths below are
relative to that prefix. This module, with the models and the OpenAPI machinery it imports, is
loaded on the first admin request, not at start-up: the sub-app registers
:data:`gateway.admin.routes.ROUTES` (plain data), whose handlers are looked up here by name.
:data:`OPERATIONS` generates the OpenAPI document; the tests check that it, ``ROUTES`` and the
router agree.

Handlers are small: they read and validate the request, call a pure change function from
:mod:`gateway.admin.changes` through :func:`_change` (which runs it inside
``ConfigStore.update``: validated, saved to the file, *then* applied through the store's
``on_change`` listeners, and finally announced as an ``admin.change`` event), and return a
document built by :mod:`gateway.admin.schemas`. Errors are raised as
:class:`~gateway.admin.problems.Problem` and rendered by the problem middleware.

Bodies: JSON only (``application/json``; ``application/merge-patch+json`` for PATCH), validated
strictly (no type coercion), at most 1 MiB. ``PUT /config`` also takes YAML
(``application/yaml``, ``application/x-yaml``, ``text/yaml``), or a body without
``Content-Type`` (or ``application/octet-stream``) whose format is sniffed (``curl -T``). Any
other type is 415 (see :mod:`gateway.admin.auth` for why form types never pass).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Literal

import pydantic
from aiohttp import web

from gateway.admin import changes
from gateway.admin.auth import is_authenticated
from gateway.admin.health import healthz, readyz
from gateway.admin.openapi import Body, Operation, Query, Reply, build_openapi
from gateway.admin.problems import (
    BadRequest,
    FieldError,
    Forbidden,
    Invalid,
    PayloadTooLarge,
    Problem,
    SaveFailed,
    Unauthorized,
    UnsupportedMediaType,
    invalid,
    invalid_from,
)
from gateway.admin.redaction import redact, restore_masked
from gateway.admin.routes import ADMIN, AdminContext, Store, create_admin_app
from gateway.admin.schemas import (
    Healthz,
    ImportReport,
    Readyz,
    ServerCreate,
    ServerList,
    ServerPatch,
    ServerView,
    SettingsPatch,
    SettingsView,
    TestReport,
    TestResult,
    server_list_view,
    server_view,
    settings_view,
)
from gateway.admin.sse import stream_events
from gateway.admin.tester import run_test
from gateway.admin.transfer import config_errors, export_text, parse_import, resolve_import
from gateway.config.loader import ConfigError
from gateway.config.models import GatewayConfig, ServerConfig, slugify
from gateway.config.store import ConfigSaveError

JSON_TYPES: tuple[str, ...] = ("application/json",)
PATCH_TYPES: tuple[str, ...] = ("application/merge-patch+json", "application/json")
YAML_TYPES: tuple[str, ...] = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
MAX_BODY_BYTES = 1024 * 1024
TEST_CONCURRENCY = 8


def _ctx(request: web.Request) -> AdminContext:
    return request.app[ADMIN]


# -- request and response helpers ---------------------------------------------------------


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data, default=str).encode(),
        content_type="application/json",
        headers=headers,
    )


async def _read_limited(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    return bytes(data)


async def _read_text(
    request: web.Request, *, accept: tuple[str, ...], sniff: bool = False
) -> tuple[str, str] | None:
    """Return ``(text, content_type)``, or None when there is no body.

    415 when the declared type is not in ``accept`` (``+json`` types count as JSON), or when
    no type is declared and ``sniff`` is off.
    """
    if not request.body_exists:
        return None
    ctype = request.content_type if "Content-Type" in request.headers else ""
    if sniff and ctype == "application/octet-stream":
        ctype = ""  # "some bytes": as good as no type, sniffed below
    declared = bool(ctype)
    json_ok = "application/json" in accept and ctype.endswith("+json")
    if declared and ctype not in accept and not json_ok:
        raise UnsupportedMediaType(f"{ctype} is not accepted here; send {' or '.join(accept)}")
    raw = await _read_limited(request)
    if not raw.strip():
        return None
    if not declared and not sniff:
        raise UnsupportedMediaType(f"the body has no Content-Type; send {accept[0]}")
    try:
        return raw.decode("utf-8-sig"), ctype
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8 text (byte {exc.start})") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _number(text: str) -> float | int:
    """Parse a JSON number with a fraction or exponent; integral values become ``int``.

    JSON has one number type: ``1.0`` is the integer 1 for JSON Schema, and must be accepted
    where the schema says ``integer`` even though validation is strict.
    """
    value = float(text)
    return int(value) if value.is_integer() else value


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constants, parse_float=_number)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            errors=[FieldError(location="", message=exc.msg, line=exc.lineno)],
        ) from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


async def _json_body(
    request: web.Request, *, accept: tuple[str, ...] = JSON_TYPES, required: bool = True
) -> Any:
    got = await _read_text(request, accept=accept)
    if got is None:
        if required:
            raise BadRequest(f"this call needs a JSON body ({accept[0]})")
        return None
    return _parse_json(got[0])


def _query_choice(request: web.Request, name: str, choices: tuple[str, ...], default: str) -> str:
    value = request.query.get(name, default)
    if value not in choices:
        raise invalid(name, f"must be one of {', '.join(choices)}", value)
    return value


def _query_bool(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise invalid(name, "must be true or false", value)


def _server_id(request: web.Request) -> str:
    return request.match_info["id"]


async def _change(
    request: web.Request,
    change: Callable[[GatewayConfig], GatewayConfig],
    *,
    action: str,
    server: str | None = None,
    details: dict[str, Any] | None = None,
) -> GatewayConfig:
    """Run ``change`` through the store (validated, saved, applied), then announce it.

    The announcement is the bus event only (the observability layer logs bus events).

    ``details`` may be filled by ``change`` itself; it is published after the save, with
    ``action``, ``server`` and ``actor`` (the client address), as an ``admin.change`` event.
    It must hold names and ids only, never values.
    """
    ctx = _ctx(request)
    reason = f"admin: {action}" + (f" {server}" if server else "")
    try:
        new = await ctx.store.update(change, reason=reason)
    except Problem:
        raise
    except ConfigSaveError as exc:
        raise SaveFailed(
            "the configuration file could not be written; nothing changed "
            f"({exc.cause.strerror or type(exc.cause).__name__})"
        ) from exc
    except pydantic.ValidationError as exc:
        raise invalid_from(exc, what="resulting configuration") from None
    except ConfigError as exc:
        raise Invalid(
            "the change makes the configuration invalid", errors=config_errors(exc)
        ) from None
    except ValueError as exc:
        raise Invalid(f"the change was refused: {exc}") from None
    event = dict(details or {})
    ctx.registry.events.publish(
        "admin.change", action=action, server=server, actor=request.remote, **event
    )
    return new


# -- servers --------------------------------------------------------------------------------


async def list_servers(request: web.Request) -> web.Response:
    """List every server with its configuration (secrets masked) and live status.

    ``preferred`` is the admin's choice (the persisted ``active``), ``serving`` where traffic
    goes now; they differ after a failover.
    """
    return _json(server_list_view(_ctx(request).registry))


def _validate_server(data: Any, *, current: GatewayConfig) -> ServerConfig:
    if isinstance(data, dict):
        key = data.get("id") or (slugify(data["name"]) if isinstance(data.get("name"), str) else "")
        saved = current.server(key) if isinstance(key, str) else None
        data = restore_masked(data, saved.model_dump(mode="python") if saved else {})
    try:
        return ServerCreate.model_validate(data, strict=True).to_config()
    except pydantic.ValidationError as exc:
        raise invalid_from(exc, what="server") from None


async def add_server(request: web.Request) -> web.Response:
    """Add a server (saved to the file first); 201 with the server and its ``Location``.

    The id may be omitted: it is derived from the name. 409 when the id is taken.
    """
    ctx = _ctx(request)
    body = await _json_body(request)
    server = _validate_server(body, current=GatewayConfig())
    new = await _change(
        request,
        lambda c: changes.add_server(c, server),
        action="server.added",
        server=server.id,
    )
    saved = new.server(server.id) or server
    location = str(request.app.router["getServer"].url_for(id=server.id))
    return _json(server_view(ctx.registry, saved), 201, {"Location": location})


async def get_server(request: web.Request) -> web.Response:
    """Return one server with its live status."""
    ctx = _ctx(request)
    server = changes.require_server(ctx.registry.config, _server_id(request))
    return _json(server_view(ctx.registry, server))


async def update_server(request: web.Request) -> web.Response:
    """Edit a server with a JSON merge patch (RFC 7396) of its fields.

    Send only what changes; nested objects (``timeouts``, ``auth``) merge; ``null`` resets a
    member to its default (``"auth": null`` removes the credentials); ``"********"`` in a secret
    keeps the current secret. The id cannot change (422): add a new server and delete this one
    to rename it. Changing the URL resets the live status.
    """
    ctx = _ctx(request)
    server_id = _server_id(request)
    changes.require_server(ctx.registry.config, server_id)
    patch = await _json_body(request, accept=PATCH_TYPES)
    details: dict[str, Any] = {}

    def change(config: GatewayConfig) -> GatewayConfig:
        new, changed = changes.update_server(config, server_id, patch)
        details["fields"] = changed
        return new

    new = await _change(request, change, action="server.updated", server=server_id, details=details)
    return _json(server_view(ctx.registry, changes.require_server(new, server_id)))


async def delete_server(request: web.Request) -> web.Response:
    """Delete a server; 409 for the active (preferred) server and for the serving one."""
    ctx = _ctx(request)
    server_id = _server_id(request)
    changes.require_server(ctx.registry.config, server_id)
    await _change(
        request,
        lambda c: changes.delete_server(c, server_id, serving=ctx.registry.serving_id),
        action="server.deleted",
        server=server_id,
    )
    return web.Response(status=204)


async def activate_server(request: web.Request) -> web.Response:
    """Make a server the active one: preferred (saved as ``active``) and serving now.

    409 when the server is disabled. Selecting a server that is down is allowed (as in the old
    screen); with ``failover.auto_switch`` on, the failover controller may then move traffic.
    """
    ctx = _ctx(request)
    server_id = _server_id(request)
    changes.require_server(ctx.registry.config, server_id)
    new = await _change(
        request,
        lambda c: changes.activate_server(c, server_id),
        action="server.activated",
        server=server_id,
    )
    # The registry moves traffic when ``active`` changes; when it was already the active one
    # (traffic had failed over elsewhere), selecting it again means "serve from it now".
    if ctx.registry.preferred_id == server_id and ctx.registry.serving_id != server_id:
        ctx.registry.set_serving(server_id, reason="admin selected the active server")
    return _json(server_view(ctx.registry, changes.require_server(new, server_id)))


async def _test(ctx: AdminContext, server: ServerConfig, *, saved: bool) -> dict[str, Any]:
    data = await run_test(ctx.tester, server, saved=saved, limit=ctx.test_limit())
    document = TestResult.model_validate(data).model_dump(mode="json")
    return redact(document, ctx.secrets(server))  # type: ignore[no-any-return]


async def test_server(request: web.Request) -> web.Response:
    """Test one saved server now: reachable, latency, HTTP status, ComfyUI version, devices,
    websocket handshake. Does not change its live status."""
    ctx = _ctx(request)
    server = changes.require_server(ctx.registry.config, _server_id(request))
    return _json(await _test(ctx, server, saved=True))


async def test_servers(request: web.Request) -> web.Response:
    """Test servers now: without a body every saved server (concurrently); with a server body
    (as for ``POST /servers``) those unsaved values, so a form can test before saving.

    In a body, ``"********"`` secrets are taken from the saved server with the same id.
    """
    ctx = _ctx(request)
    body = await _json_body(request, required=False)
    if body is not None:
        server = _validate_server(body, current=ctx.registry.config)
        saved = ctx.registry.server(server.id) == server
        return _json({"results": [await _test(ctx, server, saved=saved)]})
    limit = asyncio.Semaphore(TEST_CONCURRENCY)

    async def one(server: ServerConfig) -> dict[str, Any]:
        async with limit:
            return await _test(ctx, server, saved=True)

    results = await asyncio.gather(*(one(s) for s in ctx.registry.servers))
    return _json({"results": list(results)})


# -- settings -------------------------------------------------------------------------------


def _settings(ctx: AdminContext, config: GatewayConfig) -> dict[str, Any]:
    return settings_view(config, token_configured=bool(ctx.token_getter()))


async def get_settings(request: web.Request) -> web.Response:
    """Return the settings: ``failover`` and ``health`` (editable here) and the read-only
    ``proxy``, ``jobs``, ``listen`` and ``admin`` (without the token)."""
    ctx = _ctx(request)
    return _json(_settings(ctx, ctx.registry.config))


async def update_settings(request: web.Request) -> web.Response:
    """Change live settings with a JSON merge patch: ``failover`` (auto_switch, failback,
    failback_hold, resubmit_lost_prompts) and ``health`` (probe tuning).

    Other sections are read-only here (422): change them with ``PUT /config``; ``listen`` and
    ``jobs`` take effect after a restart.
    """
    ctx = _ctx(request)
    patch = await _json_body(request, accept=PATCH_TYPES)
    details: dict[str, Any] = {}

    def change(config: GatewayConfig) -> GatewayConfig:
        new, changed = changes.patch_settings(config, patch)
        details["fields"] = changed
        return new

    new = await _change(request, change, action="settings.updated", details=details)
    return _json(_settings(ctx, new))


# -- export / import ------------------------------------------------------------------------


async def export_config(request: web.Request) -> web.Response:
    """Export the configuration as saved (YAML by default, or JSON), secrets masked.

    ``include_secrets=true`` reveals them; it needs the admin token even when reads are public
    (401 without it), and is refused (403) when no admin token is configured, since anyone
    could then read the credentials. Runtime overrides (the admin token from the environment)
    are not part of the export.
    """
    ctx = _ctx(request)
    fmt = _query_choice(request, "format", ("yaml", "json"), "yaml")
    include_secrets = _query_bool(request, "include_secrets")
    if include_secrets:
        if not ctx.token_getter():
            raise Forbidden(
                "include_secrets=true needs an admin token, and none is configured "
                "(set admin.token or COMFYUI_GATEWAY_ADMIN_TOKEN)"
            )
        if not is_authenticated(request):
            raise Unauthorized(
                "include_secrets=true needs the admin token",
                headers={"WWW-Authenticate": 'Bearer realm="comfyui-gateway admin"'},
            )
    config = getattr(ctx.store, "file_config", ctx.store.config)
    text = export_text(config, fmt=fmt, include_secrets=include_secrets)
    return web.Response(
        text=text,
        content_type="application/json" if fmt == "json" else "application/yaml",
        headers={
            "Content-Disposition": f'attachment; filename="comfyui-gateway.{fmt}"',
            "Cache-Control": "no-store",
        },
    )


def _import_report(old: GatewayConfig, new: GatewayConfig) -> dict[str, Any]:
    before = {s.id: s for s in old.servers}
    after = {s.id: s for s in new.servers}
    return {
        "servers": list(after),
        "added": [i for i in after if i not in before],
        "removed": [i for i in before if i not in after],
        "changed": [i for i in after if i in before and before[i] != after[i]],
        "active": new.preferred_id,
    }


async def import_config(request: web.Request) -> web.Response:
    """Import a whole configuration file (YAML or JSON, as exported), ``mode=replace|merge``.

    The file is validated completely before anything changes (422 lists every problem with its
    location and line). An old single-server file (``url:``, ``comfyui: {host, port}``,
    ``{"serverUrl": ...}``) is migrated to one server "Default Server". ``"********"``
    secrets keep the current ones, so export -> import round-trips. ``replace``: the file
    becomes the configuration (``listen``/``admin`` stay when the file omits them); ``merge``:
    servers merged by id, settings from the file override.
    """
    mode: Literal["replace", "merge"] = _query_choice(  # type: ignore[assignment]
        request, "mode", ("replace", "merge"), "replace"
    )
    got = await _read_text(request, accept=JSON_TYPES + YAML_TYPES, sniff=True)
    if got is None:
        raise BadRequest("send the configuration file as the body (YAML or JSON)")
    text, ctype = got
    imported = parse_import(
        text,
        json_body=ctype == "application/json" or ctype.endswith("+json"),
        current=_ctx(request).store.config,
    )
    details: dict[str, Any] = {"mode": mode, "migrated": imported.migrated_from is not None}

    def change(config: GatewayConfig) -> GatewayConfig:
        incoming = resolve_import(imported, config)
        new = changes.import_config(config, incoming, mode)
        details.update(_import_report(config, new))
        return new

    await _change(request, change, action="config.imported", details=details)
    return _json({key: details[key] for key in ImportReport.model_fields})


# -- events and the document ----------------------------------------------------------------


async def events(request: web.Request) -> web.StreamResponse:
    """Stream live events (Server-Sent Events): server status changes, switches, CRUD.

    Each event has ``id``, ``event`` (its kind, e.g. ``server.state``, ``serving.changed``,
    ``admin.change``) and ``data`` (JSON). Reconnect with ``Last-Event-ID`` to replay what was
    missed (from the recent history); a ``resync`` event means some were lost. A ``: ping``
    comment is sent every 15 s.
    """
    ctx = _ctx(request)
    return await stream_events(
        request,
        bus=ctx.registry.events,
        registry=ctx.registry,
        streams=ctx.streams,
        extra_secrets=ctx.token_getter,
    )


async def openapi(request: web.Request) -> web.Response:
    """Return this OpenAPI document (always public)."""
    return _json(_ctx(request).openapi())


# -- the route table ------------------------------------------------------------------------

_ID_LINK = {"id": "$response.body#/id"}
_SERVER_LINKS = {
    name: {"operationId": op, "parameters": _ID_LINK}
    for name, op in (
        ("GetServer", "getServer"),
        ("UpdateServer", "updateServer"),
        ("DeleteServer", "deleteServer"),
        ("ActivateServer", "activateServer"),
        ("TestServer", "testServer"),
    )
}
_SERVER = Reply("The server, with its live status.", ServerView)
_STRING = {"type": "string"}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/servers",
        list_servers,
        "listServers",
        "List servers",
        "servers",
        {200: Reply("Every server, preferred and serving.", ServerList)},
    ),
    Operation(
        "POST",
        "/servers",
        add_server,
        "addServer",
        "Add a server",
        "servers",
        {
            201: Reply(
                "Created and saved.", ServerView, headers={"Location": "URL of the new server."}
            )
        },
        body=Body(ServerCreate),
        conflicts="A server with this id exists.",
        links=_SERVER_LINKS,
    ),
    Operation(
        "GET", "/servers/{id}", get_server, "getServer", "Get a server", "servers", {200: _SERVER}
    ),
    Operation(
        "PATCH",
        "/servers/{id}",
        update_server,
        "updateServer",
        "Edit a server",
        "servers",
        {200: _SERVER},
        body=Body(ServerPatch, PATCH_TYPES),
    ),
    Operation(
        "DELETE",
        "/servers/{id}",
        delete_server,
        "deleteServer",
        "Delete a server",
        "servers",
        {204: Reply("Deleted and saved.")},
        conflicts="The server is the active (preferred) or the serving one.",
    ),
    Operation(
        "POST",
        "/servers/{id}/activate",
        activate_server,
        "activateServer",
        "Make a server the active one",
        "servers",
        {200: _SERVER},
        conflicts="The server is disabled.",
    ),
    Operation(
        "POST",
        "/servers/{id}/test",
        test_server,
        "testServer",
        "Test a server now",
        "tests",
        {200: Reply("The test result.", TestResult)},
    ),
    Operation(
        "POST",
        "/servers/test",
        test_servers,
        "testServers",
        "Test all servers, or unsaved values",
        "tests",
        {200: Reply("One result per tested server.", TestReport)},
        body=Body(
            ServerCreate,
            required=False,
            description="Optional: a server to test without saving it.",
        ),
    ),
    Operation(
        "GET",
        "/settings",
        get_settings,
        "getSettings",
        "Get settings",
        "settings",
        {200: Reply("All settings.", SettingsView)},
    ),
    Operation(
        "PATCH",
        "/settings",
        update_settings,
        "updateSettings",
        "Change failover and health-check settings",
        "settings",
        {200: Reply("All settings, after the change.", SettingsView)},
        body=Body(SettingsPatch, PATCH_TYPES),
    ),
    Operation(
        "GET",
        "/config",
        export_config,
        "exportConfig",
        "Export the configuration",
        "config",
        {
            200: Reply(
                "The configuration file.",
                GatewayConfig,
                also=("application/yaml",),
                headers={"Content-Disposition": "attachment; filename=..."},
            )
        },
        query=(
            Query("format", Literal["yaml", "json"], "Output format.", "yaml"),
            Query("include_secrets", bool, "Reveal secrets (needs the admin token).", False),
        ),
    ),
    Operation(
        "PUT",
        "/config",
        import_config,
        "importConfig",
        "Import a configuration",
        "config",
        {200: Reply("What changed.", ImportReport)},
        body=Body(
            GatewayConfig,
            JSON_TYPES + YAML_TYPES,
            description="A configuration file as exported (YAML or JSON; the same document "
            "either way), or an old single-server file (url:, comfyui: {host, port}, "
            '{"serverUrl": ...}). Read like the file at startup: YAML\'s lenient types.',
        ),
        query=(
            Query(
                "mode",
                Literal["replace", "merge"],
                "replace: the file becomes the configuration; merge: servers "
                "merged by id, settings from the file override.",
                "replace",
            ),
        ),
    ),
    Operation(
        "GET",
        "/events",
        events,
        "streamEvents",
        "Follow live events (SSE)",
        "events",
        {
            200: Reply(
                "An endless text/event-stream.", content_type="text/event-stream", schema=_STRING
            )
        },
        query=(
            Query(
                "last_event_id",
                int,
                "Resume after this event id (as the Last-Event-ID header).",
                None,
            ),
        ),
    ),
    Operation(
        "GET",
        "/openapi.json",
        openapi,
        "getOpenAPI",
        "This document",
        "meta",
        {200: Reply("OpenAPI 3.1 document.", schema={"type": "object"})},
        public=True,
    ),
)

PROBE_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/healthz",
        healthz,
        "healthz",
        "Liveness",
        "probes",
        {200: Reply("The process answers.", Healthz)},
        public=True,
        admin=False,
    ),
    Operation(
        "GET",
        "/readyz",
        readyz,
        "readyz",
        "Readiness",
        "probes",
        {
            200: Reply("Ready (configuration loaded).", Readyz),
            503: Reply("Not ready: configuration not loaded, or shutting down.", Readyz),
        },
        public=True,
        admin=False,
    ),
)
"""Mounted by the main app at ``/gateway/healthz`` and ``/gateway/readyz``; documented here."""


def build_spec() -> dict[str, Any]:
    """Return the OpenAPI document of the admin API and the probes."""
    return build_openapi(OPERATIONS, extra_operations=PROBE_OPERATIONS)


__all__ = [
    "ADMIN",
    "OPERATIONS",
    "PROBE_OPERATIONS",
    "AdminContext",
    "Store",
    "build_spec",
    "create_admin_app",
]
