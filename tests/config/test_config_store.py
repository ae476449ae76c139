"""The config store: atomic saves, serialized updates, reload, watcher, round trips."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr, ValidationError

from gateway.config import store as store_module
from gateway.config.loader import ENV_ADMIN_TOKEN, load_config, parse_config
from gateway.config.models import GatewayConfig, ServerConfig, default_config
from gateway.config.store import (
    MANAGED_HEADER,
    ConfigSaveError,
    ConfigStore,
    dump_config,
    to_yaml,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
INITIAL = (
    "# hand-written\n"
    "listen: {host: 127.0.0.1, port: 8190}\n"
    "servers:\n"
    "  - {id: local, name: Local, url: 'http://127.0.0.1:8188'}\n"
    "active: local\n"
)
WAIT = 5.0  # upper bound for anything the watcher should do within a few 10 ms polls


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ADMIN_TOKEN, raising=False)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(INITIAL)
    return path


class Recorder:
    """An on_change listener that remembers calls and signals each one."""

    def __init__(self, path: Path | None = None) -> None:
        self.calls: list[tuple[GatewayConfig, str]] = []
        self.event = asyncio.Event()
        self.path = path
        self.file_matched: list[bool] = []

    def __call__(self, config: GatewayConfig, reason: str) -> None:
        self.calls.append((config, reason))
        if self.path is not None:  # the file must already hold what listeners are told
            on_disk = parse_config(self.path.read_text(), str(self.path))
            self.file_matched.append(on_disk == config)
        self.event.set()

    async def next_call(self) -> tuple[GatewayConfig, str]:
        await asyncio.wait_for(self.event.wait(), WAIT)
        self.event.clear()
        return self.calls[-1]


async def make_store(path: Path, **kwargs: float) -> ConfigStore:
    loaded = await asyncio.to_thread(load_config, path)
    return ConfigStore.from_loaded(loaded, **kwargs)


async def read_text(path: Path | None) -> str:
    assert path is not None
    return await asyncio.to_thread(path.read_text)


async def read_bytes(path: Path) -> bytes:
    return await asyncio.to_thread(path.read_bytes)


async def write_text(path: Path, text: str) -> None:
    await asyncio.to_thread(path.write_text, text)


async def mode_of(path: Path) -> int:
    return stat.S_IMODE((await asyncio.to_thread(path.stat)).st_mode)


def add_server(
    server_id: str, url: str = "http://127.0.0.1:9999"
) -> Callable[[GatewayConfig], GatewayConfig]:
    def change(config: GatewayConfig) -> GatewayConfig:
        server = ServerConfig(id=server_id, name=server_id, url=url)
        return config.model_copy(update={"servers": [*config.servers, server]})

    return change


def set_priority(priority: int) -> Callable[[GatewayConfig], GatewayConfig]:
    def change(config: GatewayConfig) -> GatewayConfig:
        first = config.servers[0].model_copy(update={"priority": priority})
        return config.model_copy(update={"servers": [first, *config.servers[1:]]})

    return change


async def hand_edit(path: Path, text: str) -> None:
    """Replace the file the way editors do (new inode), so the watcher always notices."""

    def replace() -> None:
        tmp = path.with_name(path.name + ".editor")
        tmp.write_text(text)
        os.replace(tmp, path)

    await asyncio.to_thread(replace)


async def leftovers(directory: Path) -> list[str]:
    names = await asyncio.to_thread(os.listdir, directory)
    return sorted(name for name in names if name.endswith(".tmp"))


class PollCounter:
    """Counts the watcher's looks at the file (file_signature calls) and lets a test await them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._loop = asyncio.get_running_loop()
        self._seen = 0
        self._waiters: list[tuple[int, asyncio.Event]] = []
        real = store_module.file_signature

        def counting(path: Path) -> store_module.FileSignature | None:
            result = real(path)
            self._loop.call_soon_threadsafe(self._tick)
            return result

        monkeypatch.setattr(store_module, "file_signature", counting)

    def _tick(self) -> None:
        self._seen += 1
        for target, event in self._waiters:
            if self._seen >= target:
                event.set()

    async def more(self, count: int) -> None:
        """Wait until the file has been looked at ``count`` more times (bounded by WAIT)."""
        event = asyncio.Event()
        self._waiters.append((self._seen + count, event))
        await asyncio.wait_for(event.wait(), WAIT)


