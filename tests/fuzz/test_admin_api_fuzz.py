"""Schemathesis against the live admin API (issue 8 §2a).

The gateway runs as a real process (``comfyui-gateway --config ... --port ...``) with an admin
token; schemathesis (v4, its CLI) loads ``/gateway/api/openapi.json`` from it and runs every
phase (examples, coverage, fuzzing, and stateful sequences following the document's links:
create -> read/edit/activate/test -> delete) with every check, bounded in examples and time.
Afterwards the gateway must still be alive, its log free of tracebacks, and its YAML file
valid.

Known findings are accepted through schemathesis' baseline file
(``tests/fuzz/schemathesis-baseline.json``), so any *new* failure fails the test while the known
ones stay listed there. None is a 5xx, a response that does not match its schema, or an
authentication gap; all are places where the document and the validators disagree:

* ``positive_data_acceptance`` (ST202) on ``POST /servers``, ``POST /servers/test``, ``PATCH
  /servers/{id}``, ``PUT /config``: the document cannot state every rule the models enforce (a
  URL must parse, with no query, fragment or credentials; ``active`` must name a configured
  server), so some schema-valid bodies get 422;
* ``negative_data_rejection`` (ST201) on ``POST /servers/test``: a JSON ``null`` body is taken as
  "no body" (test every saved server); on ``PUT /config``: an imported file is read with YAML's
  lenient types, as at startup (documented), so ``false`` where an integer is expected passes;
* ``allow_header_conformance`` (ST205) on ``/servers/test``: its 405 answer lists the methods of
  ``/servers/{id}`` (the literal segment ``test`` is also a valid server id).

Choices, each with its reason:

* The admin token comes from ``COMFYUI_GATEWAY_ADMIN_TOKEN``: generated ``PUT /config`` bodies
  may carry ``admin: {}``, which removes a token held in the file, after which every
  "needs auth" check would fail for the rest of the run (that behaviour on a non-loopback
  listener is a bug, see ``tests/security/test_runtime_exposure.py``).
* ``GET /events`` (an endless SSE stream) is excluded; the admin tests cover it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.config.loader import load_config
from tests.security.gateway_proc import GatewayProcess, child_env

TOKEN = "fuzz-admin-token-6d1f0a"
CONFIG = {
    "servers": [
        {"id": "local", "name": "Local", "url": "http://127.0.0.1:9"},
        {
            "id": "render-1",
            "name": "Render 1",
            "url": "http://127.0.0.1:9",
            "priority": 50,
            "auth": {"bearer_token": "fuzz-backend-secret"},
        },
    ],
    "active": "local",
    "health": {"interval": 1.0, "timeout": 0.5},
}
BASELINE = Path(__file__).with_name("schemathesis-baseline.json")
ST_MAIN = "import sys; from schemathesis.cli import schemathesis as m; sys.argv[0] = 'st'; m()"


def schemathesis_available() -> bool:
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
async def gateway(tmp_path: Path):
    gw = GatewayProcess(
        tmp_path / "gw",
        CONFIG,
        args=("--log-level", "warning", "--log-format", "json"),
        env={"COMFYUI_GATEWAY_ADMIN_TOKEN": TOKEN},
    )
    await gw.start()
    yield gw
    await gw.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not schemathesis_available(), reason="pip install 'schemathesis>=4'")
async def test_schemathesis_finds_nothing(gateway, tmp_path):
    reports = tmp_path / "reports"
    baseline = tmp_path / "baseline.json"  # a copy: the run must not touch the committed one
    baseline.write_bytes(BASELINE.read_bytes())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ST_MAIN,
        "run",
        f"{gateway.url}/gateway/api/openapi.json",
        "--checks",
        "all",
        "--baseline",
        str(baseline),
        "--exclude-path",
        "/api/events",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--max-examples",
        "8",
        "--max-time",
        "45",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--seed",
        "20261124",
        "--suppress-health-check",
        "all",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(reports),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=child_env(SCHEMATHESIS_HOOKS=""),
        cwd=str(tmp_path),
    )
    async with asyncio.timeout(100):
        out, _ = await proc.communicate()
    output = out.decode(errors="replace")
    assert proc.returncode == 0, output[-8000:]
    assert "Stateful" in output  # the link-driven phase ran
    # The gateway survived everything: alive, no traceback logged, its file still valid.
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/gateway/healthz") as resp:
            assert resp.status == 200
        auth = {"Authorization": f"Bearer {TOKEN}"}  # an import may have protected reads
        async with session.get(f"{gateway.url}/gateway/api/servers", headers=auth) as resp:
            assert resp.status == 200
    assert "Traceback" not in gateway.logs()
    assert "internal-error" not in output
    load_config(gateway.path, migrate=False)


def _request_schema(spec: dict, path: str, method: str) -> dict:
    """Return the JSON schema of an operation's JSON body, with its components resolvable."""
    body = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return {**body, "components": spec.get("components", {})}


async def test_the_document_and_the_api_agree_on_server_bodies(file_gateway):
    """What the schema admits is accepted; what it refuses, the API refuses with 422 (ST202)."""
    import jsonschema

    client, _ = await file_gateway({**CONFIG, "admin": {"token": TOKEN}})
    spec = await (await client.get("/gateway/api/openapi.json")).json()
    schema = _request_schema(spec, "/api/servers", "post")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for body in ({"name": "Box A", "url": "http://127.0.0.1:9"}, {"id": "b", "url": "http://h"}):
        jsonschema.validate(body, schema)
        assert (await client.post("/gateway/api/servers", json=body, headers=auth)).status == 201
    for body in ({"name": "a", "url": ""}, {"name": "b", "url": "ftp://x"}, {"url": "http://h"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, schema)
        assert (await client.post("/gateway/api/servers", json=body, headers=auth)).status == 422


async def test_undeclared_methods_on_the_gateway_namespace_are_405(file_gateway):
    client, _ = await file_gateway({**CONFIG, "admin": {"token": TOKEN}})
    for method in ("TRACE", "POST", "DELETE"):
        for path in ("/gateway/healthz", "/gateway/readyz"):
            resp = await client.request(method, path)
            assert resp.status == 405, (method, path, resp.status)
            assert "GET" in resp.headers["Allow"]
    resp = await client.get("/gateway/no-such-page")
    assert resp.status == 404  # the gateway's own, never forwarded to ComfyUI


def test_the_document_is_openapi_3_1_and_declares_the_token():
    """Sanity of what schemathesis is fed (no server needed)."""
    from gateway.admin import build_spec

    spec = build_spec()
    assert spec["openapi"].startswith("3.1")
    schemes = spec["components"]["securitySchemes"]
    assert {"bearerToken", "gatewayToken"} <= set(schemes)
    assert yaml.safe_dump(spec)  # serialisable as is
