"""GET/PATCH /settings: failover and health are live, the other sections read-only."""

from __future__ import annotations

from admin_harness import TOKEN, Harness, MakeHarness


async def test_get_settings_has_every_section_without_the_token(gw: Harness) -> None:
    status, body, _ = await gw.call("GET", "/settings", token=None)
    assert status == 200
    assert set(body) == {
        "failover",
        "health",
        "proxy",
        "jobs",
        "listen",
        "admin",
        "alerts",
        "editable",
    }
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


WEBHOOK = "https://hooks.example/services/T000/B000/webhook-secret-part"


async def test_alert_webhooks_shown_masked_and_read_only(make_harness: MakeHarness) -> None:
    gw = await make_harness(
        {
            "servers": [{"id": "a", "url": "http://127.0.0.1:1"}],
            "alerts": {"webhooks": [{"url": WEBHOOK, "headers": {"X-Key": "hdr-secret"}}]},
        }
    )
    status, body, _ = await gw.call("GET", "/settings")
    assert status == 200
    assert body["alerts"]["webhooks"][0]["url"] == "********"
    assert "webhook-secret-part" not in str(body)
    assert "hdr-secret" not in str(body)
    status, body, _ = await gw.call("PATCH", "/settings", {"alerts": {"queue_size": 5}})
    assert status == 422
    assert body["errors"][0]["location"] == "alerts"


async def test_webhook_secrets_survive_round_trip_and_stay_out_of_errors(
    make_harness: MakeHarness,
) -> None:
    gw = await make_harness(
        {
            "servers": [{"id": "a", "url": "http://127.0.0.1:1"}],
            "alerts": {"webhooks": [{"name": "ops", "url": WEBHOOK}]},
        }
    )
    status, exported, _ = await gw.call("GET", "/config")
    assert status == 200
    assert "webhook-secret-part" not in exported
    before = await gw.file_bytes()
    status, body, _ = await gw.call("PUT", "/config", raw=exported, content_type="application/yaml")
    assert status == 200, body
    assert await gw.file_bytes() == before
    bad = exported.replace("'********'", "'ftp://not-a-hook/leaked-secret'")
    status, body, _ = await gw.call("PUT", "/config", raw=bad, content_type="application/yaml")
    assert status == 422, body
    assert body["errors"][0]["location"] == "alerts.webhooks[0].url"
    assert "leaked-secret" not in str(body)
