"""/gateway/healthz and /gateway/readyz; 50 concurrent admin edits against the real store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from admin_harness import WAIT, Harness, MakeHarness
from aiohttp import web

from gateway.admin import READINESS, add_health_routes, set_shutting_down
from gateway.config.loader import ConfigError, parse_config
from gateway.registry import ServerState
from gateway.tasks import spawn


async def test_healthz(gw: Harness) -> None:
    resp = await gw.client.get("/gateway/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_readyz_does_not_depend_on_backend_health(gw: Harness) -> None:
    resp = await gw.client.get("/gateway/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["ready"] is True
    assert body["healthy_backend"] is False
    assert body["serving"] == "local"
    assert body["preferred"] == "local"
    gw.registry.set_state("remote", ServerState.UP, reason="test")
    body = await (await gw.client.get("/gateway/readyz")).json()
    assert body["healthy_backend"] is True
    assert body["healthy"] == ["remote"]


@pytest.mark.parametrize(
    "fields",
    [
        {"ready": False, "reason": "shutting down"},
        {
            "ready": True,
            "healthy_backend": True,
            "healthy": ["a", "b"],
            "serving": "a",
            "preferred": "b",
        },
    ],
)
def test_probe_documents_are_the_documented_models(fields: dict[str, Any]) -> None:
    """The probes build plain dicts (no model at start-up); they equal the documented models."""
    from gateway.admin.health import HEALTHZ_DOCUMENT, readyz_document
    from gateway.admin.schemas import Healthz, Readyz

    assert Healthz().model_dump(mode="json") == HEALTHZ_DOCUMENT
    document = readyz_document(**fields)
    assert document == Readyz(**fields).model_dump(mode="json")
    assert list(document) == list(Readyz.model_fields)


async def test_readyz_503_when_shutting_down(gw: Harness) -> None:
    set_shutting_down(gw.app)
    resp = await gw.client.get("/gateway/readyz")
    assert resp.status == 503
    assert (await resp.json())["reason"] == "shutting down"
    assert (await gw.client.get("/gateway/healthz")).status == 200


async def test_readyz_503_without_configuration(aiohttp_client: object) -> None:
    app = web.Application()
    add_health_routes(app)
    client = await aiohttp_client(app)  # type: ignore[operator]
    resp = await client.get("/gateway/readyz")
    assert resp.status == 503
    assert (await resp.json())["reason"] == "configuration not loaded"
    await client.close()
    assert app[READINESS].shutting_down is True  # the on_shutdown hook ran


async def test_fifty_concurrent_edits_all_saved_file_always_valid(
    make_harness: MakeHarness,
) -> None:
    gw = await make_harness()
    stop = asyncio.Event()
    reads: list[int] = []

    async def watch_file(path: Path) -> None:
        while not stop.is_set():
            text = await asyncio.to_thread(path.read_text)
            try:
                parse_config(text, str(path))
            except ConfigError as exc:  # pragma: no cover - the failure being tested for
                raise AssertionError(f"invalid file seen mid-run: {exc}") from None
            reads.append(len(text))

    watcher = spawn(watch_file(gw.path), name="file-watcher")
    adds = [
        gw.call("POST", "/servers", {"id": f"n{i}", "url": f"http://127.0.0.1:{9000 + i}"})
        for i in range(25)
    ]
    edits = [
        gw.call("PATCH", "/servers/remote" if i % 2 else "/servers/local", {"priority": i})
        for i in range(24)
    ]
    edits.append(gw.call("PATCH", "/settings", {"health": {"rise": 5}}))
    async with asyncio.timeout(WAIT * 6):
        results = await asyncio.gather(*adds, *edits)
    stop.set()
    await watcher
    assert [r[0] for r in results[:25]] == [201] * 25
    assert all(r[0] == 200 for r in results[25:]), [r[1] for r in results[25:] if r[0] != 200]
    assert reads
    saved = await gw.file_config()
    assert {f"n{i}" for i in range(25)} <= {s.id for s in saved.servers}
    assert saved.health.rise == 5
    assert saved == gw.store.file_config
    assert {s.id for s in gw.registry.servers} == {s.id for s in saved.servers}
    # The last acknowledged PATCH of each server wins, and it is one that was acknowledged.
    local_priorities = {r[1]["priority"] for r in results[25:49] if r[1]["id"] == "local"}
    assert saved.server("local").priority in local_priorities  # type: ignore[union-attr]
