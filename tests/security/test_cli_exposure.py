"""The gateway refuses to listen on a non-loopback address without an admin token.

The real command is run (``comfyui-gateway --config PATH --host H --port P``): exit code 2 and a
message naming the fix. With a token (file or environment) or the explicit opt-out the refusal
is gone (the process then goes on to bind: a TEST-NET address that cannot be bound here makes it
fail differently, proving the refusal was the token rule and nothing else).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.security.gateway_proc import child_env, free_port, gateway_command

REFUSAL = "refusing to listen on"
UNBINDABLE = "192.0.2.1"  # TEST-NET-1: not loopback, and not an address of this machine


async def run_cli(
    tmp_path: Path, config: dict[str, Any], *args: str, **env: str
) -> tuple[int, str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        *gateway_command(),
        "--config",
        str(path),
        "--port",
        str(free_port()),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(**env),
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode(errors="replace")


BASE = {"servers": [{"id": "local", "url": "http://127.0.0.1:8188"}]}


@pytest.mark.parametrize(
    ("config", "args"),
    [
        (BASE, ("--host", "0.0.0.0")),
        (BASE, ("--host", "::")),
        ({**BASE, "listen": {"host": "0.0.0.0"}}, ()),
    ],
    ids=["flag-any4", "flag-any6", "file-any4"],
)
async def test_non_loopback_without_token_exits_2(tmp_path, config, args):
    code, output = await run_cli(tmp_path, config, *args)
    assert code == 2, output
    assert REFUSAL in output
    assert "admin.token" in output  # says how to fix it


@pytest.mark.parametrize(
    ("config", "env"),
    [
        ({**BASE, "admin": {"token": "file-token-123456"}}, {}),
        (BASE, {"COMFYUI_GATEWAY_ADMIN_TOKEN": "env-token-123456"}),
        ({**BASE, "admin": {"allow_remote_without_token": True}}, {}),
    ],
    ids=["token-in-file", "token-in-env", "explicit-opt-out"],
)
async def test_token_or_opt_out_lifts_the_refusal(tmp_path, config, env):
    code, output = await run_cli(tmp_path, config, "--host", UNBINDABLE, **env)
    assert REFUSAL not in output
    assert code != 2, output  # it went on to bind, and that failed for its own reason
    assert code != 0, output
    assert "Cannot assign requested address" in output or "error while attempting to bind" in output
    for secret in ("file-token-123456", "env-token-123456"):
        assert secret not in output
