"""Migration of the old single-server shapes to the current shape."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.config.loader import ENV_ADMIN_TOKEN, ConfigError, load_config, parse_config
from gateway.config.migrate import (
    DEFAULT_SERVER_ID,
    DEFAULT_SERVER_NAME,
    convert_legacy,
    detect_legacy_shape,
    migrate_file,
)
from gateway.config.store import ConfigSaveError

NOW = datetime(2026, 11, 24, 7, 23, 1, tzinfo=UTC)
BACKUP_NAME_SUFFIX = ".bak-20261124T072301Z"


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ADMIN_TOKEN, raising=False)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def only_server(path: Path) -> dict[str, Any]:
    config = parse_config(path.read_text(encoding="utf-8"), str(path))
    assert config.active == DEFAULT_SERVER_ID
    (server,) = config.servers
    assert (server.id, server.name) == (DEFAULT_SERVER_ID, DEFAULT_SERVER_NAME)
    return {"url": server.url, "config": config}


@pytest.mark.parametrize(
    ("text", "url", "shape"),
    [
        ("url: http://gpu.lan:8188/\n", "http://gpu.lan:8188", "top-level 'url'"),
        ("comfyui_url: http://gpu.lan:8188\n", "http://gpu.lan:8188", "top-level 'comfyui_url'"),
        ("server_url: https://gpu.lan\n", "https://gpu.lan", "top-level 'server_url'"),
        ("comfyui:\n  host: 10.0.0.5\n  port: 8189\n", "http://10.0.0.5:8189", "'comfyui' block"),
        ("comfyui: {host: gpu, port: 443, scheme: https}\n", "https://gpu:443", "'comfyui' block"),
        ("comfyui: {host: gpu, https: true}\n", "https://gpu:8188", "'comfyui' block"),
        ("comfyui: {port: 9000}\n", "http://127.0.0.1:9000", "'comfyui' block"),
        ("comfyui: {host: '::1', port: 8188}\n", "http://[::1]:8188", "'comfyui' block"),
        ("comfyui: {url: 'http://gpu:1'}\n", "http://gpu:1", "'comfyui' block"),
    ],
)
def test_each_yaml_shape_migrates(tmp_path: Path, text: str, url: str, shape: str) -> None:
    path = write(tmp_path, "gateway.yaml", text)
    result = migrate_file(path, now=NOW)
    assert result.migrated
    assert result.shape == shape
    assert result.url == url
    assert only_server(path)["url"] == url
    assert result.backup_path == tmp_path / f"gateway.yaml{BACKUP_NAME_SUFFIX}"
    assert result.backup_path.read_bytes() == text.encode()


def test_old_json_settings_migrate_and_nothing_is_lost(tmp_path: Path) -> None:
    settings = {"serverUrl": "http://192.168.1.20:8188", "theme": "dark", "autoQueue": True}
    raw = json.dumps(settings, indent="\t").encode()
    path = tmp_path / "settings.json"
    path.write_bytes(raw)

    result = migrate_file(path, now=NOW)

    assert result.migrated
    assert result.shape == "JSON settings 'serverUrl'"
    assert result.dropped_keys == ("theme", "autoQueue")
    assert result.backup_path is not None
    assert result.backup_path.read_bytes() == raw
    assert only_server(path)["url"] == "http://192.168.1.20:8188"
    text = path.read_text()
    assert "Not carried over (still in that file): theme, autoQueue." in text
    assert result.backup_path.name in text
    assert "theme, autoQueue" in result.summary()
    assert str(result.backup_path) in result.summary()


def test_listen_and_known_sections_are_carried_over(tmp_path: Path) -> None:
    text = (
        "url: http://gpu:8188\n"
        "host: 0.0.0.0\n"
        "port: 9001\n"
        "failover: {auto_switch: false}\n"
        "admin: {token: s3cr3t}\n"
        "log_level: debug\n"
    )
    path = write(tmp_path, "gateway.yaml", text)
    result = migrate_file(path, now=NOW)
    config = only_server(path)["config"]
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 9001)
    assert config.failover.auto_switch is False
    assert config.admin.token is not None
    assert config.admin.token.get_secret_value() == "s3cr3t"
    assert result.dropped_keys == ("log_level",)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds a secret now


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("9002", "127.0.0.1", 9002),
        ("'0.0.0.0:9003'", "0.0.0.0", 9003),
        ("{port: 9004}", "127.0.0.1", 9004),
    ],
)
def test_listen_forms(tmp_path: Path, listen: str, host: str, port: int) -> None:
    path = write(tmp_path, "gateway.yaml", f"url: http://gpu:8188\nlisten: {listen}\n")
    migrate_file(path, now=NOW)
    config = only_server(path)["config"]
    assert (config.listen.host, config.listen.port) == (host, port)


def test_credentials_in_the_old_url_move_to_auth(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "url: http://me:pw@gpu:8188/?token=abc\n")
    migrate_file(path, now=NOW)
    server = only_server(path)["config"].servers[0]
    assert server.url == "http://gpu:8188"
    assert server.auth is not None
    assert server.auth.basic is not None
    assert server.auth.basic.username == "me"
    assert server.auth.basic.password.get_secret_value() == "pw"
    assert server.auth.query_token is not None
    assert server.auth.query_token.get_secret_value() == "abc"


def test_comfyui_block_extra_keys_are_reported(tmp_path: Path) -> None:
    conversion = convert_legacy({"comfyui": {"host": "gpu", "port": 1, "timeout": 5}, "x": 1})
    assert conversion.dropped == ("x", "comfyui.timeout")


def test_second_run_is_a_no_op(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "url: http://gpu:8188\n")
    first = migrate_file(path, now=NOW)
    migrated = path.read_bytes()
    second = migrate_file(path, now=NOW)
    assert first.migrated
    assert not second.migrated
    assert second.backup_path is None
    assert "already in the current shape" in second.summary()
    assert path.read_bytes() == migrated
    assert len(list(tmp_path.glob("gateway.yaml.bak-*"))) == 1


def test_backup_names_never_collide(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "url: http://a:1\n")
    first = migrate_file(path, now=NOW)
    path.write_text("url: http://b:1\n")
    second = migrate_file(path, now=NOW)
    assert first.backup_path != second.backup_path
    assert second.backup_path is not None
    assert second.backup_path.read_text() == "url: http://b:1\n"


def test_new_shape_file_is_left_alone(tmp_path: Path) -> None:
    text = "servers: [{id: a, url: 'http://a:1'}]\n"
    path = write(tmp_path, "gateway.yaml", text)
    assert not migrate_file(path).migrated
    assert path.read_text() == text
    assert list(tmp_path.iterdir()) == [path]


def test_non_mapping_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "- http://a:1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        migrate_file(path)


def test_invalid_old_file_is_located_in_the_old_file_and_untouched(tmp_path: Path) -> None:
    text = "theme: dark\nurl: ftp://gpu:8188\nport: 99999\n"
    path = write(tmp_path, "gateway.yaml", text)
    with pytest.raises(ConfigError) as info:
        migrate_file(path, now=NOW)
    assert info.value.lines() == [
        f"{path}:2: url (as servers[0].url): must start with http:// or https:// "
        "(got 'ftp://gpu:8188')",
        f"{path}:3: port (as listen.port): Input should be less than or equal to 65535 (got 99999)",
    ]
    assert path.read_text() == text
    assert list(tmp_path.iterdir()) == [path]


def test_loader_migrates_automatically_and_logs_the_backup(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "comfyui: {host: gpu, port: 8188}\n")
    with structlog.testing.capture_logs() as logs:
        loaded = load_config(path)
    assert loaded.migrated
    assert loaded.migration is not None
    assert loaded.legacy_shape == "'comfyui' block"
    assert loaded.config.servers[0].url == "http://gpu:8188"
    (entry,) = [e for e in logs if e["log_level"] == "warning"]
    assert "migrated" in entry["event"]
    assert entry["backup"] == str(loaded.migration.backup_path)
    assert Path(entry["backup"]).read_text() == "comfyui: {host: gpu, port: 8188}\n"
    assert not load_config(path).migrated  # idempotent through the loader too


def test_loader_without_migration_converts_in_memory_only(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "url: http://gpu:8188\n")
    loaded = load_config(path, migrate=False)
    assert not loaded.migrated
    assert loaded.legacy_shape == "top-level 'url'"
    assert loaded.config.servers[0].url == "http://gpu:8188"
    assert path.read_text() == "url: http://gpu:8188\n"
    assert list(tmp_path.iterdir()) == [path]


def test_unwritable_file_falls_back_to_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "gateway.yaml", "url: http://gpu:8188\n")

    def refuse(*_args: object) -> None:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(ConfigSaveError):
        migrate_file(path, now=NOW)
    with structlog.testing.capture_logs() as logs:
        loaded = load_config(path)
    assert loaded.config.servers[0].url == "http://gpu:8188"
    assert not loaded.migrated
    assert any("converted copy in memory" in e["event"] for e in logs)
    assert path.read_text() == "url: http://gpu:8188\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml"]


def test_detection() -> None:
    assert detect_legacy_shape({"servers": [], "url": "http://a"}) is None
    assert detect_legacy_shape({"url": 5}) is None
    assert detect_legacy_shape(["url"]) is None
    assert detect_legacy_shape(None) is None
    assert detect_legacy_shape({"serverUrl": "http://a"}) == "JSON settings 'serverUrl'"
