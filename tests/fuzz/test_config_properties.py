"""Property-based tests of the config loader, the saver and the migration (issue 8 §2b).

* Any generated document (random YAML values, valid configs with random mutations, raw text,
  raw bytes) either loads or fails with :class:`ConfigError` whose every problem is located (a
  path, or a line) and never echoes a secret; never any other exception.
* load -> save -> load is the identity for every valid config (and the saved text is stable).
* Every generated old single-server shape either migrates (one ``default`` server, active, the
  original kept byte for byte in a backup, nothing of it lost, idempotent) or fails with a
  located ConfigError and leaves the file untouched; never any other exception.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.config.loader import ConfigError, load_config, parse_config
from gateway.config.migrate import LEGACY_URL_KEYS, detect_legacy_shape, migrate_file
from gateway.config.models import GatewayConfig
from gateway.config.store import dump_config, to_yaml

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
SECRET = "SEKRET"

# -- strategies ------------------------------------------------------------------------------

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,12}", fullmatch=True)
text_chars = st.characters(codec="utf-8")
names = st.text(text_chars, min_size=1, max_size=40).filter(lambda s: s.strip() != "")
hosts = st.sampled_from(["127.0.0.1", "localhost", "gpu-1.example", "[::1]", "10.0.0.7"])
urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https"]),
    hosts,
    st.sampled_from(["", ":8188", ":1", ":65535"]),
    st.sampled_from(["", "/", "/comfy", "/a/b"]),
)
seconds = st.floats(min_value=0.001, max_value=86400, allow_nan=False, allow_infinity=False)
secrets = st.text(text_chars, min_size=1, max_size=20).map(lambda s: f"{SECRET}-{s}")
header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)

auths = st.fixed_dictionaries(
    {},
    optional={
        "headers": st.dictionaries(header_names, secrets, max_size=2),
        "basic": st.fixed_dictionaries({"username": names, "password": secrets}),
        "bearer_token": secrets,
        "query_token": secrets,
    },
)


@st.composite
def servers(draw: st.DrawFn) -> list[dict[str, Any]]:
    chosen = draw(st.lists(ids, max_size=4, unique=True))
    out = []
    for server_id in chosen:
        server: dict[str, Any] = {"id": server_id, "url": draw(urls)}
        extra = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": names,
                    "enabled": st.booleans(),
                    "priority": st.integers(0, 1_000_000),
                    "timeouts": st.fixed_dictionaries(
                        {}, optional={"connect": seconds, "read": st.none() | seconds}
                    ),
                    "auth": auths,
                    "max_connections": st.integers(1, 10_000),
                },
            )
        )
        out.append(server | extra)
    return out


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {"servers": draw(servers())}
    if data["servers"] and draw(st.booleans()):
        data["active"] = draw(st.sampled_from([s["id"] for s in data["servers"]]))
    sections = {
        "listen": st.fixed_dictionaries(
            {},
            optional={
                "host": st.sampled_from(["127.0.0.1", "::1", "0.0.0.0"]),
                "port": st.integers(0, 65535),
            },
        ),
        "health": st.fixed_dictionaries(
            {},
            optional={
                "path": st.from_regex(r"/[a-z_/]{0,20}", fullmatch=True),
                "interval": seconds,
                "fast_interval": seconds,
                "down_interval": seconds,
                "jitter": st.floats(0, 1),
                "timeout": seconds,
                "rise": st.integers(1, 100),
                "fall": st.integers(1, 100),
                "read_queue": st.booleans(),
            },
        ),
        "failover": st.fixed_dictionaries(
            {},
            optional={
                "auto_switch": st.booleans(),
                "failback": st.sampled_from(["auto", "manual"]),
                "failback_hold": st.floats(0, 86400),
                "resubmit_lost_prompts": st.booleans(),
            },
        ),
        "proxy": st.fixed_dictionaries(
            {},
            optional={
                "max_body_size": st.integers(1024, 2**40),
                "ws_max_message_size": st.integers(1024 * 1024, 2**31),
                "ws_heartbeat": seconds,
                "allowed_origins": st.lists(st.text(text_chars, max_size=30), max_size=3),
                "trust_forwarded_headers": st.booleans(),
            },
        ),
        "admin": st.fixed_dictionaries(
            {},
            optional={
                "token": secrets,
                "protect_reads": st.booleans(),
                "allow_remote_without_token": st.booleans(),
            },
        ),
        "jobs": st.fixed_dictionaries(
            {},
            optional={
                "affinity_max_entries": st.integers(100, 10**7),
                "affinity_ttl": seconds,
                "upload_cache_bytes": st.integers(0, 2**40),
            },
        ),
        "alerts": st.fixed_dictionaries(
            {},
            optional={
                "webhooks": st.lists(
                    st.fixed_dictionaries(
                        {"url": urls.map(lambda u: f"{u}/hook/{SECRET}")},
                        optional={
                            "format": st.sampled_from(["generic", "slack", "discord"]),
                            "headers": st.dictionaries(header_names, secrets, max_size=2),
                            "max_per_minute": st.integers(1, 600),
                        },
                    ),
                    max_size=2,
                ),
                "instance": st.none() | st.text(text_chars, max_size=30),
            },
        ),
    }
    for name, strategy in sections.items():
        if draw(st.booleans()):
            data[name] = draw(strategy)
    return data


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
KNOWN_KEYS = sorted(
    {name for model in (GatewayConfig,) for name in model.model_fields}
    | {"id", "name", "url", "auth", "token", "bearer_token", "basic", "password", "port", "host"}
)
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=12)
junk = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def _containers(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Return every (container, key) pair inside ``node``."""
    if isinstance(node, dict):
        out.extend((node, k) for k in list(node))
        for value in node.values():
            _containers(value, out)
    elif isinstance(node, list):
        out.extend((node, i) for i in range(len(node)))
        for value in node:
            _containers(value, out)
    return out


