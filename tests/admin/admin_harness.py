"""The admin API under test: a real ConfigStore on tmp_path, a real registry, the real sub-app
mounted at /gateway/api as the application factory mounts it, and an aiohttp test client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.admin import add_health_routes, create_admin_app
from gateway.admin.api import ADMIN, AdminContext
from gateway.admin.tester import ServerTester
from gateway.config.loader import ENV_ADMIN_TOKEN, load_config, parse_config
from gateway.config.models import GatewayConfig, ServerConfig
from gateway.config.store import ConfigStore, to_yaml
from gateway.events import Event
from gateway.keys import REGISTRY
from gateway.registry import ServerRegistry

TOKEN = "s3cret-admin-token"
BACKEND_SECRET = "backend-bearer-secret"
WAIT = 5.0

INITIAL: dict[str, Any] = {
    "servers": [
        {"id": "local", "name": "Local GPU", "url": "http://127.0.0.1:8188"},
        {
            "id": "remote",
            "name": "Remote box",
            "url": "http://10.0.0.7:8188",
            "priority": 50,
            "auth": {"bearer_token": BACKEND_SECRET},
        },
    ],
    "active": "local",
}


class FakeTester:
    """A ServerTester that answers at once and records what it tested."""

    def __init__(self) -> None:
        self.tested: list[ServerConfig] = []

    async def test(self, server: ServerConfig) -> Mapping[str, Any]:
        self.tested.append(server)
        return {
            "server": server.id,
            "ok": True,
            "reachable": True,
            "latency": 0.01,
            "http_status": 200,
            "comfyui_version": "0.3.64",
        }


@dataclass
class Harness:
    """Everything a test needs: the client plus the objects behind it."""

    client: TestClient
    store: ConfigStore
    registry: ServerRegistry
    path: Path
    app: web.Application
    admin: web.Application
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ctx(self) -> AdminContext:
        return self.admin[ADMIN]

    def headers(self, token: str | None = TOKEN, **extra: str) -> dict[str, str]:
        out = {"Authorization": f"Bearer {token}"} if token else {}
        return out | extra

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        content_type: str | None = "application/json",
        raw: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        """Send a request to /gateway/api + path; return status, decoded body, headers."""
        hdrs = self.headers(token) | (headers or {})
        data: bytes | str | None = raw
        if body is not None:
            data = json.dumps(body)
        if data is not None and content_type:
            hdrs.setdefault("Content-Type", content_type)
        skip = () if content_type else ("Content-Type",)
        resp = await self.client.request(
            method,
            "/gateway/api" + path,
            data=data.encode() if isinstance(data, str) else data,
            headers=hdrs,
            params=params,
            skip_auto_headers=skip,
        )
        text = await resp.text()
        ctype = resp.content_type
        decoded: Any = text
        if ctype in ("application/json", "application/problem+json") and text:
            decoded = json.loads(text)
        return resp.status, decoded, resp.headers

    async def file_text(self) -> str:
        return await asyncio.to_thread(self.path.read_text)

    async def file_bytes(self) -> bytes:
        return await asyncio.to_thread(self.path.read_bytes)

    async def file_config(self) -> GatewayConfig:
        return parse_config(await self.file_text(), str(self.path))


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ADMIN_TOKEN, raising=False)


@pytest.fixture
def make_harness(aiohttp_client: Any, tmp_path: Path) -> MakeHarness:
    """Return ``await make_harness(config=..., token=..., protect_reads=..., tester=...)``."""

    async def make(
        config: dict[str, Any] | None = None,
        *,
        token: str | None = TOKEN,
        protect_reads: bool = False,
        tester: ServerTester | None = None,
        sse_heartbeat: float = 15.0,
        test_timeout: float | None = None,
    ) -> Harness:
        path = tmp_path / "gateway.yaml"
        initial = GatewayConfig.model_validate(config if config is not None else INITIAL)
        await asyncio.to_thread(path.write_text, to_yaml(initial, include_secrets=True))
        loaded = await asyncio.to_thread(load_config, path)
        store = ConfigStore.from_loaded(loaded)
        registry = ServerRegistry(store.config)
        store.on_change(lambda cfg, reason: registry.apply_config(cfg, reason=reason))
        settings = {"token": token, "protect_reads": protect_reads}
        admin = create_admin_app(
            registry=registry,
            store=store,
            tester=tester if tester is not None else FakeTester(),
            token_getter=lambda: settings["token"],
            protect_reads_getter=lambda: settings["protect_reads"],
            sse_heartbeat=sse_heartbeat,
            test_timeout=test_timeout,
        )
        app = web.Application()
        app[REGISTRY] = registry
        app.add_subapp("/gateway/api", admin)
        add_health_routes(app)
        client = await aiohttp_client(app)
        return Harness(client, store, registry, path, app, admin, settings)

    return make


@pytest.fixture
async def gw(make_harness: MakeHarness) -> Harness:
    """The default harness: two servers, an admin token, public reads."""
    return await make_harness()


async def next_event(
    queue: asyncio.Queue[Event], predicate: Callable[[Event], bool], timeout: float = WAIT
) -> Event:
    """Wait for the first event matching ``predicate``."""
    async with asyncio.timeout(timeout):
        while True:
            event = await queue.get()
            if predicate(event):
                return event
