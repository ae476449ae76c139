"""GET/PATCH /settings: failover and health are live, the other sections read-only."""

from __future__ import annotations

from admin_harness import TOKEN, Harness


async def test_get_settings_has_every_section_without_the_token(gw: Harness) -> None:
    status, body, _ = await gw.call("GET", "/settings", token=None)
    assert status == 200
    assert set(body) == {"failover", "health", "proxy", "jobs", "listen", "admin", "editable"}
    assert body["failover"]["auto_switch"] is True
    assert body["admin"] == {
        "token_configured": True,
        "protect_reads": False,
        "allow_remote_without_token": False,
    }
    assert body["editable"] == ["failover", "health"]
    assert TOKEN not in str(body)


async def test_patch_failover_and_health(gw: Harness) -> None:
    status, body, _ = await gw.call(
        "PATCH",
        "/settings",
        {
            "failover": {"auto_switch": False, "failback": "manual", "failback_hold": 5},
            "health": {"interval": 1.5, "rise": 3},
        },
    )
    assert status == 200, body
    assert body["failover"]["auto_switch"] is False
    assert body["failover"]["failback"] == "manual"
    assert body["failover"]["resubmit_lost_prompts"] is True  # untouched
    assert body["health"]["interval"] == 1.5
    assert body["health"]["rise"] == 3
    saved = await gw.file_config()
    assert saved.failover.auto_switch is False
    assert saved.health.rise == 3
    assert gw.registry.config.failover.failback == "manual"
    status, listing, _ = await gw.call("GET", "/servers")
    assert listing["auto_switch"] is False


async def test_patch_null_resets_a_setting(gw: Harness) -> None:
    await gw.call("PATCH", "/settings", {"failover": {"failback_hold": 5}})
    status, body, _ = await gw.call("PATCH", "/settings", {"failover": {"failback_hold": None}})
    assert status == 200
    assert body["failover"]["failback_hold"] == 30.0


async def test_patch_settings_errors_change_nothing(gw: Harness) -> None:
    before = await gw.file_bytes()
    status, body, _ = await gw.call("PATCH", "/settings", {"proxy": {"max_body_size": 2048}})
    assert status == 422
    assert body["errors"][0]["location"] == "proxy"
    assert "read-only" in body["errors"][0]["message"]
    status, body, _ = await gw.call("PATCH", "/settings", {"admin": {"protect_reads": True}})
    assert status == 422
    assert body["errors"][0]["location"] == "admin"
    status, body, _ = await gw.call("PATCH", "/settings", {"colour": {}})
    assert status == 422
    assert body["errors"][0]["location"] == "colour"
    status, body, _ = await gw.call("PATCH", "/settings", {"failover": {"failback": "sometimes"}})
    assert status == 422
    assert body["errors"][0]["location"] == "failover.failback"
    assert body["errors"][0]["value"] == "sometimes"
    status, body, _ = await gw.call("PATCH", "/settings", {"health": {"rise": 0, "bogus": 1}})
    assert status == 422
    assert {e["location"] for e in body["errors"]} == {"health.rise", "health.bogus"}
    status, body, _ = await gw.call("PATCH", "/settings", {"health": 3})
    assert status == 422
    assert body["errors"][0]["location"] == "health"
    status, body, _ = await gw.call("PATCH", "/settings", "nope")
    assert status == 422
    assert await gw.file_bytes() == before