@st.composite
def mutated_configs(draw: st.DrawFn) -> Any:
    """A valid config, then a few random edits: replace, delete, add or retype at random paths."""
    data = draw(valid_configs())
    for _ in range(draw(st.integers(1, 4))):
        containers = _containers(data, [])
        if not containers:
            return draw(junk)
        parent, key = draw(st.sampled_from(containers))
        action = draw(st.sampled_from(["replace", "delete", "add", "retype"]))
        if action == "replace":
            parent[key] = draw(junk)
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(junk)
        elif action == "retype":
            value = parent[key]
            parent[key] = str(value) if not isinstance(value, str) else [value]
    return data


def _secret_path(path: tuple[Any, ...]) -> bool:
    """Where the config holds secrets: auth blocks, the admin token, webhook URLs/headers."""
    if "auth" in path or path[:2] == ("admin", "token"):
        return True
    return len(path) >= 4 and path[:2] == ("alerts", "webhooks") and path[3] in ("url", "headers")


def secrets_in_place(node: Any, path: tuple[Any, ...] = ()) -> bool:
    """Return True when every planted secret still sits where the config keeps secrets (a
    mutation may have turned a whole block into a string elsewhere: that text is not secret)."""
    if isinstance(node, dict):
        return all(secrets_in_place(v, (*path, k)) for k, v in node.items()) and all(
            SECRET not in str(k) for k in node
        )
    if isinstance(node, list):
        return all(secrets_in_place(v, (*path, i)) for i, v in enumerate(node))
    return SECRET not in str(node) or _secret_path(path)


def located(error: ConfigError) -> None:
    assert error.problems, "a ConfigError without problems"
    for problem in error.problems:
        assert problem.location or problem.line is not None, problem
        assert problem.message, problem


def check_loads_or_located(text: str, *, secrets_planted: bool = False) -> None:
    error: ConfigError | None = None
    try:
        config = parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        error = exc
    else:
        assert isinstance(config, GatewayConfig)
        return
    located(error)
    if secrets_planted:
        assert SECRET not in str(error), str(error)
        assert all(SECRET not in repr(p) for p in error.problems)


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, allow_nan=True)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


# -- loading never crashes ---------------------------------------------------------------------


@SETTINGS
@given(data=junk, fmt=st.sampled_from(["yaml", "json"]))
def test_any_document_loads_or_fails_located(data: Any, fmt: str) -> None:
    check_loads_or_located(dump(data, fmt))


@SETTINGS
@given(data=mutated_configs(), fmt=st.sampled_from(["yaml", "json"]))
def test_mutated_configs_load_or_fail_located_without_echoing_secrets(data: Any, fmt: str) -> None:
    check_loads_or_located(dump(data, fmt), secrets_planted=secrets_in_place(data))


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_text_loads_or_fails_located(text: str) -> None:
    check_loads_or_located(text)


