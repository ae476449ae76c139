"""GET/PUT /config: export, import (replace/merge), validation before change, migration."""

from __future__ import annotations

import json

import yaml
from admin_harness import BACKEND_SECRET, TOKEN, Harness, MakeHarness

from gateway.config.loader import parse_config


async def export(gw: Harness, fmt: str = "yaml", **params: str) -> str:
    status, body, headers = await gw.call(
        "GET", "/config", params={"format": fmt, **params}, token=params.pop("_token", TOKEN)
    )
    assert status == 200, body
    assert headers["Content-Type"].startswith(
        "application/yaml" if fmt == "yaml" else "application/json"
    )
    assert "attachment" in headers["Content-Disposition"]
    return body if isinstance(body, str) else json.dumps(body)


async def test_export_yaml_and_json_mask_secrets(gw: Harness) -> None:
    text = await export(gw)
    assert BACKEND_SECRET not in text
    assert "********" in text
    data = yaml.safe_load(text)
    assert [s["id"] for s in data["servers"]] == ["local", "remote"]
    assert data["active"] == "local"
    status, body, _ = await gw.call("GET", "/config", params={"format": "json"}, token=None)
    assert status == 200
    assert body == data


async def test_export_with_secrets_needs_the_token(gw: Harness) -> None:
    params = {"include_secrets": "true"}
    status, body, headers = await gw.call("GET", "/config", params=params, token=None)
    assert status == 401
    assert "Bearer" in headers["WWW-Authenticate"]
    status, body, _ = await gw.call("GET", "/config", params=params, token="wrong")
    assert status == 401
    status, body, _ = await gw.call("GET", "/config", params=params)
    assert status == 200
    assert BACKEND_SECRET in body
    assert yaml.safe_load(body) == yaml.safe_load(await gw.file_text())


async def test_export_with_secrets_refused_without_a_configured_token(
    make_harness: MakeHarness,
) -> None:
    gw = await make_harness(token=None)
    status, body, _ = await gw.call("GET", "/config", params={"include_secrets": "true"})
    assert status == 403
    assert "no" in body["detail"]
    assert "token" in body["detail"]


async def test_export_bad_query_is_422(gw: Harness) -> None:
    status, body, _ = await gw.call("GET", "/config", params={"format": "xml"})
    assert status == 422
    assert body["errors"][0]["location"] == "format"
    status, body, _ = await gw.call("GET", "/config", params={"include_secrets": "maybe"})
    assert status == 422
    assert body["errors"][0]["location"] == "include_secrets"


async def test_export_import_export_round_trip(gw: Harness) -> None:
    await gw.call("PATCH", "/settings", {"failover": {"auto_switch": False}})
    first = await export(gw)
    before = await gw.file_bytes()
    status, body, _ = await gw.call("PUT", "/config", raw=first, content_type="application/yaml")
    assert status == 200, body
    assert body["added"] == []
    assert body["removed"] == []
    assert body["changed"] == []
    assert await export(gw) == first
    assert await gw.file_bytes() == before  # the secrets were kept, nothing changed
    first_json = await export(gw, "json")
    status, body, _ = await gw.call("PUT", "/config", raw=first_json)
    assert status == 200, body
    assert await export(gw, "json") == first_json


async def test_import_replace(gw: Harness) -> None:
    text = (
        "servers:\n"
        "  - {id: new, name: New, url: 'http://127.0.0.1:7000'}\n"
        "  - {id: remote, url: 'http://10.0.0.7:8188', auth: {bearer_token: '********'}}\n"
        "active: new\n"
    )
    status, body, _ = await gw.call(
        "PUT", "/config", raw=text, content_type="application/yaml", params={"mode": "replace"}
    )
    assert status == 200, body
    assert body == {
        "mode": "replace",
        "migrated": False,
        "servers": ["new", "remote"],
        "added": ["new"],
        "removed": ["local"],
        "changed": ["remote"],
        "active": "new",
    }
    saved = await gw.file_config()
    remote = saved.server("remote")
    assert remote is not None
    assert remote.auth is not None
    assert remote.auth.bearer_token
    assert remote.auth.bearer_token.get_secret_value() == BACKEND_SECRET
    assert gw.registry.preferred_id == "new"
    assert gw.registry.serving_id == "new"
    assert gw.registry.server("local") is None


async def test_import_replace_keeps_listen_and_admin_when_absent(
    make_harness: MakeHarness,
) -> None:
    gw = await make_harness(
        {
            "listen": {"host": "0.0.0.0", "port": 9999},
            "servers": [{"id": "a", "url": "http://127.0.0.1:1"}],
            "admin": {"token": "file-token", "protect_reads": True},
            "failover": {"auto_switch": False},
        },
        token="file-token",
    )
    text = json.dumps({"servers": [{"id": "b", "url": "http://127.0.0.1:2"}]})
    status, body, _ = await gw.call("PUT", "/config", raw=text, token="file-token")
    assert status == 200, body
    saved = await gw.file_config()
    assert saved.listen.port == 9999
    assert saved.admin.protect_reads is True
    assert saved.admin.token is not None
    assert saved.failover.auto_switch is True  # replace: omitted sections take defaults


