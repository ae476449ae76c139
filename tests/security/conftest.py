"""Fixtures of the security tests: an in-process gateway backed by a real YAML file."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config.loader import ENV_ADMIN_TOKEN, load_config
from gateway.config.models import GatewayConfig
from gateway.config.store import ConfigStore, to_yaml

FileGateway = Callable[[dict[str, Any]], Awaitable[tuple[TestClient, Path]]]


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ADMIN_TOKEN, raising=False)


@pytest.fixture
def file_gateway(aiohttp_client: Any, tmp_path: Path) -> FileGateway:
    """Return ``await file_gateway(config_dict)`` -> (client, YAML path): the whole app,
    admin API included, served on 127.0.0.1 with its config saved in a file."""
    count = 0

    async def make(data: dict[str, Any]) -> tuple[TestClient, Path]:
        nonlocal count
        count += 1
        path = tmp_path / f"gateway-{count}.yaml"
        text = to_yaml(GatewayConfig.model_validate(data), include_secrets=True)
        await asyncio.to_thread(path.write_text, text)
        loaded = await asyncio.to_thread(load_config, path)
        app = create_app(loaded.config, store=ConfigStore.from_loaded(loaded), watch_config=False)
        client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
        return client, path

    return make
