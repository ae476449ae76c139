"""What a running gateway has imported: the rarely used parts load when first used.

The gateway's memory is mostly what it imports (see bench/RESULTS.md), so the admin API's
handlers, models and OpenAPI machinery, the config migration and the "did you mean" hints load
on first use, never at start-up. These tests start a gateway in a fresh interpreter (create_app
on the built-in default config, served on 127.0.0.1, probes and metrics asked once) and check
``sys.modules`` there, so a stray import cannot silently bring the cost back. No size is
asserted: sizes are measured by the benchmark, names here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Loaded by the first admin request (or by what needs them), never by start-up.
ON_FIRST_USE = (
    "gateway.admin.api",
    "gateway.admin.auth",
    "gateway.admin.changes",
    "gateway.admin.openapi",
    "gateway.admin.problems",
    "gateway.admin.redaction",
    "gateway.admin.schemas",
    "gateway.admin.transfer",
    "gateway.config.migrate",
    "gateway.demo",
    "gateway.testing",
    "difflib",
)
# Test and documentation tools: never imported by the gateway at all.
NEVER = ("jsonschema", "openapi_spec_validator", "schemathesis", "hypothesis", "pytest")

SCRIPT = """
import asyncio, json, sys

import aiohttp
from aiohttp import web

from gateway.app import create_app
from gateway.config.models import default_config
from gateway.observability.logging import configure_logging

configure_logging(level="warning", fmt="json")


def loaded(prefixes):
    return sorted(
        m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in prefixes)
    )


async def main():
    app = create_app(default_config())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    out = {}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        statuses = []
        for path in ("/gateway/healthz", "/gateway/readyz", "/metrics", "/gateway/"):
            async with session.get(path) as resp:
                await resp.read()
                statuses.append(resp.status)
        out["statuses"] = statuses
        out["started"] = loaded(PREFIXES)
        async with session.get("/gateway/api/openapi.json") as resp:
            out["openapi_status"] = resp.status
            out["openapi_paths"] = len((await resp.json())["paths"])
        out["after_admin"] = loaded(PREFIXES)
    await runner.cleanup()
    print(json.dumps(out))


PREFIXES = json.loads(sys.argv[1])
asyncio.run(main())
"""


def _python(code: str, *args: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def started() -> dict[str, Any]:
    prefixes = [*ON_FIRST_USE, *NEVER, "rich", "pygments"]
    return json.loads(_python(SCRIPT, json.dumps(prefixes)))  # type: ignore[no-any-return]


def test_the_gateway_served_the_probe_and_metrics_requests(started: dict[str, Any]) -> None:
    assert started["statuses"] == [200, 200, 200, 200]


def test_start_up_does_not_load_what_is_used_rarely(started: dict[str, Any]) -> None:
    early = [m for m in started["started"] if m.split(".")[0] not in ("rich", "pygments")]
    assert early == [], f"loaded at start-up, expected on first use: {early}"


def test_the_first_admin_request_loads_the_admin_api(started: dict[str, Any]) -> None:
    """The check above can fail: the same probe sees the admin modules once they are used."""
    assert started["openapi_status"] == 200
    assert started["openapi_paths"] > 10
    assert {"gateway.admin.api", "gateway.admin.openapi", "gateway.admin.schemas"} <= set(
        started["after_admin"]
    )
    assert not [m for m in started["after_admin"] if m.split(".")[0] in NEVER]


def test_rich_is_loaded_only_by_structlog_itself(started: dict[str, Any]) -> None:
    """structlog imports rich (and pygments) whenever they are installed: ``structlog/__init__``
    imports ``structlog.dev``, which tries ``import rich``, and ``structlog.tracebacks`` imports
    ``rich.pretty``. No setting avoids that. The gateway must not add to it (no rich console,
    logging handler or traceback of its own): what it loads of them is what ``import structlog``
    alone loads."""
    by_structlog = set(
        json.loads(
            _python(
                "import json, sys, structlog; print(json.dumps(sorted(m for m in sys.modules"
                " if m.split('.')[0] in ('rich', 'pygments'))))"
            )
        )
    )
    ours = {m for m in started["started"] if m.split(".")[0] in ("rich", "pygments")}
    assert ours <= by_structlog, sorted(ours - by_structlog)
