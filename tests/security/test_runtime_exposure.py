"""The "no remote admin API without a token" rule must hold at runtime too, not only at startup.

``comfyui-gateway`` refuses to start on a non-loopback address without an admin token
(``gateway/config/models.py`` ``exposure_problem``). An admin import (``PUT /gateway/api/config``)
whose file carries ``admin: {}`` would remove the token of a running gateway that listens on
such an address, opening every admin write to the network: the config store refuses such a
change (422) and such a hand edit, like an invalid one.
"""

from __future__ import annotations

TOKEN = "exposure-admin-token-81c2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVERS = [{"id": "a", "name": "A", "url": "http://127.0.0.1:9"}]


async def test_an_import_cannot_remove_the_token_of_a_remote_listener(file_gateway):
    client, _ = await file_gateway(
        {"servers": SERVERS, "listen": {"host": "0.0.0.0"}, "admin": {"token": TOKEN}}
    )
    body = "listen: {host: 0.0.0.0}\nservers:\n  - {id: a, url: 'http://127.0.0.1:9'}\nadmin: {}\n"
    await client.put(
        "/gateway/api/config",
        data=body.encode(),
        headers={**AUTH, "Content-Type": "application/yaml"},
    )
    # Whatever the import answered, the admin API must still demand the token.
    resp = await client.post("/gateway/api/servers", json={"name": "Intruder", "url": "http://x"})
    assert resp.status == 401, await resp.text()


async def test_an_import_keeps_the_token_when_the_file_has_a_masked_one(file_gateway):
    """The exported form (token masked) round-trips without dropping the token."""
    client, _ = await file_gateway(
        {"servers": SERVERS, "listen": {"host": "0.0.0.0"}, "admin": {"token": TOKEN}}
    )
    exported = await (await client.get("/gateway/api/config")).text()
    assert TOKEN not in exported
    resp = await client.put(
        "/gateway/api/config",
        data=exported.encode(),
        headers={**AUTH, "Content-Type": "application/yaml"},
    )
    assert resp.status == 200, await resp.text()
    resp = await client.post("/gateway/api/servers", json={"name": "Intruder", "url": "http://x"})
    assert resp.status == 401