async def test_import_merge(gw: Harness) -> None:
    text = json.dumps(
        {
            "servers": [
                {"id": "local", "name": "Local (imported)", "url": "http://127.0.0.1:8188"},
                {"id": "extra", "url": "http://127.0.0.1:7001"},
            ],
            "failover": {"failback": "manual"},
        }
    )
    status, body, _ = await gw.call("PUT", "/config", raw=text, params={"mode": "merge"})
    assert status == 200, body
    assert body["servers"] == ["local", "remote", "extra"]
    assert body["added"] == ["extra"]
    assert body["removed"] == []
    assert body["changed"] == ["local"]
    saved = await gw.file_config()
    assert saved.server("local").name == "Local (imported)"  # type: ignore[union-attr]
    assert saved.failover.failback == "manual"
    assert saved.failover.auto_switch is True
    assert saved.active == "local"


async def test_import_bad_file_changes_nothing(gw: Harness) -> None:
    before = await gw.file_bytes()
    bad = (
        "servers:\n"
        "  - id: a\n"
        "    url: ftp://nowhere\n"
        "  - id: a\n"
        "    url: http://127.0.0.1:1\n"
        "active: zzz\n"
        "health: {rise: 0}\n"
    )
    status, body, _ = await gw.call("PUT", "/config", raw=bad, content_type="application/yaml")
    assert status == 422, body
    locations = {e["location"]: e for e in body["errors"]}
    assert {"servers[0].url", "servers[1].id", "active", "health.rise"} <= set(locations)
    assert locations["servers[0].url"]["line"] == 3
    assert await gw.file_bytes() == before
    for text, ctype in (
        ("servers: [unclosed", "application/yaml"),
        ('{"servers": [', "application/json"),
        ("- just\n- a list\n", "application/yaml"),
        ("", "application/yaml"),
        ("servers: []\nunknown: 1\n", "text/yaml"),
    ):
        status, body, _ = await gw.call("PUT", "/config", raw=text, content_type=ctype)
        assert status in (400, 422), (text, body)
        assert await gw.file_bytes() == before
    status, body, _ = await gw.call("PUT", "/config", raw="servers: []", content_type="text/plain")
    assert status == 415
    status, body, _ = await gw.call("PUT", "/config", raw="x: 1", params={"mode": "upsert"})
    assert status == 422
    assert body["errors"][0]["location"] == "mode"
    assert await gw.file_bytes() == before


async def test_import_replace_needs_servers(gw: Harness) -> None:
    status, body, _ = await gw.call("PUT", "/config", raw='{"failover": {"auto_switch": false}}')
    assert status == 422
    assert body["errors"][0]["location"] == "servers"
    status, body, _ = await gw.call(
        "PUT", "/config", raw='{"failover": {"auto_switch": false}}', params={"mode": "merge"}
    )
    assert status == 200
    assert body["servers"] == ["local", "remote"]


async def test_import_masked_secret_without_current_one_is_422(gw: Harness) -> None:
    text = json.dumps(
        {
            "servers": [
                {"id": "fresh", "url": "http://127.0.0.1:1", "auth": {"query_token": "********"}}
            ]
        }
    )
    status, body, _ = await gw.call("PUT", "/config", raw=text)
    assert status == 422
    assert body["errors"][0]["location"] == "servers[0].auth.query_token"


async def test_import_old_single_server_yaml_is_migrated(gw: Harness) -> None:
    status, body, _ = await gw.call(
        "PUT", "/config", raw="comfyui:\n  host: 127.0.0.1\n  port: 8288\n", content_type=None
    )
    assert status == 200, body
    assert body["migrated"] is True
    assert body["servers"] == ["default"]
    assert body["active"] == "default"
    saved = await gw.file_config()
    server = saved.server("default")
    assert server is not None
    assert server.name == "Default Server"
    assert server.url == "http://127.0.0.1:8288"
    assert gw.registry.serving_id == "default"


async def test_import_old_app_json_settings_merged(gw: Harness) -> None:
    status, body, _ = await gw.call(
        "PUT",
        "/config",
        raw=json.dumps({"serverUrl": "http://127.0.0.1:8300"}),
        params={"mode": "merge"},
    )
    assert status == 200, body
    assert body["migrated"] is True
    assert body["servers"] == ["local", "remote", "default"]
    assert body["active"] == "default"
    assert parse_config(await gw.file_text(), "f").server("default") is not None


async def test_import_sniffs_json_and_yaml_without_content_type(gw: Harness) -> None:
    doc = {"servers": [{"id": "x", "url": "http://127.0.0.1:1"}]}
    status, body, _ = await gw.call("PUT", "/config", raw=json.dumps(doc), content_type="")
    assert status == 200, body
    status, body, _ = await gw.call("PUT", "/config", raw=yaml.safe_dump(doc), content_type="")
    assert status == 200, body


async def test_import_error_values_are_values_and_secrets_masked(gw: Harness) -> None:
    text = "servers:\n  - id: a\n    url: ftp://x\n    priority: -3\n    auth: {bearer_token: 7}\n"
    status, body, _ = await gw.call("PUT", "/config", raw=text, content_type="application/yaml")
    assert status == 422
    by_location = {e["location"]: e for e in body["errors"]}
    assert by_location["servers[0].url"]["value"] == "ftp://x"
    assert by_location["servers[0].priority"]["value"] == -3
    assert by_location["servers[0].priority"]["line"] == 4
    assert by_location["servers[0].auth.bearer_token"]["value"] == "********"