@SETTINGS
@given(raw=st.binary(max_size=300))
def test_any_file_content_loads_or_fails_located(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_bytes(raw)
        try:
            load_config(path, migrate=False)
        except ConfigError as exc:
            located(exc)


# -- round trip ------------------------------------------------------------------------------


@SETTINGS
@given(data=valid_configs())
def test_load_save_load_is_the_identity(data: dict[str, Any]) -> None:
    try:
        config = GatewayConfig.model_validate(data)
    except ValueError:
        assume(False)  # a generated combination the model refuses (covered above)
        return
    text = to_yaml(config, include_secrets=True)
    again = parse_config(text, "saved.yaml")
    assert again == config
    assert to_yaml(again, include_secrets=True) == text  # stable: saving twice changes nothing
    exported = json.loads(json.dumps(dump_config(config, include_secrets=True)))
    assert GatewayConfig.model_validate(exported) == config
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(text, encoding="utf-8")
        loaded = load_config(path, migrate=False)
        assert loaded.file_config == config
        assert not loaded.migrated


# -- migration -------------------------------------------------------------------------------

legacy_urls = st.one_of(
    urls,
    st.builds(
        lambda u, user, pw, tok: u.replace("://", f"://{user}:{pw}@", 1) + f"?token={tok}",
        urls.filter(lambda u: "[" not in u),
        st.from_regex(r"[a-z]{1,8}", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True),
    ),
    st.text(max_size=30),
)
blocks = st.fixed_dictionaries(
    {},
    optional={
        "host": st.sampled_from(["127.0.0.1", "gpu.local", "::1", ""]) | st.text(max_size=10),
        "port": st.integers(-5, 70000) | st.text(max_size=6),
        "scheme": st.sampled_from(["http", "https", "ftp"]),
        "https": st.booleans(),
        "ssl": st.booleans(),
        "url": legacy_urls,
        "extra": scalars,
    },
)
listens = st.one_of(
    st.integers(-1, 70000),
    st.sampled_from(["0.0.0.0:8190", "127.0.0.1:9000", "[::1]:81", "nope"]),
    st.fixed_dictionaries({}, optional={"host": st.text(max_size=10), "port": st.integers()}),
    scalars,
)


@st.composite
def legacy_documents(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    shape = draw(st.sampled_from([*LEGACY_URL_KEYS, "comfyui"]))
    data[shape] = draw(blocks) if shape == "comfyui" else draw(legacy_urls)
    extras = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "listen": listens,
                "host": st.text(max_size=10),
                "port": st.integers(0, 65535),
                "health": st.fixed_dictionaries({}, optional={"interval": seconds}) | junk,
                "admin": st.fixed_dictionaries({}, optional={"token": secrets}),
                "theme": scalars,
                "recentWorkflows": st.lists(st.text(max_size=10), max_size=3),
            },
        )
    )
    return data | extras


@SETTINGS
@given(data=legacy_documents(), fmt=st.sampled_from(["yaml", "json"]))
def test_old_shapes_migrate_or_fail_located(data: dict[str, Any], fmt: str) -> None:
    assert detect_legacy_shape(data) is not None
    original = dump(data, fmt).encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("settings.json" if fmt == "json" else "gateway.yaml")
        path.write_bytes(original)
        try:
            result = migrate_file(path)
        except ConfigError as exc:
            located(exc)
            assert path.read_bytes() == original  # nothing written
            assert sorted(p.name for p in Path(tmp).iterdir()) == [path.name]
            return
        assert result.migrated
        assert result.backup_path is not None
        assert result.backup_path.read_bytes() == original  # the original, byte for byte
        config = parse_config(path.read_text(encoding="utf-8"), str(path))
        assert [s.id for s in config.servers] == ["default"]
        assert config.active == "default"
        assert config.servers[0].name == "Default Server"
        for key in result.dropped_keys:  # reported as not carried over: really in the original
            assert key.split(".")[0] in data
        assert not migrate_file(path).migrated  # idempotent
        loaded = load_config(path)
        assert loaded.legacy_shape is None
        assert loaded.file_config == config


@SETTINGS
@given(data=legacy_documents())
def test_loading_an_old_shape_in_memory_never_crashes(data: dict[str, Any]) -> None:
    text = dump(copy.deepcopy(data), "yaml")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            loaded = load_config(path, migrate=False)
        except ConfigError as exc:
            located(exc)
            return
        assert path.read_text(encoding="utf-8") == text  # migrate=False writes nothing
        assert [s.id for s in loaded.config.servers] == ["default"]
