"""Secrets planted in the config never leave the gateway (issue 8 §4).

One gateway process with every kind of secret the config can hold (backend bearer token, header
value, basic password, query token, admin token, alert webhook URL and header) is driven through
normal traffic, failovers, admin reads and writes, refused admin calls, upstream errors (504,
502, 5xx) and a killed backend. Then none of the secrets may appear in:

* the process's logs (stdout and stderr, at debug level),
* ``/metrics``,
* the SSE event stream,
* any response body or header (exports without ``include_secrets``, error bodies, ``/view``
  errors naming the backend, server tests, 422 answers to bodies that carried a new secret),
* the alert webhook deliveries' bodies.

Positive controls prove the captures are real (the logs have lines, the export with the flag
and the token does contain the secrets).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.tasks import spawn
from gateway.testing import example_prompt
from gateway.testing.fake_comfy import FAKE_STATE
from tests.security.gateway_proc import GatewayProcess, Seen, recording_backend

SECRETS = {
    "bearer": "bearer-SECRET-7f3a9c11",
    "header": "header-SECRET-b81d2290",
    "basic": "basic-SECRET-5e0c4133",
    "query": "query-SECRET-9a7be344",
    "admin": "admin-SECRET-c4d5e655",
    "webhook": "webhook-SECRET-0f1e2d66",
    "webhook_header": "whhdr-SECRET-33445577",
    "new_bearer": "newbearer-SECRET-aa110088",
    "new_header": "newheader-SECRET-bb220099",
    "url_password": "urlpw-SECRET-cc3300aa",
    "wrong_token": "wrongtoken-SECRET-dd4400bb",
}
FORMS = {
    **SECRETS,
    "basic_b64": base64.b64encode(f"svc:{SECRETS['basic']}".encode()).decode(),
}
ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}


def leaks(text: str) -> list[str]:
    """Return the names of the secrets found in ``text`` (raw or base64 basic credentials)."""
    return [name for name, value in FORMS.items() if value in text]


class Capture:
    """Every response the test received, as text (status line, headers, body)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    async def request(
        self, session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
    ) -> tuple[int, str]:
        async with session.request(method, url, **kwargs) as resp:
            body = await resp.read()
            text = body.decode("utf-8", "replace")
            headers = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
            self.items.append((f"{method} {url}", f"{resp.status}\n{headers}\n\n{text}"))
            return resp.status, text


async def read_sse(session: aiohttp.ClientSession, url: str, sink: list[str]) -> None:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
        async for chunk in resp.content.iter_any():
            sink.append(chunk.decode("utf-8", "replace"))


