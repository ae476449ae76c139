"""The admin API's OpenAPI 3.1 document, generated from its route table and pydantic models.

Nothing is written twice: paths, methods and operation ids come from the same
:class:`Operation` table that registers the routes (:data:`gateway.admin.api.OPERATIONS`), and
every schema comes from ``pydantic.json_schema.models_json_schema`` over the models that
validate the requests and shape the responses (request models in "validation" mode, response
models in "serialization" mode). The document's ``servers`` entry is ``/gateway``, so its paths
are the public ones: ``/api/servers``, ..., plus ``/healthz`` and ``/readyz`` (mounted by the
main app beside the admin sub-app).

Security: two equivalent schemes, ``bearerToken`` (``Authorization: Bearer``) and
``gatewayToken`` (``X-Gateway-Token``). Writes require one of them; reads list "no
credentials" as an alternative, since they are public unless ``admin.protect_reads`` is set.

``POST /api/servers`` carries OpenAPI ``links`` to the GET/PATCH/DELETE/activate/test operations
of the created server, so stateful testers (schemathesis) can chain them.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema

import gateway
from gateway.admin.problems import PROBLEM_CONTENT_TYPE, ProblemDetails
from gateway.config.models import SERVER_ID_PATTERN

ADMIN_PREFIX = "/api"
"""Where the admin sub-app is mounted, relative to the document's server URL ``/gateway``."""
REF_TEMPLATE = "#/components/schemas/{model}"
SECURITY_SCHEMES = {
    "bearerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The admin token (admin.token or COMFYUI_GATEWAY_ADMIN_TOKEN).",
    },
    "gatewayToken": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Gateway-Token",
        "description": "The admin token, as an alternative to the Authorization header.",
    },
}
_TOKEN: list[dict[str, list[str]]] = [{"bearerToken": []}, {"gatewayToken": []}]
_PROBLEM_REF = {"$ref": REF_TEMPLATE.format(model="Problem")}


@dataclass(frozen=True)
class Body:
    """A request body: its model (or JSON schema) and accepted content types."""

    model: type[BaseModel] | None
    content_types: Sequence[str] = ("application/json",)
    required: bool = True
    schema: dict[str, Any] | None = None
    description: str = ""


@dataclass(frozen=True)
class Reply:
    """One documented response."""

    description: str
    model: type[BaseModel] | None = None
    content_type: str = "application/json"
    schema: dict[str, Any] | None = None
    also: tuple[str, ...] = ()
    """More content types carrying the same document (``application/yaml``)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Header name -> description (string values)."""


@dataclass(frozen=True)
class Query:
    """One query parameter; ``annotation`` gives its schema (``Literal[...]``, ``bool``)."""

    name: str
    annotation: Any
    description: str
    default: Any = None


