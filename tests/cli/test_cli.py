"""The command line as a user runs it: real processes, stopped by PID."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.testing.processes import free_port

REPO = Path(__file__).resolve().parents[2]


async def read_until(stream: asyncio.StreamReader, marker: str, timeout: float = 60) -> list[str]:
    """Read lines until one contains ``marker``; return them all."""
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while line := await stream.readline():
            lines.append(line.decode())
            if marker in lines[-1]:
                return lines
    raise AssertionError(f"process ended before printing {marker!r}: {''.join(lines)}")


async def start_cli(*args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """Start ``python -m gateway ARGS`` (stdout and stderr piped unless given)."""
    kwargs.setdefault("stdout", asyncio.subprocess.PIPE)
    kwargs.setdefault("stderr", asyncio.subprocess.PIPE)
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args, **kwargs)


async def test_demo_serves_and_stops_its_backends(tmp_path: Path) -> None:
    port = free_port()
    process = await start_cli(
        "demo",
        "--port",
        str(port),
        "--job-duration",
        "0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        lines = await read_until(process.stdout, "stop with Ctrl+C")
        backends = lines[0].split("backends ")[1].strip().split(" and ")
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(30):
                while True:  # the gateway listens right after printing
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/system_stats") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)
            async with session.get(f"http://127.0.0.1:{port}/gateway/api/servers") as resp:
                assert [s["id"] for s in (await resp.json())["servers"]] == ["a", "b"]
        os.kill(process.pid, signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
        async with aiohttp.ClientSession() as session:
            for url in backends:  # the demo stopped its simulated backends too
                with pytest.raises(aiohttp.ClientConnectionError):
                    await session.get(f"{url}/system_stats")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_check_config_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "servers:\n"
        "  - {id: a, name: A, url: http://127.0.0.1:8188}\n"
        "  - {id: a, name: B, url: ftp://x, colour: blue}\n"
        "active: nowhere\n"
    )
    process = await start_cli(
        "check-config",
        str(bad),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 2
    text = err.decode()
    for expected in ("servers[1].url", "servers[1].colour", "duplicate", "active", str(bad)):
        assert expected in text, text
    good = REPO / "config" / "gateway.yaml"
    process = await start_cli(
        "check-config",
        str(good),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert "OK: 2 server(s)" in out.decode()


async def test_no_config_runs_on_the_built_in_default_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_GATEWAY_CONFIG"}
    process = await start_cli(
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env=env,
    )
    try:
        assert process.stdout is not None
        lines = await read_until(process.stdout, "listening")
        assert any("built-in default" in line for line in lines)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/gateway/api/servers") as resp,
        ):
            servers = (await resp.json())["servers"]
        assert [s["url"] for s in servers] == ["http://127.0.0.1:8188"]
    finally:
        os.kill(process.pid, signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()


async def test_refuses_a_public_address_without_an_admin_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYUI_GATEWAY")}
    process = await start_cli(
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=env,
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    assert "admin token" in err.decode()
