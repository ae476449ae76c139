"""Crash consistency of the configuration file (issue 8 §3).

The gateway runs as a real process (``comfyui-gateway --config gateway.yaml --port P``). In each
iteration, concurrent admin writers fire bursts of writes through the real API (add, edit and
delete servers, change settings, activate a server) and the process is killed with SIGKILL at a
random moment. Then:

* the YAML file (and its ``.bak``) parses and validates;
* it equals a state the API acknowledged, writer by writer: each writer owns one part of the
  configuration (its own server, or the settings and the active server) and changes it one
  acknowledged step at a time, so the file must hold, for each writer, its last acknowledged
  state or the one it was writing when the process died (never an older one: an acknowledged
  write is on disk; never a mix inside one write: the file is replaced atomically);
* the restarted gateway serves exactly what the file says.

CI runs ``GATEWAY_CRASH_ITERATIONS`` iterations (default 15); set it higher for a long run
(``GATEWAY_CRASH_ITERATIONS=200 python -m pytest tests/crash``). The prompt journal is not
persisted (it lives in memory, see docs/guarantees.md), so there is no journal to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config.loader import load_config, parse_config
from gateway.config.models import GatewayConfig
from gateway.tasks import spawn
from tests.security.gateway_proc import GatewayProcess

TOKEN = "crash-admin-token-39c1d7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ITERATIONS = int(os.environ.get("GATEWAY_CRASH_ITERATIONS", "15"))
SERVER_WRITERS = 3
CONFIG = {
    "servers": [
        {"id": "a", "name": "A", "url": "http://127.0.0.1:9"},
        {"id": "b", "name": "B", "url": "http://127.0.0.1:9", "priority": 200},
    ],
    "active": "a",
    "health": {"interval": 30, "fast_interval": 30, "down_interval": 30, "timeout": 0.2},
    "admin": {"token": TOKEN},
}

ServerState = tuple[int, str] | None
"""A writer's server as (priority, name), or None when it does not exist."""
SettingsState = tuple[float, str]
"""(failover.failback_hold, active)."""


@dataclass
class Writer:
    """One client changing its own part of the configuration, one acknowledged step at a time."""

    name: str
    acked: Any
    in_flight: list[Any] = field(default_factory=list)
    writes: int = 0
    refused: list[str] = field(default_factory=list)

    def allowed(self) -> list[Any]:
        """The states the file may hold for this writer after a crash."""
        return [self.acked, *self.in_flight]


def server_state(config: GatewayConfig, server_id: str) -> ServerState:
    server = config.server(server_id)
    return None if server is None else (server.priority, server.name)


def settings_state(config: GatewayConfig) -> SettingsState:
    return (config.failover.failback_hold, str(config.active))


async def server_writer(
    session: aiohttp.ClientSession, base: str, writer: Writer, rng: random.Random
) -> None:
    server_id = writer.name
    while True:
        current: ServerState = writer.acked
        if current is None:
            target: ServerState = (rng.randrange(1000), f"W {rng.randrange(10**6)}")
            call = session.post(
                f"{base}/gateway/api/servers",
                json={
                    "id": server_id,
                    "name": target[1],
                    "url": "http://127.0.0.1:9",
                    "priority": target[0],
                },
                headers=AUTH,
            )
            ok = 201
        elif rng.random() < 0.25:
            target, ok = None, 204
            call = session.delete(f"{base}/gateway/api/servers/{server_id}", headers=AUTH)
        else:
            target = (rng.randrange(1000), f"W {rng.randrange(10**6)}")
            call = session.patch(
                f"{base}/gateway/api/servers/{server_id}",
                json={"priority": target[0], "name": target[1]},
                headers=AUTH,
            )
            ok = 200
        writer.in_flight = [target]
        async with call as resp:
            await resp.read()
            if resp.status != ok:
                writer.refused.append(f"{resp.status} {(await resp.text())[:300]}")
                writer.in_flight = []
                continue
        writer.acked, writer.in_flight = target, []
        writer.writes += 1


