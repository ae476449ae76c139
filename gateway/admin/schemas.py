"""Request and response models of the admin API, derived from the configuration models.

Nothing here restates a configuration field: request bodies are validated by the config models
themselves (``ServerConfig``, ``GatewayConfig``, the settings sections), and the response models
extend or reuse them. The OpenAPI document (:mod:`gateway.admin.openapi`) is generated from these
classes, so the document and the validation cannot drift apart.

Response documents are built by the ``*_view`` functions below; secrets are always masked there
(see :mod:`gateway.admin.redaction`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from gateway.admin.redaction import plain
from gateway.config.models import (
    AlertSettings,
    FailoverSettings,
    GatewayConfig,
    HealthSettings,
    JobSettings,
    ListenConfig,
    ProxySettings,
    ServerConfig,
    ServerId,
)
from gateway.registry import ServerRegistry, ServerStatus

EDITABLE_SETTINGS: tuple[str, ...] = ("failover", "health")
"""Settings sections ``PATCH /settings`` changes live; the others are read-only there."""
READ_ONLY_SETTINGS: tuple[str, ...] = ("listen", "proxy", "jobs", "admin", "alerts")


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- servers ------------------------------------------------------------------------------


class ServerCreate(ServerConfig):
    """A server to add or test: a ``ServerConfig`` whose ``id`` or ``name`` may be omitted.

    An omitted id is derived from the name (``"Render box #2"`` -> ``"render-box-2"``), an
    omitted name is the id; at least one of them is required.
    """

    # The schema states what the validator below enforces: an id or a name (not null).
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["id"], "properties": {"id": {"type": "string"}}},
                {"required": ["name"], "properties": {"name": {"type": "string"}}},
            ]
        }
    )

    id: ServerId | None = None  # type: ignore[assignment]
    name: str | None = Field(  # type: ignore[assignment]
        None, min_length=1, max_length=200, description="Display name (default: the id)."
    )

    @model_validator(mode="after")
    def _needs_name_or_id(self) -> ServerCreate:
        if self.id is None:
            raise ValueError("a server needs a name or an id")
        return self

    def to_config(self) -> ServerConfig:
        """Return the equivalent ``ServerConfig``."""
        return ServerConfig.model_validate(self.model_dump())


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _optional_fields(model: type[BaseModel], *, resettable: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return ``model``'s fields for a merge patch: all optional, constraints kept.

    ``null`` (reset to the default) is allowed for fields with a default and for the required
    ones named in ``resettable`` (derived when absent); other required fields cannot be null.
    """
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation: Any = field.annotation
        if field.metadata:  # constraints such as ge=1 or a pattern live here, not in the type
            annotation = Annotated.__class_getitem__((annotation, *field.metadata))  # type: ignore[attr-defined]
        if field.is_required() and name not in resettable:
            spec = Field(None, description=field.description, json_schema_extra=_drop_default)
            out[name] = (annotation, spec)
        else:
            out[name] = (annotation | None, Field(None, description=field.description))
    return out


ServerPatch: type[BaseModel] = create_model(
    "ServerPatch",
    __config__=ConfigDict(extra="forbid"),
    __doc__="A JSON merge patch (RFC 7396) of a server: only the members to change; null "
    "resets a member to its default; '********' keeps a secret; the id cannot change.",
    **_optional_fields(ServerConfig, resettable=("id", "name")),
)


def _attribute_docs(cls: type) -> dict[str, str]:
    """Return the attribute docstrings (a string right under a field) of a class."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def dataclass_model(
    cls: type,
    name: str,
    doc: str,
    *,
    exclude: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> type[BaseModel]:
    """Build a response model from a dataclass's own fields, types and attribute docstrings."""
    hints = get_type_hints(cls)
    docs = _attribute_docs(cls)
    fields: dict[str, Any] = dict(extra or {})
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        if f.default_factory is not dataclasses.MISSING:
            spec = Field(default_factory=f.default_factory, description=docs.get(f.name))
        elif f.default is not dataclasses.MISSING:
            spec = Field(f.default, description=docs.get(f.name))
        else:
            spec = Field(description=docs.get(f.name))
        fields[f.name] = (hints[f.name], spec)
    return create_model(name, __config__=ConfigDict(extra="allow"), __doc__=doc, **fields)


StatusView: type[BaseModel] = dataclass_model(
    ServerStatus,
    "ServerStatus",
    "Live status of one server, as the health checker last saw it.",
    exclude=("identity",),  # ServerStatus.as_dict() leaves it out
)


class ServerView(ServerConfig):
    """A configured server (secrets masked as '********') with its live status."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: StatusView  # type: ignore[valid-type]
    preferred: bool = Field(description="The admin's choice (the persisted 'active').")
    serving: bool = Field(description="Where traffic goes now (differs after a failover).")


class ServerList(_Doc):
    """Every configured server, in file order, and the preferred/serving choice."""

    servers: list[ServerView]
    preferred: str | None = Field(description="Id of the preferred (active) server.")
    serving: str | None = Field(description="Id of the server traffic goes to now.")
    auto_switch: bool = Field(description="failover.auto_switch.")


def server_view(registry: ServerRegistry, server: ServerConfig) -> dict[str, Any]:
    """Return one server's response document (secrets masked)."""
    doc: dict[str, Any] = plain(server.model_dump(mode="python"))
    try:
        doc["status"] = registry.status(server.id).as_dict()
    except KeyError:  # not yet reconciled by the registry
        doc["status"] = ServerStatus().as_dict()
    doc["preferred"] = registry.preferred_id == server.id
    doc["serving"] = registry.serving_id == server.id
    return doc