# -- update ----------------------------------------------------------------------------


async def test_update_saves_keeps_one_backup_then_notifies(config_path: Path) -> None:
    store = await make_store(config_path)
    recorder = Recorder(config_path)
    store.on_change(recorder)

    new = await store.update(add_server("render"), reason="admin added render")

    assert [s.id for s in new.servers] == ["local", "render"]
    assert store.config == new
    assert recorder.calls == [(new, "admin added render")]
    assert recorder.file_matched == [True]
    text = await read_text(config_path)
    assert text.startswith(MANAGED_HEADER + "\n")
    assert parse_config(text, "saved") == new
    assert store.backup_path == config_path.with_name("gateway.yaml.bak")
    assert await read_text(store.backup_path) == INITIAL

    await store.update(set_priority(7), reason="second")
    assert await read_text(store.backup_path) == text  # one backup: the previous content
    assert sorted(p.name for p in config_path.parent.iterdir()) == [
        "gateway.yaml",
        "gateway.yaml.bak",
    ]


def manual_failback(config: GatewayConfig) -> GatewayConfig:
    failover = config.failover.model_copy(update={"failback": "manual"})
    return config.model_copy(update={"failover": failover})


async def test_saved_file_keeps_section_order_and_omits_defaults(config_path: Path) -> None:
    store = await make_store(config_path)
    await store.update(
        lambda c: c.model_copy(
            update={"failover": c.failover.model_copy(update={"failback": "manual"})}
        ),
        reason="test",
    )
    body = (await read_text(config_path)).split("\n\n", 1)[1]
    assert body == (
        "listen:\n  host: 127.0.0.1\n  port: 8190\n\n"
        "servers:\n  - id: local\n    name: Local\n    url: http://127.0.0.1:8188\n\n"
        "active: local\n\n"
        "failover:\n  failback: manual\n"
    )


async def test_fifty_concurrent_updates_serialize(config_path: Path) -> None:
    store = await make_store(config_path)
    recorder = Recorder(config_path)
    store.on_change(recorder)

    await asyncio.gather(*(store.update(add_server(f"s{i}"), reason=f"add {i}") for i in range(50)))

    ids = {s.id for s in store.config.servers}
    assert ids == {"local", *(f"s{i}" for i in range(50))}
    assert parse_config(await read_text(config_path), "saved") == store.config
    assert len(recorder.calls) == 50
    assert all(recorder.file_matched)
    sizes = [len(config.servers) for config, _ in recorder.calls]
    assert sizes == list(range(2, 52))  # each change saw the previous one
    assert await leftovers(config_path.parent) == []


