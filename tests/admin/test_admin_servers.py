"""Server CRUD and activation through the admin API: saved to the file, applied, announced."""

from __future__ import annotations

from typing import Any

from admin_harness import BACKEND_SECRET, Harness, MakeHarness

from gateway.registry import ServerState

PROBLEM = "application/problem+json"


def assert_problem(status: int, body: Any, headers: Any, expected: int) -> None:
    assert status == expected, body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert body["status"] == expected
    assert body["type"].startswith("urn:comfyui-gateway:problem:")
    assert body["title"]
    assert body["detail"]
    assert "Traceback" not in str(body)


async def test_list_servers_with_status_preferred_and_serving(gw: Harness) -> None:
    gw.registry.set_state("remote", ServerState.UP, reason="test")
    status, body, _ = await gw.call("GET", "/servers", token=None)
    assert status == 200
    assert [s["id"] for s in body["servers"]] == ["local", "remote"]
    assert body["preferred"] == "local"
    assert body["serving"] == "local"
    assert body["auto_switch"] is True
    local, remote = body["servers"]
    assert local["preferred"]
    assert local["serving"]
    assert not remote["preferred"]
    assert not remote["serving"]
    assert remote["status"]["state"] == "up"
    assert set(remote["status"]) >= {
        "state",
        "latency",
        "last_check",
        "last_error",
        "queue_remaining",
        "comfyui_version",
    }
    assert remote["auth"]["bearer_token"] == "********"


async def test_secrets_never_in_server_responses(gw: Harness) -> None:
    for path in ("/servers", "/servers/remote", "/settings", "/config", "/config?format=json"):
        status, body, _ = await gw.call("GET", path)
        assert status == 200, path
        assert BACKEND_SECRET not in str(body), path


async def test_get_server_and_unknown_id(gw: Harness) -> None:
    status, body, _ = await gw.call("GET", "/servers/local")
    assert status == 200
    assert body["id"] == "local"
    assert body["name"] == "Local GPU"
    status, body, headers = await gw.call("GET", "/servers/nope")
    assert_problem(status, body, headers, 404)
    assert "nope" in body["detail"]


async def test_add_server_saves_applies_and_locates(gw: Harness) -> None:
    status, body, headers = await gw.call(
        "POST", "/servers", {"name": "Render Box #2", "url": "http://127.0.0.1:9000/"}
    )
    assert status == 201, body
    assert body["id"] == "render-box-2"
    assert body["url"] == "http://127.0.0.1:9000"
    assert body["status"]["state"] == "unknown"
    assert headers["Location"] == "/gateway/api/servers/render-box-2"
    saved = await gw.file_config()
    assert saved.server("render-box-2") is not None
    assert gw.registry.server("render-box-2") is not None
    status, body, _ = await gw.call("GET", headers["Location"].removeprefix("/gateway/api"))
    assert status == 200
    assert body["name"] == "Render Box #2"


async def test_add_duplicate_id_is_409(gw: Harness) -> None:
    before = await gw.file_bytes()
    status, body, headers = await gw.call(
        "POST", "/servers", {"id": "local", "url": "http://127.0.0.1:9001"}
    )
    assert_problem(status, body, headers, 409)
    assert await gw.file_bytes() == before


async def test_add_invalid_server_lists_field_errors(gw: Harness) -> None:
    status, body, headers = await gw.call(
        "POST",
        "/servers",
        {"name": "x", "url": "ftp://nowhere", "priority": -1, "timeouts": {"connect": 0}},
    )
    assert_problem(status, body, headers, 422)
    by_location = {e["location"]: e for e in body["errors"]}
    assert set(by_location) == {"url", "priority", "timeouts.connect"}
    assert by_location["url"]["value"] == "ftp://nowhere"
    assert "http" in by_location["url"]["message"]
    assert by_location["priority"]["value"] == -1


async def test_add_server_error_values_mask_secrets(gw: Harness) -> None:
    status, body, _ = await gw.call(
        "POST",
        "/servers",
        {"name": "x", "url": "http://user:pw-in-url@host:1", "auth": {"bearer_token": 12345}},
    )
    assert status == 422
    text = str(body)
    assert "pw-in-url" not in text
    assert "12345" not in text


async def test_add_server_needs_name_or_id_and_known_fields(gw: Harness) -> None:
    status, body, _ = await gw.call("POST", "/servers", {"url": "http://127.0.0.1:9"})
    assert status == 422
    assert body["errors"][0]["message"] == "a server needs a name or an id"
    status, body, _ = await gw.call(
        "POST", "/servers", {"name": "a", "url": "http://127.0.0.1:9", "colour": "red"}
    )
    assert status == 422
    assert [e["location"] for e in body["errors"]] == ["colour"]
    status, body, _ = await gw.call("POST", "/servers", ["not", "an", "object"])
    assert status == 422
    assert body["errors"][0]["location"] == ""


