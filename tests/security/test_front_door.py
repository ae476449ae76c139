"""Cross-origin protection at the front door, for ComfyUI paths and the admin API alike.

A refused request must be refused *before* anything reaches a backend (a cross-site page must
not be able to queue a prompt); the backend here records every request it gets.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.testing import example_prompt
from tests.security.gateway_proc import Seen, recording_backend

TOKEN = "front-door-token-77aa31"
APP = "https://app.example"
EVIL = "https://evil.example"


async def setup(start_app: Any, file_gateway: Any) -> tuple[Any, list[Seen]]:
    seen: list[Seen] = []
    backend = await start_app(recording_backend("rec", seen, job_duration=0.05))
    client, _ = await file_gateway(
        {
            "servers": [{"id": "b0", "name": "B0", "url": f"http://127.0.0.1:{backend.port}"}],
            "health": {"interval": 0.2, "fast_interval": 0.05, "rise": 1},
            "proxy": {"allowed_origins": [APP]},
            "admin": {"token": TOKEN},
        }
    )
    return client, seen


def proxied(seen: list[Seen]) -> list[Seen]:
    """Requests the gateway forwarded for clients (health probes carry no X-Forwarded-For)."""
    return [s for s in seen if "X-Forwarded-For" in s.headers]


def own_origin(client: Any) -> str:
    return f"http://127.0.0.1:{client.port}"


REFUSED = (
    {"Origin": EVIL},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1.evil.example"},
    {"Origin": "http://localhost"},  # another origin than the one the page addressed
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"},
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
)


@pytest.mark.parametrize(
    "headers", REFUSED, ids=lambda h: "+".join(f"{k}={v}" for k, v in h.items())
)
async def test_cross_origin_requests_never_reach_a_backend(start_app, file_gateway, headers):
    client, seen = await setup(start_app, file_gateway)
    body = {"prompt": example_prompt("csrf")}
    form = aiohttp.FormData()
    form.add_field("image", b"\x89PNG x", filename="x.png", content_type="image/png")
    for method, path, kwargs in (
        ("GET", "/system_stats", {}),
        ("POST", "/prompt", {"json": body}),
        ("POST", "/api/prompt", {"data": b"{}", "headers": {"Content-Type": "text/plain"}}),
        ("POST", "/upload/image", {"data": form}),
        ("POST", "/queue", {"json": {"clear": True}}),
        ("POST", "/interrupt", {"json": {}}),
        ("GET", "/view?filename=x.png&type=input", {}),
    ):
        extra = kwargs.pop("headers", {})
        resp = await client.request(method, path, headers={**headers, **extra}, **kwargs)
        assert resp.status == 403, (method, path, await resp.text())
        assert (await resp.json())["error"]["type"] == "cross_origin_refused"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws?clientId=x", headers=headers)
    assert refused.value.status == 403
    assert proxied(seen) == []
    # The admin API refuses them as well, even with the valid token.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = await client.post(
        "/gateway/api/servers", json={"name": "X", "url": "http://1.2.3.4"}, headers=auth | headers
    )
    assert resp.status == 403
    resp = await client.get("/gateway/api/config", headers=auth | headers)
    assert resp.status == 403


async def test_same_origin_and_listed_origins_pass(start_app, file_gateway):
    client, seen = await setup(start_app, file_gateway)
    mine = own_origin(client)
    resp = await client.get("/system_stats", headers={"Origin": mine})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.get("/system_stats", headers={"Origin": APP})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    # A preflight from a listed origin is answered by the gateway, never forwarded.
    before = len(proxied(seen))
    resp = await client.options(
        "/prompt", headers={"Origin": APP, "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert len(proxied(seen)) == before
    # Navigation (a user following a link) and scripts without Origin pass.
    nav = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert (await client.get("/system_stats", headers=nav)).status == 200
    assert (await client.get("/system_stats")).status == 200
    ws = await client.ws_connect("/ws?clientId=same", headers={"Origin": mine})
    await ws.close()
    # The Origin header never reaches ComfyUI (it would refuse the request itself).
    assert all("Origin" not in s.headers for s in proxied(seen))


async def test_listed_origins_do_not_open_the_admin_api(start_app, file_gateway):
    client, _ = await setup(start_app, file_gateway)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    settings = {"failover": {"auto_switch": False}}
    for method in ("GET", "PATCH"):
        resp = await client.request(
            method, "/gateway/api/settings", json=settings, headers=auth | {"Origin": APP}
        )
        assert resp.status == 403, method
    # From its own origin with the token it works; "simple" form types never do (CSRF).
    mine = {"Origin": own_origin(client)}
    resp = await client.patch("/gateway/api/settings", json=settings, headers=auth | mine)
    assert resp.status == 200, await resp.text()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        resp = await client.patch(
            "/gateway/api/settings",
            data=b'{"failover": {"auto_switch": true}}',
            headers=auth | mine | {"Content-Type": ctype},
        )
        assert resp.status == 415, ctype


async def test_admin_api_answers_no_cors_preflight_to_listed_origins(start_app, file_gateway):
    client, _ = await setup(start_app, file_gateway)
    resp = await client.options(
        "/gateway/api/settings",
        headers={"Origin": APP, "Access-Control-Request-Method": "PATCH"},
    )
    assert "Access-Control-Allow-Origin" not in resp.headers
