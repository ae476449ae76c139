"""Backend credentials are only ever sent to their own backend.

Two recording backends with different credentials (A: bearer token and an API-key header; B:
basic auth and a ``?token=`` query token) see every kind of traffic the gateway makes: health
probes, proxied requests, websockets, prompts, merged ``/queue`` and ``/history`` fan-outs, a
``/view`` search across backends, upload replication, stale-copy cancellation. Each must receive
its own credentials on every request and never the other's (nor a client's attempt to override
them).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import aiohttp

from gateway.testing import example_prompt
from tests.security.gateway_proc import Seen, recording_backend

BEARER = "cred-bearer-A-61f0"
API_KEY = "cred-apikey-A-72e1"
PASSWORD = "cred-password-B-83d2"
QUERY = "cred-query-B-94c3"
BASIC = "Basic " + base64.b64encode(f"svc:{PASSWORD}".encode()).decode()
TOKEN = "cred-admin-token-a5b4"


async def wait_done(ws: aiohttp.ClientWebSocketResponse, prompt_id: str) -> None:
    async with asyncio.timeout(15):
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            payload = data.get("data") or {}
            if (
                data["type"] == "executing"
                and payload.get("node") is None
                and payload.get("prompt_id") == prompt_id
            ):
                return
    raise AssertionError("socket closed")


async def test_each_backend_gets_its_own_credentials_only(start_app, file_gateway):
    seen_a: list[Seen] = []
    seen_b: list[Seen] = []
    a = await start_app(recording_backend("a", seen_a, job_duration=0.05))
    b = await start_app(recording_backend("b", seen_b, job_duration=0.05))
    client, _ = await file_gateway(
        {
            "servers": [
                {
                    "id": "a",
                    "name": "A",
                    "url": f"http://127.0.0.1:{a.port}",
                    "auth": {"bearer_token": BEARER, "headers": {"X-Api-Key": API_KEY}},
                },
                {
                    "id": "b",
                    "name": "B",
                    "url": f"http://127.0.0.1:{b.port}",
                    "priority": 200,
                    "auth": {
                        "basic": {"username": "svc", "password": PASSWORD},
                        "query_token": QUERY,
                    },
                },
            ],
            "active": "a",
            "health": {"interval": 0.1, "fast_interval": 0.05, "rise": 1},
            "admin": {"token": TOKEN},
        }
    )
    spoof = {"Authorization": "Bearer client-tries-this", "X-Api-Key": "client-key"}
    client_id = uuid.uuid4().hex
    ws = await client.ws_connect(f"/ws?clientId={client_id}", headers=spoof)
    form = aiohttp.FormData()
    form.add_field("image", b"\x89PNG creds", filename="c.png", content_type="image/png")
    uploaded = await (await client.post("/upload/image", data=form, headers=spoof)).json()
    for server in ("a", "b"):
        if server == "b":
            resp = await client.post(
                "/gateway/api/servers/b/activate", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert resp.status == 200
        prompt_id = uuid.uuid4().hex
        graph = example_prompt(f"cred-{server}", load_image=uploaded["name"])
        resp = await client.post(
            "/prompt",
            json={"prompt": graph, "client_id": client_id, "prompt_id": prompt_id},
            headers=spoof,
        )
        assert resp.status == 200, await resp.text()
        await wait_done(ws, prompt_id)
        history = await (await client.get(f"/history/{prompt_id}", headers=spoof)).json()
        image = history[prompt_id]["outputs"]["3"]["images"][0]
        assert (await client.get("/view", params=image, headers=spoof)).status == 200
    for path in ("/queue", "/history", "/prompt", "/system_stats", "/object_info/LoadImage"):
        assert (await client.get(path, headers=spoof)).status == 200, path
    # An untagged reference nobody has: the gateway asks each backend in turn.
    missing = {"filename": "nobody.png", "type": "output"}
    assert (await client.get("/view", params=missing, headers=spoof)).status == 404
    await client.post("/interrupt", json={}, headers=spoof)
    await client.post("/queue", json={"delete": ["x"]}, headers=spoof)
    await ws.close()
    assert len(seen_a) > 10
    assert len(seen_b) > 10
    for s in seen_a:
        where = f"A got {s.method} {s.path_qs}"
        assert s.headers.get("Authorization") == f"Bearer {BEARER}", where
        assert s.headers.get("X-Api-Key") == API_KEY, where
        assert PASSWORD not in repr(s), where
        assert QUERY not in repr(s), where
        assert BASIC not in repr(s), where
        assert "client-tries-this" not in repr(s), where
    for s in seen_b:
        where = f"B got {s.method} {s.path_qs}"
        assert s.headers.get("Authorization") == BASIC, where
        assert f"token={QUERY}" in s.path_qs, where
        assert BEARER not in repr(s), where
        assert API_KEY not in repr(s), where
        assert "client-tries-this" not in repr(s), where  # the backend's own credentials win
    # Both saw the whole range of traffic (probes, prompts, websockets, replication).
    for seen in (seen_a, seen_b):
        paths = {s.path_qs.split("?")[0] for s in seen}
        assert {"/system_stats", "/prompt", "/ws", "/view"} <= paths, paths
    assert any(s.path_qs.startswith("/upload/image") for s in seen_b)  # replicated to B