async def wait_until(check: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll an async ``check`` (bounded) until it returns a truthy value."""
    async with asyncio.timeout(timeout):
        while True:
            if result := await check():
                return result
            await asyncio.sleep(0.05)  # bounded polling of another process's state


async def run_prompt(session: aiohttp.ClientSession, base: str, graph: dict[str, Any]) -> str:
    """Submit a prompt through the gateway on a client websocket; return its id once done."""
    client_id = uuid.uuid4().hex
    prompt_id = uuid.uuid4().hex
    async with session.ws_connect(f"{base}/ws?clientId={client_id}") as ws:
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        async with session.post(f"{base}/prompt", json=body) as resp:
            assert resp.status == 200, await resp.text()
        async with asyncio.timeout(20):
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
                    return prompt_id
    raise AssertionError("websocket closed before the prompt ended")


async def test_planted_secrets_never_leave_the_gateway(tmp_path: Path, start_app: Any) -> None:
    seen_a: list[Seen] = []
    seen_b: list[Seen] = []
    server_a = await start_app(recording_backend("a", seen_a, job_duration=0.1))
    server_b = await start_app(recording_backend("b", seen_b, job_duration=0.1))
    a_url = f"http://127.0.0.1:{server_a.port}"
    b_url = f"http://127.0.0.1:{server_b.port}"
    deliveries: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        deliveries.append(await request.text())
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook/{token}", hook)
    hook_server = await start_app(receiver)
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "servers": [
            {
                "id": "a",
                "name": "Alpha",
                "url": a_url,
                "auth": {
                    "bearer_token": SECRETS["bearer"],
                    "headers": {"X-Api-Key": SECRETS["header"]},
                },
            },
            {
                "id": "b",
                "name": "Beta",
                "url": b_url,
                "priority": 20,
                "timeouts": {"read": 1.0},
                "auth": {
                    "basic": {"username": "svc", "password": SECRETS["basic"]},
                    "query_token": SECRETS["query"],
                },
            },
        ],
        "active": "a",
        "health": {"interval": 0.2, "fast_interval": 0.05, "timeout": 0.5, "rise": 1, "fall": 1},
        "admin": {"token": SECRETS["admin"]},
        "alerts": {
            "webhooks": [
                {
                    "name": "ops",
                    "url": f"http://127.0.0.1:{hook_server.port}/hook/{SECRETS['webhook']}",
                    "headers": {"Authorization": SECRETS["webhook_header"]},
                    "backoff": 0.1,
                    "max_attempts": 1,
                }
            ]
        },
    }
    gw = GatewayProcess(tmp_path / "gw", config)
    await gw.start()
    base, api = gw.url, gw.url + "/gateway/api"
    capture = Capture()
    sse: list[str] = []
    async with aiohttp.ClientSession() as session:
        sse_task = spawn(read_sse(session, f"{api}/events", sse), name="test-sse-reader")

        async def both_up() -> bool:
            _, text = await capture.request(session, "GET", f"{api}/servers")
            states = {s["id"]: s["status"]["state"] for s in json.loads(text)["servers"]}
            return states == {"a": "up", "b": "up"}

        await wait_until(both_up)
        # An input uploaded while 'a' serves, used by a prompt on 'b' (replicated there).
        form = aiohttp.FormData()
        form.add_field("image", b"\x89PNG secret test", filename="in.png", content_type="image/png")
        status, text = await capture.request(session, "POST", f"{base}/upload/image", data=form)
        assert status == 200, text
        uploaded = json.loads(text)["name"]
        await run_prompt(session, base, example_prompt("on-a"))
        status, _ = await capture.request(
            session, "POST", f"{api}/servers/b/activate", headers=ADMIN
        )
        assert status == 200
        prompt_id = await run_prompt(session, base, example_prompt("on-b", load_image=uploaded))
        status, text = await capture.request(session, "GET", f"{base}/history/{prompt_id}")
        image = json.loads(text)[prompt_id]["outputs"]["3"]["images"][0]
        status, _ = await capture.request(session, "GET", f"{base}/view", params=image)
        assert status == 200
        for path in ("/queue", "/history", "/prompt", "/history/unknown-id"):
            await capture.request(session, "GET", base + path)
        # Admin reads, tests and exports without the flag.
        for path in ("/servers", "/servers/a", "/servers/b", "/settings", "/openapi.json"):
            await capture.request(session, "GET", api + path)
        for fmt in ("yaml", "json"):
            await capture.request(session, "GET", f"{api}/config", params={"format": fmt})
        await capture.request(session, "POST", f"{api}/servers/test", headers=ADMIN)
        await capture.request(session, "POST", f"{api}/servers/b/test", headers=ADMIN)
        masked = {
            "id": "b",
            "url": b_url,
            "auth": {
                "basic": {"username": "svc", "password": "********"},
                "query_token": "********",
            },
        }
        await capture.request(session, "POST", f"{api}/servers/test", headers=ADMIN, json=masked)
        # Refused admin calls whose bodies carry new secrets, and a wrong token.
        bad_server = {
            "id": "x",
            "url": "ftp://nope",
            "auth": {"bearer_token": SECRETS["new_bearer"]},
        }
        status, _ = await capture.request(
            session, "POST", f"{api}/servers", headers=ADMIN, json=bad_server
        )
        assert status == 422
        bad_patch = {"auth": {"headers": {"bad header": SECRETS["new_header"]}}}
        status, _ = await capture.request(
            session, "PATCH", f"{api}/servers/a", headers=ADMIN, json=bad_patch
        )
        assert status == 422
        bad_file = f"servers:\n  - id: q\n    url: http://u:{SECRETS['url_password']}@host:1\n"
        status, _ = await capture.request(
            session,
            "PUT",
            f"{api}/config",
            headers={**ADMIN, "Content-Type": "application/yaml"},
            data=bad_file,
        )
        assert status == 422
        wrong = {"Authorization": f"Bearer {SECRETS['wrong_token']}"}
        status, _ = await capture.request(
            session, "GET", f"{api}/config", params={"include_secrets": "true"}, headers=wrong
        )
        assert status == 401
        status, _ = await capture.request(
            session, "DELETE", f"{api}/servers/a", headers={"X-Gateway-Token": "nope"}
        )
        assert status == 401
        # Upstream errors naming backend 'b' (whose URL carries ?token=): timeout, then refused.
        state_b = server_b.app[FAKE_STATE]
        missing = {"filename": "none.png", "subfolder": "_gw_b", "type": "output"}
        state_b.hang = True
        status, _ = await capture.request(session, "GET", f"{base}/view", params=missing)
        assert status == 504
        state_b.hang = False
        state_b.fail_status = 500
        await capture.request(session, "GET", f"{base}/object_info")
        state_b.fail_status = None
        await server_b.close()
        status, _ = await capture.request(session, "GET", f"{base}/view", params=missing)
        assert status in (502, 503)

        async def failed_over() -> bool:
            _, text = await capture.request(session, "GET", f"{api}/servers")
            return json.loads(text)["serving"] == "a"

        await wait_until(failed_over)
        await capture.request(session, "GET", f"{base}/system_stats")
        await capture.request(session, "GET", f"{base}/metrics")

        async def alert_delivered() -> bool:
            return bool(deliveries)

        await wait_until(alert_delivered)
        # Positive control: the flag with the token does reveal them.
        status, revealed = await capture.request(
            session,
            "GET",
            f"{api}/config",
            params={"include_secrets": "true", "format": "json"},
            headers=ADMIN,
        )
        assert status == 200
        assert {"bearer", "header", "basic", "query", "admin", "webhook"} <= set(leaks(revealed))
        capture.items.pop()
        sse_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await sse_task
    await gw.stop()
    logs = gw.logs()
    assert "gateway starting" in logs
    assert "server.state" in logs
    stream = "".join(sse)
    assert "admin.change" in stream
    assert "serving.changed" in stream
    found = {
        "logs": leaks(logs),
        "sse": leaks(stream),
        "webhook bodies": leaks("\n".join(deliveries)),
    }
    for what, text in capture.items:
        found[what] = leaks(text)
    assert {k: v for k, v in found.items() if v} == {}
    # And the secrets did work: each backend got its own credentials.
    assert any(s.headers.get("Authorization") == f"Bearer {SECRETS['bearer']}" for s in seen_a)
    assert any(f"token={SECRETS['query']}" in s.path_qs for s in seen_b)
