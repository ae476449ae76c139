"""The admin token guards every admin write and the secret export, and reads when configured.

The list of operations comes from the live OpenAPI document, so a route added later is covered
without editing this test.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

TOKEN = "auth-matrix-token-5c2e91"
WRONG = (
    {},
    {"Authorization": "Bearer not-the-token"},
    {"X-Gateway-Token": "not-the-token"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
)
CONFIG: dict[str, Any] = {
    "servers": [
        {"id": "b0", "name": "Zero", "url": "http://127.0.0.1:9"},
        {"id": "b1", "name": "One", "url": "http://127.0.0.1:9", "auth": {"bearer_token": "x1"}},
    ],
    "active": "b0",
    "health": {"interval": 60, "fast_interval": 60, "down_interval": 60},
    "admin": {"token": TOKEN},
}
METHODS = ("get", "put", "post", "patch", "delete")
BODY = {"id": "zz", "name": "ZZ", "url": "http://127.0.0.1:1", "failover": {"auto_switch": False}}


def operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (METHOD, URL path) of every admin API operation, ``{id}`` set to ``b1``."""
    base = spec["servers"][0]["url"]
    return [
        (method.upper(), base + path.replace("{id}", "b1"))
        for path, item in spec["paths"].items()
        if path.startswith("/api/")
        for method in item
        if method in METHODS
    ]


async def call(client: Any, method: str, url: str, headers: dict[str, str]) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": headers}
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = BODY
    async with client.request(method, url, **kwargs) as resp:
        if resp.content_type == "text/event-stream":
            return resp.status, None  # an open stream: the status is what matters
        return resp.status, resp


async def test_every_admin_write_and_the_secret_export_need_the_token(file_gateway):
    client, path = await file_gateway(CONFIG)
    before = await asyncio.to_thread(path.read_bytes)
    spec = await (await client.get("/gateway/api/openapi.json")).json()
    ops = operations(spec)
    writes = [(m, u) for m, u in ops if m != "GET"]
    assert len(writes) >= 8, writes  # add, edit, delete, activate, 2 tests, settings, import
    for method, url in writes:
        for headers in WRONG:
            async with client.request(
                method, url, json=BODY if method != "DELETE" else None, headers=headers
            ) as resp:
                assert resp.status == 401, (method, url, headers, await resp.text())
                assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
                assert resp.content_type == "application/problem+json"
                assert TOKEN not in await resp.text()
    for headers in WRONG:
        resp = await client.get(
            "/gateway/api/config", params={"include_secrets": "true"}, headers=headers
        )
        assert resp.status == 401, headers
        assert "x1" not in await resp.text()
    assert await asyncio.to_thread(path.read_bytes) == before  # nothing was written
    # Reads are public by default; a wrong token is still refused loudly.
    for method, url in ops:
        if method == "GET" and not url.endswith("/events"):
            assert (await client.get(url)).status == 200, url
            assert (await client.get(url, headers=WRONG[1])).status in (200, 401)
    # Positive controls: the token works, in either header.
    resp = await client.post(
        "/gateway/api/servers/b1/activate", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert resp.status == 200, await resp.text()
    resp = await client.get(
        "/gateway/api/config",
        params={"include_secrets": "true", "format": "json"},
        headers={"X-Gateway-Token": TOKEN},
    )
    assert json.loads(await resp.text())["servers"][1]["auth"]["bearer_token"] == "x1"
    assert await asyncio.to_thread(path.read_bytes) != before


async def test_protected_reads_need_the_token_too(file_gateway):
    client, _ = await file_gateway({**CONFIG, "admin": {"token": TOKEN, "protect_reads": True}})
    spec = await (await client.get("/gateway/api/openapi.json")).json()
    reads = [u for m, u in operations(spec) if m == "GET" and not u.endswith("/openapi.json")]
    assert len(reads) >= 5, reads
    for url in reads:
        for headers in WRONG:
            status, _ = await call(client, "GET", url, headers)
            assert status == 401, (url, headers)
        status, _ = await call(client, "GET", url, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, url
    # The probes and the document stay public (load balancers and tools read them).
    for url in ("/gateway/healthz", "/gateway/readyz", "/gateway/api/openapi.json"):
        assert (await client.get(url)).status == 200, url


async def test_no_configured_token_means_no_secret_export(file_gateway):
    client, _ = await file_gateway({**CONFIG, "admin": {}})
    resp = await client.get("/gateway/api/config", params={"include_secrets": "true"})
    assert resp.status == 403
    assert "x1" not in await resp.text()
    resp = await client.get(
        "/gateway/api/config",
        params={"include_secrets": "true"},
        headers={"Authorization": "Bearer anything"},
    )
    assert resp.status == 403
