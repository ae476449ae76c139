"""Regression tests for loader and saver bugs the property tests found (issue 8 §2b), now fixed.

A control character YAML does not allow (``\\x00``-``\\x08``, ``\\x0b``, ``\\x0c``,
``\\x0e``-``\\x1f``, ``\\x7f``...) anywhere in a config escapes the loader as
``yaml.reader.ReaderError`` instead of a located ``ConfigError``: ``check-config`` and ``run``
print a traceback and exit 1 (not 2), and ``PUT /gateway/api/config`` answers 500.
Cause (fixed): ``gateway/config/yaml_io.py`` ``_read_yaml`` built ``yaml.SafeLoader(text)``
(whose constructor checks the characters) before its ``try``.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.config.loader import ConfigError, parse_config
from tests.security.gateway_proc import GatewayProcess, child_env, gateway_command


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1f", "\x7f", "\ufffe"])
def test_a_control_character_is_a_located_config_error(char):
    with pytest.raises(ConfigError) as raised:
        parse_config(f"servers: []\nlisten: {{port: 8190}}{char}\n", "x.yaml")
    assert raised.value.problems[0].line == 2


async def test_importing_a_control_character_is_a_located_400(file_gateway):
    """Malformed YAML is a 400 problem (like any malformed body), located, never a 500."""
    client, _ = await file_gateway(
        {"servers": [{"id": "x", "url": "http://127.0.0.1:9"}], "admin": {"token": "t0k3n-xyz"}}
    )
    resp = await client.put(
        "/gateway/api/config",
        data=b"servers: []\n\x1f\n",
        headers={"Authorization": "Bearer t0k3n-xyz", "Content-Type": "application/yaml"},
    )
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["errors"][0]["line"] == 2


async def test_check_config_reports_a_control_character_with_exit_code_2(tmp_path):
    gw = GatewayProcess(tmp_path, "servers: []\n\x1f\n", args=())
    proc = await asyncio.create_subprocess_exec(
        *gateway_command(),
        "check-config",
        str(gw.path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2, err.decode()
    assert "Traceback" not in err.decode()


@pytest.mark.parametrize("char", ["\x85"])
def test_a_name_with_a_unicode_line_break_survives_save_and_reload(char):
    from gateway.config.models import GatewayConfig
    from gateway.config.store import to_yaml

    config = GatewayConfig.model_validate(
        {"servers": [{"id": "a", "name": f"GPU{char}A", "url": "http://127.0.0.1:8188"}]}
    )
    assert parse_config(to_yaml(config, include_secrets=True), "x.yaml") == config
