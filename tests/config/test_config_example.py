"""The shipped example config loads and documents every field of the models."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from gateway.config.loader import ENV_ADMIN_TOKEN, load_config
from gateway.config.models import GatewayConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"


def field_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Yield the path of every field of ``model``, recursively (list items are transparent)."""
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        yield path
        nested = model_inside(info.annotation)
        if nested is not None:
            yield from field_paths(nested, path)


def model_inside(annotation: Any) -> type[BaseModel] | None:
    """Return the model in ``X``, ``list[X]`` or ``X | None``, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    found = (model_inside(arg) for arg in typing.get_args(annotation))
    return next((model for model in found if model is not None), None)


def present(data: Any, path: tuple[str, ...]) -> bool:
    """Return True when ``path`` is set in ``data`` (in any item of a list)."""
    if not path:
        return True
    if isinstance(data, list):
        return any(present(item, path) for item in data)
    return isinstance(data, dict) and path[0] in data and present(data[path[0]], path[1:])


def commented(text: str, key: str) -> bool:
    """Return True when ``key:`` appears as a commented-out setting."""
    return re.search(rf"^\s*#\s*{re.escape(key)}:", text, re.MULTILINE) is not None


def test_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ADMIN_TOKEN, raising=False)
    loaded = load_config(EXAMPLE, migrate=False)
    config = loaded.config
    assert not loaded.migrated
    assert loaded.legacy_shape is None
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8190)
    assert [(s.id, s.url) for s in config.servers] == [
        ("local", "http://127.0.0.1:8188"),
        ("render", "http://127.0.0.1:8189"),
    ]
    assert config.active == "local"
    assert config.admin.token is None  # an example must not ship a usable token


def test_example_shows_settings_at_their_defaults() -> None:
    config = load_config(EXAMPLE, migrate=False).file_config
    for section in ("health", "failover", "proxy", "admin", "jobs"):
        assert getattr(config, section) == GatewayConfig.model_fields[section].get_default(
            call_default_factory=True
        ), section


@pytest.mark.parametrize("path", list(field_paths(GatewayConfig)), ids=".".join)
def test_example_documents_every_field(path: tuple[str, ...]) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert present(data, path) or commented(text, path[-1]), f"{'.'.join(path)} not in example"
