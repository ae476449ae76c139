"""The gateway as a real process (``comfyui-gateway --config PATH --port P``), for the security,
fuzzing and crash-consistency tests, plus a simulated backend that records what it receives.

Everything waits on conditions with deadlines (bounded polling of the child's health endpoint);
nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config.loader import ENV_ADMIN_TOKEN, load_config
from gateway.config.models import GatewayConfig
from gateway.config.store import ConfigStore, to_yaml
from gateway.testing import FakeComfyOptions, create_fake_comfy_app

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_command() -> list[str]:
    """Return the installed ``comfyui-gateway`` command (``python -m gateway`` without it)."""
    script = shutil.which("comfyui-gateway")
    return [script] if script else [sys.executable, "-m", "gateway"]


def child_env(**extra: str) -> dict[str, str]:
    """Return the environment of a child gateway: no inherited token or config path."""
    env = dict(os.environ)
    env.pop("COMFYUI_GATEWAY_ADMIN_TOKEN", None)
    env.pop("COMFYUI_GATEWAY_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class GatewayProcess:
    """One gateway process, its config file and its captured output."""

    work_dir: Path
    config: dict[str, Any] | str
    args: tuple[str, ...] = ("--log-level", "debug", "--log-format", "json")
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.work_dir / "gateway.yaml"
        text = self.config if isinstance(self.config, str) else yaml.safe_dump(self.config)
        self.path.write_text(text)
        self.port = self.port or free_port()

    @property
    def url(self) -> str:
        """Return the gateway's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _log_paths(self) -> tuple[Path, Path]:
        return (
            self.work_dir / f"stdout-{self.starts}.log",
            self.work_dir / f"stderr-{self.starts}.log",
        )

    async def start(self, *, wait: bool = True) -> GatewayProcess:
        """Start the process (output to files); wait until ``/gateway/healthz`` answers."""
        self.starts += 1
        out_path, err_path = self._log_paths()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *gateway_command(),
                "--config",
                str(self.path),
                "--port",
                str(self.port),
                *self.args,
                stdout=out,
                stderr=err,
                env=child_env(**self.env),
                cwd=str(self.work_dir),
            )
        if wait:
            await self.wait_ready()
        return self

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll the health endpoint (bounded) until it answers 200; fail if the process exits."""
        assert self.proc is not None
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(
                        f"gateway exited with {self.proc.returncode}:\n{self.logs()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        f"{self.url}/gateway/healthz", timeout=aiohttp.ClientTimeout(total=1)
                    ) as resp:
                        if resp.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"gateway not ready in {timeout} s:\n{self.logs()}")
                await asyncio.sleep(0.05)  # bounded polling of another process

    async def kill9(self) -> None:
        """SIGKILL the process (no cleanup at all) and reap it."""
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process, SIGKILL it after ``timeout``; return its exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(timeout):
                    await self.proc.wait()
            except TimeoutError:
                await self.kill9()
        return self.proc.returncode

    async def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        """Wait for the process to exit by itself; return its exit code."""
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    def logs(self) -> str:
        """Return everything every run of the process wrote (stdout and stderr)."""
        parts = []
        for path in sorted(self.work_dir.glob("std*-*.log")):
            parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)


@dataclass
class Seen:
    """One request a recording backend received."""

    method: str
    path_qs: str
    headers: dict[str, str]


def recording_backend(name: str, seen: list[Seen], **options: Any) -> web.Application:
    """A simulated ComfyUI backend that records every request (headers included)."""
    app = create_fake_comfy_app(FakeComfyOptions(name=name, **options))

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append(Seen(request.method, request.path_qs, dict(request.headers)))
        return await handler(request)

    app.middlewares.insert(0, record)
    return app


# -- an in-process gateway backed by a real YAML file ----------------------------------------

FileGateway = Callable[[dict[str, Any]], Awaitable[tuple[TestClient, Path]]]


@pytest.fixture(autouse=True)
def no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
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