async def test_failed_save_changes_nothing(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await make_store(config_path)
    recorder = Recorder()
    store.on_change(recorder)
    before_config, before_bytes = store.config, await read_bytes(config_path)

    def disk_full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(ConfigSaveError, match="No space left on device") as info:
        await store.update(add_server("render"), reason="x")

    assert str(config_path) in str(info.value)
    assert store.config == before_config
    assert await read_bytes(config_path) == before_bytes
    assert recorder.calls == []
    assert await leftovers(config_path.parent) == []

    monkeypatch.undo()  # the disk has space again: the same change now goes through
    monkeypatch.delenv(ENV_ADMIN_TOKEN, raising=False)
    await store.update(add_server("render"), reason="retry")
    assert [s.id for s in store.config.servers] == ["local", "render"]


async def test_no_partial_file_ever_replaces_the_original(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await make_store(config_path)
    real_replace = os.replace
    complete: list[bool] = []

    def checking_replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst) == config_path:
            text = Path(src).read_text()
            complete.append(parse_config(text, "tmp") is not None and text.endswith("\n"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", checking_replace)
    for i in range(5):
        await store.update(add_server(f"s{i}"), reason="x")
    assert complete == [True] * 5


async def test_crash_before_rename_leaves_old_file(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await make_store(config_path)
    real_replace = os.replace

    def crash_on_config(src: str | Path, dst: str | Path) -> None:
        if Path(dst) == config_path:
            raise OSError(5, "Input/output error (simulated crash before rename)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_config)
    with pytest.raises(ConfigSaveError):
        await store.update(add_server("render"), reason="x")
    assert await read_text(config_path) == INITIAL
    assert await leftovers(config_path.parent) == []
    assert [s.id for s in store.config.servers] == ["local"]


async def test_bad_changes_raise_and_change_nothing(config_path: Path) -> None:
    store = await make_store(config_path)
    recorder = Recorder()
    store.on_change(recorder)
    before = await read_bytes(config_path)

    def refuse(_config: GatewayConfig) -> GatewayConfig:
        raise ValueError("no such server")

    with pytest.raises(ValueError, match="no such server"):
        await store.update(refuse, reason="x")
    with pytest.raises(ValidationError, match="duplicate server id"):
        await store.update(add_server("local"), reason="x")  # model_copy skips validation
    with pytest.raises(ValidationError):
        await store.update(add_server("ftp", "ftp://x"), reason="x")
    with pytest.raises(TypeError):
        await store.update(lambda _c: {"servers": []}, reason="x")  # type: ignore[arg-type,return-value]

    assert [s.id for s in store.config.servers] == ["local"]
    assert await read_bytes(config_path) == before
    assert recorder.calls == []
    assert not config_path.with_name("gateway.yaml.bak").exists()


async def test_no_op_change_writes_nothing(config_path: Path) -> None:
    store = await make_store(config_path)
    recorder = Recorder()
    store.on_change(recorder)
    assert await store.update(lambda c: c, reason="nothing") == store.config
    assert await read_text(config_path) == INITIAL
    assert recorder.calls == []


async def test_failing_listener_does_not_hide_the_change(config_path: Path) -> None:
    store = await make_store(config_path)
    recorder = Recorder()

    def broken(_config: GatewayConfig, _reason: str) -> None:
        raise RuntimeError("listener bug")

    store.on_change(broken)
    store.on_change(recorder)
    with structlog.testing.capture_logs() as logs:
        await store.update(add_server("render"), reason="x")
    assert len(recorder.calls) == 1
    assert any(e["event"] == "config listener failed" for e in logs)


async def test_secrets_make_the_file_private(config_path: Path) -> None:
    await asyncio.to_thread(config_path.chmod, 0o644)
    store = await make_store(config_path)
    await store.update(add_server("render"), reason="no secret yet")
    assert await mode_of(config_path) == 0o644

    def with_token(config: GatewayConfig) -> GatewayConfig:
        admin = config.admin.model_copy(update={"token": SecretStr("s3cr3t")})
        return config.model_copy(update={"admin": admin})

    await store.update(with_token, reason="token")
    assert await mode_of(config_path) == 0o600
    assert "token: s3cr3t" in await read_text(config_path)  # the file is the source of truth
    backup = config_path.with_name("gateway.yaml.bak")
    assert await mode_of(backup) == 0o600


async def test_env_token_is_never_written(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write_text(config_path, INITIAL + "admin: {token: from-file}\n")
    monkeypatch.setenv(ENV_ADMIN_TOKEN, "from-env")
    store = await make_store(config_path)
    assert store.config.admin.token == SecretStr("from-env")

    await store.update(add_server("render"), reason="x")
    text = await read_text(config_path)
    assert "from-env" not in text
    assert "token: from-file" in text
    assert store.config.admin.token == SecretStr("from-env")

    def protect_reads(config: GatewayConfig) -> GatewayConfig:
        admin = config.admin.model_copy(update={"protect_reads": True})
        return config.model_copy(update={"admin": admin})

    await store.update(protect_reads, reason="x")  # a change inside the admin section
    text = await read_text(config_path)
    assert "from-env" not in text
    assert "token: from-file" in text
    assert "protect_reads: true" in text


async def test_env_token_not_written_even_without_file_config(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write_text(config_path, INITIAL + "admin: {token: from-file}\n")
    monkeypatch.setenv(ENV_ADMIN_TOKEN, "from-env")
    loaded = await asyncio.to_thread(load_config, config_path)
    store = ConfigStore(config_path, loaded.config)  # no file_config nor digest
    await store.update(add_server("render"), reason="x")
    text = await read_text(config_path)
    assert "from-env" not in text
    assert "token: from-file" in text


async def test_memory_only_store_logs_once(tmp_path: Path) -> None:
    store = ConfigStore(None, default_config())
    recorder = Recorder()
    store.on_change(recorder)
    with structlog.testing.capture_logs() as logs:
        await store.update(add_server("a"), reason="x")
        await store.update(add_server("b"), reason="y")
    assert [s.id for s in store.config.servers] == ["local", "a", "b"]
    assert [reason for _, reason in recorder.calls] == ["x", "y"]
    assert sum("memory only" in e["event"] for e in logs) == 1
    assert await store.reload() is False
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


# -- reload and watching -------------------------------------------------------------


async def test_reload_picks_up_a_hand_edit(config_path: Path) -> None:
    store = await make_store(config_path)
    recorder = Recorder()
    store.on_change(recorder)
    await write_text(config_path, INITIAL.replace("name: Local", "name: Edited by hand"))
    assert await store.reload() is True
    assert store.config.servers[0].name == "Edited by hand"
    assert recorder.calls == [(store.config, "config file reloaded")]
    assert await store.reload() is False  # same content again


async def test_invalid_hand_edit_keeps_running_config(config_path: Path) -> None:
    store = await make_store(config_path)
    recorder = Recorder()
    store.on_change(recorder)
    before = store.config
    await write_text(
        config_path, INITIAL.replace("http://127.0.0.1:8188", "ftp://x") + "bogus: 1\n"
    )
    with structlog.testing.capture_logs() as logs:
        assert await store.reload() is False
    assert store.config == before
    assert recorder.calls == []
    (entry,) = [e for e in logs if e["log_level"] == "error"]
    assert entry["problems"] == [
        f"{config_path}:4: servers[0].url: must start with http:// or https:// (got 'ftp://x')",
        f"{config_path}:6: bogus: unknown key (allowed: listen, servers, active, health, "
        "failover, proxy, admin, jobs, alerts)",
    ]


async def test_own_writes_do_not_count_as_edits(config_path: Path) -> None:
    store = await make_store(config_path)
    recorder = Recorder()
    store.on_change(recorder)
    await store.update(add_server("render"), reason="admin")
    assert await store.reload() is False
    assert len(recorder.calls) == 1


async def test_hand_edit_not_yet_seen_is_not_overwritten_by_an_update(config_path: Path) -> None:
    store = await make_store(config_path)
    await hand_edit(config_path, INITIAL.replace("name: Local", "name: Hand"))
    await store.update(add_server("render"), reason="admin")  # no reload in between
    saved = parse_config(await read_text(config_path), "saved")
    assert [(s.id, s.name) for s in saved.servers] == [("local", "Hand"), ("render", "render")]


async def test_watcher_reloads_hand_edits_and_ignores_own_writes(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await make_store(config_path)
    recorder = Recorder()
    store.on_change(recorder)
    polls = PollCounter(monkeypatch)
    async with store.watch(interval=0.01):
        await hand_edit(config_path, INITIAL.replace("name: Local", "name: Watched"))
        config, reason = await recorder.next_call()
        assert config.servers[0].name == "Watched"
        assert reason == "config file reloaded"

        await store.update(add_server("render"), reason="admin")
        await recorder.next_call()
        await polls.more(5)
        assert [reason for _, reason in recorder.calls] == ["config file reloaded", "admin"]

        with structlog.testing.capture_logs() as logs:
            await hand_edit(config_path, "servers: [oops")  # invalid: refused, logged once
            await polls.more(5)
        assert len(store.config.servers) == 2
        errors = [e for e in logs if e["log_level"] == "error"]
        assert len(errors) == 1
        assert errors[0]["problems"][0].startswith(f"{config_path}:1: YAML syntax error")

        await hand_edit(config_path, INITIAL)
        config, _ = await recorder.next_call()
        assert [s.id for s in config.servers] == ["local"]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
async def test_sighup_reloads(config_path: Path) -> None:
    store = await make_store(config_path)
    recorder = Recorder()
    store.on_change(recorder)
    loop = asyncio.get_running_loop()
    assert store.install_sighup(loop)
    try:
        await write_text(config_path, INITIAL.replace("name: Local", "name: After HUP"))
        os.kill(os.getpid(), signal.SIGHUP)
        config, _ = await recorder.next_call()
        assert config.servers[0].name == "After HUP"
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


# -- serialization -------------------------------------------------------------------


def secret_config() -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "listen": {"host": "0.0.0.0", "port": 8190},
            "servers": [
                {"id": "local", "name": "Local", "url": "http://127.0.0.1:8188"},
                {
                    "id": "render",
                    "name": "Render: box #2",
                    "url": "https://render.example:443/comfy",
                    "enabled": False,
                    "priority": 0,
                    "timeouts": {"read": None},
                    "max_connections": 7,
                    "auth": {
                        "headers": {"X-Api-Key": "k-123"},
                        "basic": {"username": "me", "password": "p: #ss"},
                        "bearer_token": "yes",
                        "query_token": "0123",
                    },
                },
            ],
            "active": "render",
            "health": {"jitter": 0, "path": "/api/system_stats"},
            "proxy": {"allowed_origins": ["https://app.example"]},
            "admin": {"token": "null"},
            "jobs": {"affinity_ttl": 60},
        }
    )


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(GatewayConfig(), id="empty"),
        pytest.param(default_config(), id="default"),
        pytest.param(load_config(EXAMPLE).file_config, id="example"),
        pytest.param(secret_config(), id="secrets"),
    ],
)
def test_round_trip_is_identity(config: GatewayConfig) -> None:
    text = to_yaml(config, include_secrets=True)
    assert parse_config(text, "round-trip") == config
    assert to_yaml(parse_config(text, "round-trip"), include_secrets=True) == text


def test_export_masks_secrets_unless_asked() -> None:
    config = secret_config()
    masked = to_yaml(config, include_secrets=False, header=False)
    for secret in ("k-123", "p: #ss", "0123", "yes"):
        assert secret not in masked.replace("'", "")
    assert masked.count("********") == 5
    data = dump_config(config, include_secrets=False)
    assert data["admin"] == {"token": "********"}
    revealed = dump_config(config, include_secrets=True)
    assert revealed["servers"][1]["auth"]["basic"] == {"username": "me", "password": "p: #ss"}
    assert list(revealed) == ["listen", "servers", "active", "health", "proxy", "admin", "jobs"]
    assert revealed["servers"][1]["timeouts"] == {"read": None}


async def test_example_survives_a_store_write(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(await read_bytes(EXAMPLE))
    store = await make_store(path)
    saved = await store.update(set_priority(1), reason="x")
    assert load_config(path).config == saved
    assert path.with_name("gateway.yaml.bak").read_bytes() == await read_bytes(EXAMPLE)