@dataclass(frozen=True)
class Operation:
    """One route of the admin API: how it is registered and how it is documented."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    operation_id: str
    summary: str
    tag: str
    replies: dict[int, Reply]
    body: Body | None = None
    query: Sequence[Query] = ()
    conflicts: str | None = None
    """When set, a 409 response is documented with this description."""
    public: bool = False
    """No token ever required (only the OpenAPI document itself)."""
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    admin: bool = True
    """An admin sub-app route (origin rules, problem documents); False for the probes."""

    @property
    def write(self) -> bool:
        """Return True for methods that change something (token required)."""
        return self.method not in ("GET", "HEAD")


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            PROBLEM_CONTENT_TYPE: {"schema": {"$ref": REF_TEMPLATE.format(model="Problem")}}
        },
    }


def _error_replies(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not op.admin:
        return out
    if op.body is not None or op.method in ("POST", "PUT", "PATCH"):
        out["400"] = _problem("Malformed body (invalid JSON or YAML).")
    if not op.public:
        out["401"] = _problem("Admin token missing or invalid (see WWW-Authenticate).")
    out["403"] = _problem("Cross-origin request, or a secrets export with no token configured.")
    if "{id}" in op.path:
        out["404"] = _problem("No server with this id.")
    if op.conflicts:
        out["409"] = _problem(op.conflicts)
    if op.body is not None:
        out["413"] = _problem("Body too large.")
    if op.write:
        out["415"] = _problem("Content-Type not accepted (JSON, or YAML for PUT /config).")
    if op.body is not None or op.query:
        out["422"] = _problem("Invalid content: 'errors' lists location, message and value.")
    out["500"] = _problem("Unexpected failure (logged), or the configuration file not saved.")
    if op.operation_id.startswith("test"):
        out["503"] = _problem("Server tests are not available in this build.")
    return out


def _collect_models(
    operations: Sequence[Operation], extra: Sequence[type[BaseModel]]
) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    seen: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for op in operations:
        if op.body is not None and op.body.model is not None:
            seen[(op.body.model, "validation")] = None
        for reply in op.replies.values():
            if reply.model is not None:
                seen[(reply.model, "serialization")] = None
    for model in extra:
        seen[(model, "serialization")] = None
    return list(seen)


def _ref(refs: dict[Any, Any], model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
    return dict(refs[(model, mode)])


def build_openapi(
    operations: Sequence[Operation],
    *,
    extra_operations: Sequence[Operation] = (),
    extra_models: Sequence[type[BaseModel]] = (),
) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document for ``operations`` (admin, under ``/api``) and
    ``extra_operations`` (paths relative to ``/gateway``, e.g. ``/healthz``)."""
    everything = [*operations, *extra_operations]
    refs, defs = models_json_schema(
        _collect_models(everything, [ProblemDetails, *extra_models]),
        ref_template=REF_TEMPLATE,
    )
    schemas = _secrets_masked(dict(defs.get("$defs", {})))
    schemas["Problem"] = schemas.pop("ProblemDetails")
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(ADMIN_PREFIX + op.path, {})[op.method.lower()] = _operation(op, refs)
    for op in extra_operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    for path, item in paths.items():
        if "{id}" in path:
            item["parameters"] = [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "description": "Server id.",
                    "schema": {"type": "string", "pattern": SERVER_ID_PATTERN},
                    "examples": {"local": {"value": "local"}},
                }
            ]
    tags = sorted({op.tag for op in everything})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "comfyui-gateway admin API",
            "version": gateway.__version__,
            "description": "Manage the ComfyUI servers behind the gateway: add, edit, delete, "
            "select the active server, test connections, tune failover and health checks, "
            "export and import the configuration, follow live events. Every change is "
            "validated and saved to the configuration file before it applies. Errors are RFC "
            "9457 problem documents.",
        },
        "servers": [{"url": "/gateway"}],
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }


def _secrets_masked(schema: Any) -> Any:
    """Describe secrets as the API handles them: accepted in requests, masked in responses.

    pydantic marks ``SecretStr`` ``writeOnly``, which in OpenAPI means "never in a response";
    the API does return them, as ``'********'`` (so a client can send the object back).
    """
    if isinstance(schema, dict):
        if schema.get("writeOnly") is True and schema.get("format") == "password":
            schema = {k: v for k, v in schema.items() if k != "writeOnly"}
            schema["description"] = "A secret: shown as '********' in responses and exports."
        return {k: _secrets_masked(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_secrets_masked(v) for v in schema]
    return schema


def _schema_of(annotation: Any) -> dict[str, Any]:
    return TypeAdapter(annotation).json_schema()


def _operation(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    doc = inspect.getdoc(op.handler) or op.summary
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": doc,
        "tags": [op.tag],
    }
    if op.public:
        out["security"] = [{}]
    elif op.write:
        out["security"] = _TOKEN
    else:
        out["security"] = [{}, *_TOKEN]
    if op.query:
        params = []
        for q in op.query:
            schema = _schema_of(q.annotation)
            if q.default is not None:
                schema["default"] = q.default
            params.append(
                {
                    "name": q.name,
                    "in": "query",
                    "required": False,
                    "description": q.description,
                    "schema": schema,
                }
            )
        out["parameters"] = params
    if op.body is not None:
        body = op.body
        schema = body.schema or (_ref(refs, body.model, "validation") if body.model else {})
        out["requestBody"] = {
            "required": body.required,
            "description": body.description or None,
            "content": {ct: {"schema": schema} for ct in body.content_types},
        }
        if not body.description:
            del out["requestBody"]["description"]
    responses: dict[str, Any] = {}
    for status, reply in op.replies.items():
        entry: dict[str, Any] = {"description": reply.description}
        content: dict[str, Any] = {}
        reply_schema = reply.schema
        if reply.model is not None:
            reply_schema = _ref(refs, reply.model, "serialization")
        if reply_schema is not None:
            for ct in (reply.content_type, *reply.also):
                content[ct] = {"schema": reply_schema}
        if content:
            entry["content"] = content
        if reply.headers:
            entry["headers"] = {
                name: {"description": desc, "schema": {"type": "string"}}
                for name, desc in reply.headers.items()
            }
        if status == 201 and op.links:
            entry["links"] = op.links
        responses[str(status)] = entry
    responses.update(_error_replies(op))
    out["responses"] = dict(sorted(responses.items()))
    return out
