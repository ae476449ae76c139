"""Shared fixtures: simulated ComfyUI backends and gateways on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config.models import GatewayConfig
from gateway.keys import FAST_LANE
from gateway.serve import GatewayRunner

# Health settings that make state changes happen within tens of milliseconds in tests.
FAST_HEALTH = {
    "interval": 0.05,
    "fast_interval": 0.02,
    "down_interval": 0.05,
    "timeout": 0.5,
    "jitter": 0.0,
    "rise": 1,
    "fall": 1,
}


def gateway_config(urls: list[str], **overrides: Any) -> GatewayConfig:
    """Return a config with one server per URL (ids b0, b1, ...), fast health checks."""
    data: dict[str, Any] = {
        "servers": [
            {"id": f"b{i}", "name": f"Backend {i}", "url": url, "priority": i * 10}
            for i, url in enumerate(urls)
        ],
        "health": dict(FAST_HEALTH),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return GatewayConfig.model_validate(data)


def server_url(server: TestServer) -> str:
    """Return the base URL of a test server."""
    return f"http://127.0.0.1:{server.port}"


MakeGateway = Callable[..., Awaitable[TestClient]]


class GatewayTestServer(TestServer):
    """aiohttp's ``TestServer`` on the gateway's own runner: the fast lane in front."""

    async def _make_runner(self, **kwargs: Any) -> GatewayRunner:
        return GatewayRunner(self.app, **kwargs)


def _is_gateway(app: Any) -> bool:
    return isinstance(app, web.Application) and FAST_LANE in app


@pytest.fixture
async def aiohttp_server(aiohttp_server: Any) -> Any:
    """pytest-aiohttp's ``aiohttp_server``, serving gateway apps the way the CLI does.

    Every in-process gateway of the suite thus runs behind the fast lane
    (:mod:`gateway.proxy.fastlane`), like a real one.
    """
    started: list[TestServer] = []

    async def serve(app: Any, *, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any):
        if not _is_gateway(app):
            return await aiohttp_server(app, host=host, port=port, **kwargs)
        server = GatewayTestServer(app, host=host, port=port)
        kwargs.pop("handler_cancellation", None)  # TestServer always sets it
        await server.start_server(**kwargs)
        started.append(server)
        return server

    yield serve
    while started:
        await started.pop().close()


@pytest.fixture
def aiohttp_client(aiohttp_client: Any, aiohttp_server: Any) -> Any:
    """pytest-aiohttp's ``aiohttp_client``; gateway apps get a :class:`GatewayTestServer`."""

    async def connect(param: Any, *, server_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        if _is_gateway(param):
            param = await aiohttp_server(param, **(server_kwargs or {}))
        return await aiohttp_client(param, **kwargs)

    return connect


@pytest.fixture
def make_gateway(aiohttp_client: Any) -> MakeGateway:
    """Return a factory: ``await make_gateway([backend_urls], **config_overrides)``."""

    async def make(urls: list[str], **overrides: Any) -> TestClient:
        app = create_app(gateway_config(urls, **overrides))
        return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})

    return make


@pytest.fixture
def start_app(aiohttp_server: Any) -> Callable[[web.Application], Awaitable[TestServer]]:
    """Return a factory that serves an aiohttp app on 127.0.0.1."""

    async def start(app: web.Application) -> TestServer:
        return await aiohttp_server(app, host="127.0.0.1")

    return start


async def wait_for_state(
    registry: Any, predicate: Callable[[], bool], timeout: float = 10.0
) -> None:
    """Wait until ``predicate()`` holds, re-checking on every registry event (no polling)."""
    import asyncio

    subscription = registry.events.subscribe()
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await subscription.get()
    finally:
        subscription.close()


@pytest.fixture
async def backend_process(tmp_path: Any) -> Any:
    """Return a factory of started backend processes; every one is stopped at teardown."""
    from gateway.testing.processes import BackendProcess

    started: list[BackendProcess] = []

    async def start(name: str, **kwargs: Any) -> BackendProcess:
        data_dir = tmp_path / name
        data_dir.mkdir(exist_ok=True)
        backend = BackendProcess(name, data_dir=data_dir, **kwargs)
        started.append(backend)
        return await backend.start()

    yield start
    for backend in started:
        await backend.stop()