async def test_malformed_json_is_400(gw: Harness) -> None:
    status, body, headers = await gw.call("POST", "/servers", raw='{"name": "a",')
    assert_problem(status, body, headers, 400)
    assert "malformed JSON" in body["detail"]
    status, body, _ = await gw.call("POST", "/servers", raw='{"priority": NaN}')
    assert status == 400
    status, body, _ = await gw.call("POST", "/servers", raw=b"\xff\xfe{}")
    assert status == 400
    status, body, _ = await gw.call("POST", "/servers", raw="")
    assert status == 400


async def test_wrong_content_type_is_415(gw: Harness) -> None:
    payload = '{"name": "a", "url": "http://127.0.0.1:9"}'
    for ctype in ("application/xml", "text/plain", "application/x-www-form-urlencoded"):
        status, body, headers = await gw.call("POST", "/servers", raw=payload, content_type=ctype)
        assert_problem(status, body, headers, 415)
    status, _, _ = await gw.call(
        "POST", "/servers", raw=payload, content_type="application/vnd.x+json"
    )
    assert status == 201


async def test_oversized_body_is_413(gw: Harness) -> None:
    status, body, headers = await gw.call(
        "POST", "/servers", raw='{"name": "' + "a" * (1024 * 1024 + 10) + '"}'
    )
    assert_problem(status, body, headers, 413)


async def test_patch_merges_fields_and_keeps_masked_secrets(gw: Harness) -> None:
    status, body, _ = await gw.call(
        "PATCH",
        "/servers/remote",
        {"name": "Remote (new)", "timeouts": {"read": 10}, "auth": {"bearer_token": "********"}},
        content_type="application/merge-patch+json",
    )
    assert status == 200, body
    assert body["name"] == "Remote (new)"
    assert body["timeouts"] == {"connect": 5.0, "read": 10.0}
    assert body["auth"]["bearer_token"] == "********"
    saved = (await gw.file_config()).server("remote")
    assert saved is not None
    assert saved.name == "Remote (new)"
    assert saved.auth is not None
    assert saved.auth.bearer_token is not None
    assert saved.auth.bearer_token.get_secret_value() == BACKEND_SECRET


async def test_patch_null_resets_to_default_and_removes_auth(gw: Harness) -> None:
    await gw.call("PATCH", "/servers/remote", {"timeouts": {"read": 10}})
    status, body, _ = await gw.call(
        "PATCH", "/servers/remote", {"timeouts": {"read": None}, "auth": None, "priority": None}
    )
    assert status == 200, body
    assert body["timeouts"]["read"] == 300.0
    assert body["auth"] is None
    assert body["priority"] == 100
    assert BACKEND_SECRET not in await gw.file_text()


async def test_patch_changes_the_secret_when_given(gw: Harness) -> None:
    status, _, _ = await gw.call("PATCH", "/servers/remote", {"auth": {"bearer_token": "new-one"}})
    assert status == 200
    saved = (await gw.file_config()).server("remote")
    assert saved is not None
    assert saved.auth is not None
    assert saved.auth.bearer_token is not None
    assert saved.auth.bearer_token.get_secret_value() == "new-one"


async def test_patch_errors(gw: Harness) -> None:
    before = await gw.file_bytes()
    status, body, _ = await gw.call("PATCH", "/servers/local", {"id": "renamed"})
    assert status == 422
    assert body["errors"][0]["location"] == "id"
    status, body, _ = await gw.call("PATCH", "/servers/local", {"timeouts": {"connect": -1}})
    assert status == 422
    assert body["errors"][0]["location"] == "timeouts.connect"
    status, body, _ = await gw.call("PATCH", "/servers/local", {"url": "nope"})
    assert status == 422
    assert body["errors"][0]["location"] == "url"
    status, body, _ = await gw.call("PATCH", "/servers/local", [1])
    assert status == 422
    status, body, _ = await gw.call(
        "PATCH", "/servers/local", {"auth": {"query_token": "********"}}
    )
    assert status == 422
    assert body["errors"][0]["location"] == "auth.query_token"
    status, body, _ = await gw.call("PATCH", "/servers/ghost", {"name": "x"})
    assert status == 404
    assert await gw.file_bytes() == before
    status, body, _ = await gw.call("PATCH", "/servers/local", {"id": "local", "priority": 7})
    assert status == 200
    assert body["priority"] == 7


async def test_patch_url_resets_status(gw: Harness) -> None:
    gw.registry.set_state("remote", ServerState.UP, reason="test")
    status, body, _ = await gw.call("PATCH", "/servers/remote", {"url": "http://10.0.0.8:8188"})
    assert status == 200
    assert body["status"]["state"] == "unknown"


