"""Loading configuration files: every problem located, secrets masked, env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import (
    ENV_ADMIN_TOKEN,
    ConfigError,
    ConfigProblem,
    apply_env_overrides,
    load_config,
    parse_config,
)
from gateway.config.models import GatewayConfig

BAD_DIR = Path(__file__).parent / "bad"
BAD_FILES = sorted(BAD_DIR.glob("*.yaml"))
CORPUS_SECRETS = ("hunter2", "s3cr3t", "12345")


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ADMIN_TOKEN, raising=False)


def expectations(path: Path) -> list[str]:
    """Return the expected substrings listed on the file's first line."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
    return [item.strip() for item in first.removeprefix("# expect: ").split(", ")]


def errors_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, migrate=False)
    return info.value


def test_corpus_is_not_empty() -> None:
    assert len(BAD_FILES) >= 10


@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.stem)
def test_bad_file_reports_every_expected_problem(path: Path) -> None:
    error = errors_of(path)
    rendered = error.lines()
    for expected in expectations(path):
        assert any(expected in line for line in rendered), f"{expected!r} not in {rendered}"
    for line in rendered:
        assert line.startswith(f"{path}:")
        assert "\n" not in line


@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.stem)
def test_bad_file_never_echoes_a_secret_nor_a_traceback(path: Path) -> None:
    text = str(errors_of(path))
    for secret in CORPUS_SECRETS:
        assert secret not in text
    assert "Traceback" not in text
    assert "pydantic" not in text


def test_rendering_is_one_line_per_problem_in_the_documented_form() -> None:
    text = "servers:\n  - id: local\n    url: http://a:1\n  - id: b\n    url: ftp://x\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config/x.yaml")
    assert str(info.value) == (
        "config/x.yaml:5: servers[1].url: must start with http:// or https:// (got 'ftp://x')"
    )
    (problem,) = info.value.problems
    assert problem == ConfigProblem(
        "servers[1].url", "must start with http:// or https://", "'ftp://x'", 5
    )


def test_duplicates_and_active_are_reported_even_when_fields_fail() -> None:
    text = (
        "servers:\n"
        "  - {id: a, url: 'ftp://x'}\n"
        "  - {id: a, url: 'http://ok:1'}\n"
        "active: nowhere\n"
        "listen: {port: -5}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.yaml")
    locations = {p.location: p.line for p in info.value.problems}
    assert locations == {
        "servers[0].url": 2,
        "servers[1].id": 3,
        "active": 4,
        "listen.port": 5,
    }


def test_duplicate_ids_alone_are_located_not_reported_twice() -> None:
    text = "servers:\n  - {name: A, url: 'http://a:1'}\n  - {id: a, url: 'http://b:1'}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.yaml")
    assert [(p.location, p.line) for p in info.value.problems] == [("servers[1].id", 3)]


def test_active_with_no_servers_at_all() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("active: local\n", "x.yaml")
    assert info.value.lines() == [
        "x.yaml:1: active: names no configured server (configured: none) (got 'local')"
    ]


def test_secrets_are_masked_in_problem_values() -> None:
    text = (
        "servers:\n"
        "  - id: a\n"
        "    url: http://u:topsecret@host:1/?token=topsecret2\n"
        "    auth: {bearer_token: 123456789, query_token: [topsecret3]}\n"
        "admin: topsecret4\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.yaml")
    rendered = str(info.value)
    assert "topsecret" not in rendered
    assert "123456789" not in rendered
    assert "'********'" in rendered


def test_unknown_key_values_are_not_shown() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("admin: {tokn: hunter2}\n", "x.yaml")
    (problem,) = info.value.problems
    assert problem.location == "admin.tokn"
    assert problem.value is None
    assert "did you mean 'token'" in problem.message


def test_json_text_is_accepted() -> None:
    text = '{\n\t"servers": [{"id": "a", "url": "http://a:1"}],\n\t"active": "a"\n}\n'
    assert parse_config(text, "x.json").active == "a"


def test_valid_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("servers:\n  - name: Local GPU\n    url: http://127.0.0.1:8188/\n")
    loaded = load_config(path)
    assert loaded.path == path
    assert loaded.migrated is False
    assert loaded.migration is None
    assert loaded.config.servers[0].id == "local-gpu"
    assert loaded.config.servers[0].url == "http://127.0.0.1:8188"
    assert loaded.config == loaded.file_config
    assert path.read_text() == "servers:\n  - name: Local GPU\n    url: http://127.0.0.1:8188/\n"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read the file" in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "missing.yaml"))


def test_non_utf8_file_is_located(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"servers:\n  - name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.line == 2
    assert "UTF-8" in problem.message


def test_env_token_overrides_admin_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("admin: {token: from-file}\nservers: [{id: a, url: 'http://a:1'}]\n")
    monkeypatch.setenv(ENV_ADMIN_TOKEN, "from-env")
    loaded = load_config(path)
    assert loaded.config.admin.token is not None
    assert loaded.config.admin.token.get_secret_value() == "from-env"
    assert loaded.file_config.admin.token is not None
    assert loaded.file_config.admin.token.get_secret_value() == "from-file"


def test_apply_env_overrides_ignores_unset_and_blank() -> None:
    config = GatewayConfig()
    assert apply_env_overrides(config, {}) is config
    assert apply_env_overrides(config, {ENV_ADMIN_TOKEN: "  "}) is config
    overridden = apply_env_overrides(config, {ENV_ADMIN_TOKEN: " s3cr3t-env\n"})
    assert overridden.admin.token is not None
    assert overridden.admin.token.get_secret_value() == "s3cr3t-env"
    assert "s3cr3t" not in repr(overridden)


def test_merge_keys_are_not_duplicates() -> None:
    text = (
        "defaults: &d {enabled: true, priority: 5}\n"
        "servers:\n"
        "  - <<: *d\n"
        "    id: a\n"
        "    url: http://a:1\n"
        "    priority: 7\n"
    )
    with pytest.raises(ConfigError) as info:  # only 'defaults' is wrong: an unknown key
        parse_config(text, "x.yaml")
    assert [(p.location, p.line) for p in info.value.problems] == [("defaults", 1)]
