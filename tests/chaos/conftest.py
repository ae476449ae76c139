"""Fixtures of the chaos tests: simulated backends as real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.testing.processes import BackendProcess


@pytest.fixture
async def backend_process(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[BackendProcess]]]:
    """Return a factory of started backend processes; every one is stopped at teardown."""
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
