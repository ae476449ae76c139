"""The OpenAPI document: valid 3.1, exactly the router's routes, responses match their schemas."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from admin_harness import Harness
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.admin import api
from gateway.admin.api import OPERATIONS, PROBE_OPERATIONS, build_spec
from gateway.admin.routes import ROUTES


def test_start_up_route_table_is_the_documented_one() -> None:
    """ROUTES (registered at start-up) and OPERATIONS (documented) name the same routes."""
    registered = [(r.method, r.path, r.operation_id, r.public) for r in ROUTES]
    documented = [(o.method, o.path, o.operation_id, o.public) for o in OPERATIONS]
    assert registered == documented
    for route, op in zip(ROUTES, OPERATIONS, strict=True):
        assert getattr(api, route.handler) is op.handler


async def test_document_is_built_on_first_request_then_kept(gw: Harness) -> None:
    assert gw.ctx.spec == {}
    status, spec, _ = await gw.call("GET", "/openapi.json", token=None)
    assert status == 200
    assert spec == build_spec()
    assert gw.ctx.openapi() is gw.ctx.openapi()


async def test_spec_is_valid_openapi_31() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    spec = build_spec()
    assert spec["openapi"] == "3.1.0"
    validator.validate(spec)


async def test_spec_paths_and_methods_equal_the_router(gw: Harness) -> None:
    status, spec, _ = await gw.call("GET", "/openapi.json", token=None)
    assert status == 200
    documented = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method != "parameters"
    }
    routed = set()
    for route in gw.admin.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        routed.add((route.method, path.replace("/gateway", "", 1)))
    for route in gw.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path in ("/gateway/healthz", "/gateway/readyz"):
            routed.add((route.method, path.removeprefix("/gateway")))
    assert documented == routed
    assert len(routed) == len(OPERATIONS) + len(PROBE_OPERATIONS)
    assert spec["servers"] == [{"url": "/gateway"}]


def test_operation_ids_unique_and_links_resolve() -> None:
    spec = build_spec()
    ids = [
        op["operationId"]
        for item in spec["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    ]
    assert len(ids) == len(set(ids)) == len(OPERATIONS) + len(PROBE_OPERATIONS)
    links = spec["paths"]["/api/servers"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in links.values()} <= set(ids)
    assert {"getServer", "deleteServer"} <= {link["operationId"] for link in links.values()}
    assert all(link["parameters"] == {"id": "$response.body#/id"} for link in links.values())


def test_security_documented() -> None:
    spec = build_spec()
    assert set(spec["components"]["securitySchemes"]) == {"bearerToken", "gatewayToken"}
    post = spec["paths"]["/api/servers"]["post"]
    assert {} not in post["security"]
    get = spec["paths"]["/api/servers"]["get"]
    assert {} in get["security"]
    assert "401" in post["responses"]
    assert "422" in post["responses"]
    assert "409" in spec["paths"]["/api/servers/{id}"]["delete"]["responses"]


def _validator(spec: dict[str, Any], ref: str) -> jsonschema.Draft202012Validator:
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:spec", resource)
    return jsonschema.Draft202012Validator({"$ref": "urn:spec" + ref}, registry=registry)


def _response_schema(spec: dict[str, Any], path: str, method: str, status: int) -> str:
    content = spec["paths"][path][method]["responses"][str(status)]["content"]
    schema = next(iter(content.values()))["schema"]
    return "#" + schema["$ref"].removeprefix("#") if "$ref" in schema else ""


async def test_responses_conform_to_their_schemas(gw: Harness) -> None:
    spec = build_spec()
    calls = [
        ("GET", "/servers", None, 200),
        ("POST", "/servers", {"name": "Fresh", "url": "http://127.0.0.1:1"}, 201),
        ("GET", "/servers/remote", None, 200),
        ("PATCH", "/servers/remote", {"priority": 3}, 200),
        ("POST", "/servers/remote/activate", None, 200),
        ("POST", "/servers/local/test", None, 200),
        ("POST", "/servers/test", None, 200),
        ("GET", "/settings", None, 200),
        ("PATCH", "/settings", {"health": {"rise": 4}}, 200),
        ("GET", "/config?format=json", None, 200),
        ("PUT", "/config?mode=merge", {"servers": []}, 200),
        ("GET", "/servers/ghost", None, 404),
        ("POST", "/servers", {"name": "x", "url": "bad"}, 422),
    ]
    for method, path, body, expected in calls:
        status, answer, _ = await gw.call(method, path, body)
        assert status == expected, (path, answer)
        template = path.split("?")[0].replace("/servers/remote", "/servers/{id}")
        template = template.replace("/servers/local", "/servers/{id}")
        template = template.replace("/servers/ghost", "/servers/{id}")
        ref = _response_schema(spec, "/api" + template, method.lower(), status)
        _validator(spec, ref).validate(answer)


def test_secrets_are_described_as_masked_not_write_only() -> None:
    spec = build_spec()
    text = str(spec)
    assert "writeOnly" not in text
    token = spec["components"]["schemas"]["BackendAuth"]["properties"]["bearer_token"]
    assert "********" in str(token)