async def settings_writer(
    session: aiohttp.ClientSession, base: str, writer: Writer, rng: random.Random
) -> None:
    while True:
        hold, active = writer.acked
        if rng.random() < 0.5:
            target = (float(rng.randrange(1, 86400)), active)
            call = session.patch(
                f"{base}/gateway/api/settings",
                json={"failover": {"failback_hold": target[0]}},
                headers=AUTH,
            )
        else:
            other = "b" if active == "a" else "a"
            target = (hold, other)
            call = session.post(f"{base}/gateway/api/servers/{other}/activate", headers=AUTH)
        writer.in_flight = [target]
        async with call as resp:
            await resp.read()
            if resp.status != 200:
                writer.refused.append(f"{resp.status} {(await resp.text())[:300]}")
                writer.in_flight = []
                continue
        writer.acked, writer.in_flight = target, []
        writer.writes += 1


async def until_crash(writes: Any) -> None:
    """Run a writer until the connection fails (the process was killed)."""
    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
        await writes


async def burst_then_kill(gw: GatewayProcess, writers: list[Writer], rng: random.Random) -> float:
    """Run every writer until the process is SIGKILLed after a random delay; return it."""
    delay = rng.uniform(0.05, 0.8)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        tasks = [
            spawn(
                until_crash(
                    (settings_writer if w.name == "settings" else server_writer)(
                        session, gw.url, w, random.Random(rng.random())
                    )
                ),
                name=f"crash-writer-{w.name}",
            )
            for w in writers
        ]
        try:
            # The crash moment is the variable under test: a random point in the burst.
            done, _ = await asyncio.wait(tasks, timeout=delay)
            for task in done:
                task.result()  # a writer that failed before the kill is a test error
            assert gw.proc is not None
            os.kill(gw.proc.pid, signal.SIGKILL)
            await gw.proc.wait()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return delay


def check_file(path: Path, writers: list[Writer]) -> GatewayConfig:
    """The file parses, validates and holds, per writer, an acknowledged or in-flight state."""
    loaded = load_config(path, migrate=False)
    config = loaded.file_config
    for writer in writers:
        found = (
            settings_state(config)
            if writer.name == "settings"
            else server_state(config, writer.name)
        )
        assert found in writer.allowed(), (writer.name, found, writer.allowed())
    backup = path.with_name(path.name + ".bak")
    if backup.exists():
        parse_config(backup.read_text(encoding="utf-8"), str(backup))
    return config


@pytest.mark.slow
@pytest.mark.timeout(max(60, ITERATIONS * 6))
async def test_kill_9_during_admin_write_bursts_leaves_an_acknowledged_state(tmp_path):
    rng = random.Random(int(os.environ.get("GATEWAY_CRASH_SEED", "1124")))
    gw = GatewayProcess(tmp_path / "gw", CONFIG, args=("--log-level", "warning"))
    initial = load_config(gw.path, migrate=False).file_config
    writers = [Writer(f"w{i}", server_state(initial, f"w{i}")) for i in range(SERVER_WRITERS)]
    writers.append(Writer("settings", settings_state(initial)))
    acknowledged = 0
    crashed_mid_write = 0
    try:
        for _ in range(ITERATIONS):
            await gw.start()
            # The restarted gateway serves exactly what the file says.
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{gw.url}/gateway/api/servers") as resp,
            ):
                served = await resp.json()
            file_config = load_config(gw.path, migrate=False).file_config
            assert [s["id"] for s in served["servers"]] == [s.id for s in file_config.servers]
            assert served["preferred"] == file_config.preferred_id
            before = sum(w.writes for w in writers)
            await burst_then_kill(gw, writers, rng)
            acknowledged += sum(w.writes for w in writers) - before
            crashed_mid_write += sum(1 for w in writers if w.in_flight)
            check_file(gw.path, writers)
            # The next iteration starts from what the file holds.
            config = load_config(gw.path, migrate=False).file_config
            for writer in writers:
                writer.acked = (
                    settings_state(config)
                    if writer.name == "settings"
                    else server_state(config, writer.name)
                )
                writer.in_flight = []
    finally:
        await gw.stop()
    leftovers = sorted(p.name for p in gw.path.parent.glob(".gateway.yaml.*.tmp"))
    print(
        f"\ncrash consistency: {ITERATIONS} kill -9, {acknowledged} acknowledged writes, "
        f"{crashed_mid_write} writes in flight at a kill, {len(leftovers)} temp files left"
    )
    assert acknowledged >= ITERATIONS  # the bursts really wrote
    refused = [r for w in writers for r in w.refused]
    assert refused == [], refused