def server_list_view(registry: ServerRegistry) -> dict[str, Any]:
    """Return the ``GET /servers`` document."""
    return {
        "servers": [server_view(registry, s) for s in registry.servers],
        "preferred": registry.preferred_id,
        "serving": registry.serving_id,
        "auto_switch": registry.config.failover.auto_switch,
    }


# -- tests --------------------------------------------------------------------------------


def _test_result_model() -> type[BaseModel]:
    extra: dict[str, Any] = {
        "saved": (bool, Field(description="False when the tested values are not saved.")),
    }
    doc = (
        "The outcome of testing one server now: reachability, latency, HTTP status, ComfyUI "
        "version, devices, websocket handshake. It does not change the server's live status."
    )
    try:
        from gateway.health.checker import ProbeResult
    except ImportError:  # a build without the health package: the documented core only
        return create_model(
            "TestResult",
            __config__=ConfigDict(extra="allow"),
            __doc__=doc,
            server=(str, ...),
            ok=(bool, False),
            reachable=(bool, False),
            error=(str | None, None),
            **extra,
        )
    return dataclass_model(ProbeResult, "TestResult", doc, exclude=("identity",), extra=extra)


TestResult: type[BaseModel] = _test_result_model()


class TestReport(_Doc):
    """Results of testing several servers (or one unsaved server) concurrently."""

    __test__ = False
    results: list[TestResult]  # type: ignore[valid-type]


# -- settings -----------------------------------------------------------------------------


class AdminSettingsView(_Doc):
    """The admin API's protection, without the token."""

    token_configured: bool = Field(description="An admin token is set (config or env).")
    protect_reads: bool
    allow_remote_without_token: bool


class SettingsView(_Doc):
    """Every settings section; ``PATCH /settings`` changes ``failover`` and ``health`` only."""

    failover: FailoverSettings
    health: HealthSettings
    proxy: ProxySettings
    jobs: JobSettings
    listen: ListenConfig
    admin: AdminSettingsView
    alerts: AlertSettings = Field(description="Alert webhooks (URLs and headers masked).")
    editable: list[str] = Field(
        default=list(EDITABLE_SETTINGS), description="Sections PATCH /settings accepts."
    )


def _patch_model(name: str, model: type[BaseModel]) -> type[BaseModel]:
    return create_model(name, __config__=ConfigDict(extra="forbid"), **_optional_fields(model))


SettingsPatch: type[BaseModel] = create_model(
    "SettingsPatch",
    __config__=ConfigDict(extra="forbid"),
    __doc__="A JSON merge patch of the live settings: any members of 'failover' and "
    "'health'; null resets a member to its default. Other sections are read-only here "
    "(change them with PUT /config; listen and jobs need a restart).",
    failover=(_patch_model("FailoverPatch", FailoverSettings) | None, None),
    health=(_patch_model("HealthPatch", HealthSettings) | None, None),
)


def settings_view(config: GatewayConfig, *, token_configured: bool) -> dict[str, Any]:
    """Return the ``GET /settings`` document (no secrets)."""
    return {
        "failover": config.failover.model_dump(mode="json"),
        "health": config.health.model_dump(mode="json"),
        "proxy": config.proxy.model_dump(mode="json"),
        "jobs": config.jobs.model_dump(mode="json"),
        "listen": config.listen.model_dump(mode="json"),
        "admin": {
            "token_configured": token_configured,
            "protect_reads": config.admin.protect_reads,
            "allow_remote_without_token": config.admin.allow_remote_without_token,
        },
        "alerts": plain(config.alerts.model_dump(mode="python")),
        "editable": list(EDITABLE_SETTINGS),
    }


# -- import / export ----------------------------------------------------------------------

ImportMode = Literal["replace", "merge"]
ExportFormat = Literal["yaml", "json"]


class ImportReport(_Doc):
    """What an import changed."""

    mode: ImportMode
    migrated: bool = Field(description="The file was in an old single-server shape.")
    servers: list[str] = Field(description="Server ids after the import, in order.")
    added: list[str]
    removed: list[str]
    changed: list[str] = Field(description="Servers present before and after, with changes.")
    active: str | None = Field(description="The preferred server after the import.")


# -- probes -------------------------------------------------------------------------------


class Healthz(_Doc):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class Readyz(_Doc):
    """Readiness, and what the gateway could serve (informational, see ``readyz``)."""

    ready: bool
    reason: str | None = Field(None, description="Why not ready.")
    healthy_backend: bool | None = Field(
        None, description="At least one enabled server is up (does not affect 'ready')."
    )
    healthy: list[str] = Field(default_factory=list, description="Ids of servers that are up.")
    serving: str | None = None
    preferred: str | None = None