async def test_delete_server(gw: Harness) -> None:
    status, body, _ = await gw.call("DELETE", "/servers/remote")
    assert status == 204, body
    assert (await gw.file_config()).server("remote") is None
    assert gw.registry.server("remote") is None
    status, body, _ = await gw.call("DELETE", "/servers/remote")
    assert status == 404


async def test_delete_active_or_serving_is_409(gw: Harness) -> None:
    status, body, headers = await gw.call("DELETE", "/servers/local")
    assert_problem(status, body, headers, 409)
    assert "active" in body["detail"]
    gw.registry.set_serving("remote", reason="failover in test", kind="failover")
    status, body, headers = await gw.call("DELETE", "/servers/remote")
    assert_problem(status, body, headers, 409)
    assert "serving" in body["detail"]
    assert {s.id for s in (await gw.file_config()).servers} == {"local", "remote"}


async def test_delete_implicit_preferred_is_409(make_harness: MakeHarness) -> None:
    gw = await make_harness(
        {
            "servers": [
                {"id": "a", "url": "http://127.0.0.1:1", "priority": 1},
                {"id": "b", "url": "http://127.0.0.1:2", "priority": 2},
            ]
        }
    )
    status, _, _ = await gw.call("DELETE", "/servers/a")
    assert status == 409
    status, _, _ = await gw.call("POST", "/servers/b/activate")
    assert status == 200
    status, _, _ = await gw.call("DELETE", "/servers/a")
    assert status == 204


async def test_activate_makes_preferred_and_serving(gw: Harness) -> None:
    queue = gw.registry.events.subscribe()
    status, body, _ = await gw.call("POST", "/servers/remote/activate")
    assert status == 200, body
    assert body["preferred"]
    assert body["serving"]
    assert gw.registry.preferred_id == "remote"
    assert gw.registry.serving_id == "remote"
    assert (await gw.file_config()).active == "remote"
    kinds = []
    while not queue._queue.empty():
        kinds.append((await queue.get()).kind)
    assert "serving.changed" in kinds
    assert "admin.change" in kinds
    queue.close()


async def test_activate_again_after_failover_moves_traffic_back(gw: Harness) -> None:
    gw.registry.set_serving("remote", reason="failover in test", kind="failover")
    status, body, _ = await gw.call("POST", "/servers/local/activate")
    assert status == 200
    assert body["serving"] is True
    assert gw.registry.serving_id == "local"


async def test_activate_disabled_or_unknown(gw: Harness) -> None:
    status, _, _ = await gw.call("PATCH", "/servers/remote", {"enabled": False})
    assert status == 200
    status, body, _ = await gw.call("POST", "/servers/remote/activate")
    assert status == 409
    assert "disabled" in body["detail"]
    status, body, _ = await gw.call("POST", "/servers/ghost/activate")
    assert status == 404


async def test_every_change_is_announced_without_secrets(gw: Harness) -> None:
    sub = gw.registry.events.subscribe()
    await gw.call("PATCH", "/servers/remote", {"auth": {"bearer_token": "another-secret"}})
    events = []
    while not sub._queue.empty():
        events.append(await sub.get())
    sub.close()
    change = next(e for e in events if e.kind == "admin.change")
    assert change.data["action"] == "server.updated"
    assert change.data["server"] == "remote"
    assert change.data["fields"] == ["auth"]
    assert change.data["actor"] == "127.0.0.1"
    assert "another-secret" not in str([e.as_dict() for e in events])


async def test_unknown_route_and_method_are_problems(gw: Harness) -> None:
    status, body, headers = await gw.call("GET", "/nothing-here")
    assert_problem(status, body, headers, 404)
    status, body, headers = await gw.call("PUT", "/servers", {"x": 1})
    assert_problem(status, body, headers, 405)
    assert "GET" in headers["Allow"]
    assert "POST" in headers["Allow"]


async def test_json_types_are_strict_but_integral_floats_are_integers(gw: Harness) -> None:
    status, body, _ = await gw.call(
        "POST", "/servers", {"id": "s", "url": "http://127.0.0.1:1", "enabled": 0, "priority": "5"}
    )
    assert status == 422
    assert {e["location"] for e in body["errors"]} == {"enabled", "priority"}
    status, body, _ = await gw.call(
        "POST", "/servers", {"id": "s", "url": "http://127.0.0.1:1", "priority": 5.0}
    )
    assert status == 201, body
    assert body["priority"] == 5
    status, body, _ = await gw.call("PATCH", "/servers/s", {"priority": 5.5})
    assert status == 422
