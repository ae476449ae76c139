"""POST /servers/{id}/test and /servers/test: the real prober against a stub ComfyUI on
127.0.0.1 and against a closed port; concurrency of "test all"."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from typing import Any

import pytest
from admin_harness import WAIT, FakeTester, MakeHarness
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.admin.tester import ProbeTester
from gateway.config.models import ServerConfig

QUERY_SECRET = "query-secret-value"


def stub_comfyui(seen_tokens: list[str | None]) -> web.Application:
    """A tiny ComfyUI: /system_stats, /prompt and /ws (first frame: status)."""

    async def system_stats(request: web.Request) -> web.Response:
        seen_tokens.append(request.query.get("token"))
        return web.json_response(
            {
                "system": {"comfyui_version": "0.3.64", "os": "posix"},
                "devices": [{"name": "cuda:0 Fake GPU", "type": "cuda", "vram_total": 1}],
            }
        )

    async def prompt(request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": 2}})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_json(
            {
                "type": "status",
                "data": {"status": {"exec_info": {"queue_remaining": 2}}, "sid": "abc"},
            }
        )
        await sock.close()
        return sock

    app = web.Application()
    app.router.add_get("/system_stats", system_stats)
    app.router.add_get("/prompt", prompt)
    app.router.add_get("/ws", ws)
    return app


@pytest.fixture
async def stub(aiohttp_server: Any) -> tuple[TestServer, list[str | None]]:
    seen: list[str | None] = []
    server = await aiohttp_server(stub_comfyui(seen), host="127.0.0.1")
    return server, seen


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unsaved_server_against_a_real_stub(
    make_harness: MakeHarness, stub: tuple[TestServer, list[str | None]]
) -> None:
    server, seen = stub
    gw = await make_harness(tester=ProbeTester())
    status, body, _ = await gw.call(
        "POST",
        "/servers/test",
        {
            "name": "Candidate",
            "url": f"http://127.0.0.1:{server.port}",
            "auth": {"query_token": QUERY_SECRET},
        },
    )
    assert status == 200, body
    [result] = body["results"]
    assert result["server"] == "candidate"
    assert result["saved"] is False
    assert result["reachable"] is True
    assert result["ok"] is True
    assert result["http_status"] == 200
    assert result["comfyui_version"] == "0.3.64"
    assert result["devices"][0]["name"] == "cuda:0 Fake GPU"
    assert result["queue_remaining"] == 2
    assert result["latency"] is not None
    assert result["latency"] >= 0
    assert result["websocket"]["ok"] is True
    assert seen
    assert seen[0] == QUERY_SECRET
    assert QUERY_SECRET not in str(body)  # ...and never echoed
    assert gw.registry.server("candidate") is None  # nothing saved
    assert (await gw.file_config()).server("candidate") is None


async def test_closed_port_is_unreachable_with_an_error(make_harness: MakeHarness) -> None:
    gw = await make_harness(tester=ProbeTester())
    port = closed_port()
    status, body, _ = await gw.call(
        "POST", "/servers/test", {"id": "gone", "url": f"http://127.0.0.1:{port}"}
    )
    assert status == 200, body
    [result] = body["results"]
    assert result["reachable"] is False
    assert result["ok"] is False
    assert "refused" in result["error"]
    assert result["http_status"] is None


async def test_saved_server_test(
    make_harness: MakeHarness, stub: tuple[TestServer, list[str | None]]
) -> None:
    server, _ = stub
    gw = await make_harness(
        {"servers": [{"id": "s", "url": f"http://127.0.0.1:{server.port}"}]},
        tester=ProbeTester(),
    )
    status, body, _ = await gw.call("POST", "/servers/s/test")
    assert status == 200, body
    assert body["server"] == "s"
    assert body["saved"] is True
    assert body["reachable"] is True
    assert gw.registry.status("s").state.value == "unknown"  # a test changes no live status
    status, body, _ = await gw.call("POST", "/servers/nope/test")
    assert status == 404


async def test_unsaved_test_with_masked_secret_uses_the_saved_one(
    make_harness: MakeHarness, stub: tuple[TestServer, list[str | None]]
) -> None:
    server, seen = stub
    url = f"http://127.0.0.1:{server.port}"
    gw = await make_harness(
        {"servers": [{"id": "s", "url": url, "auth": {"query_token": QUERY_SECRET}}]},
        tester=ProbeTester(),
    )
    status, body, _ = await gw.call(
        "POST",
        "/servers/test",
        {"id": "s", "url": url, "priority": 5, "auth": {"query_token": "********"}},
    )
    assert status == 200, body
    assert seen[-1] == QUERY_SECRET
    assert body["results"][0]["saved"] is False  # differs from the saved one (priority)


async def test_unsaved_test_validates_the_body(make_harness: MakeHarness) -> None:
    gw = await make_harness()
    status, body, _ = await gw.call("POST", "/servers/test", {"name": "x", "url": "gopher://x"})
    assert status == 422
    assert body["errors"][0]["location"] == "url"
    status, body, _ = await gw.call(
        "POST", "/servers/test", raw="{", content_type="application/json"
    )
    assert status == 400


class GatedTester:
    """Blocks every test until all expected ones are running at once."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.running = 0
        self.peak = 0
        self.all_in = asyncio.Event()

    async def test(self, server: ServerConfig) -> Mapping[str, Any]:
        self.running += 1
        self.peak = max(self.peak, self.running)
        if self.running >= self.expected:
            self.all_in.set()
        await self.all_in.wait()
        self.running -= 1
        if server.id == "s2":
            raise RuntimeError("tester bug")
        return {"server": server.id, "ok": True, "reachable": True}


async def test_test_all_runs_concurrently(make_harness: MakeHarness) -> None:
    servers = [{"id": f"s{i}", "url": f"http://127.0.0.1:{i + 1}"} for i in range(4)]
    tester = GatedTester(expected=4)
    gw = await make_harness({"servers": servers}, tester=tester)
    async with asyncio.timeout(WAIT):
        status, body, _ = await gw.call("POST", "/servers/test")
    assert status == 200, body
    assert tester.peak == 4
    assert [r["server"] for r in body["results"]] == ["s0", "s1", "s2", "s3"]
    assert [r["reachable"] for r in body["results"]] == [True, True, False, True]
    assert body["results"][2]["error"] == "test failed: RuntimeError"


async def test_a_hanging_test_is_cut_at_the_limit(make_harness: MakeHarness) -> None:
    class Hang:
        async def test(self, server: ServerConfig) -> Mapping[str, Any]:
            await asyncio.Event().wait()
            return {}

    gw = await make_harness(tester=Hang(), test_timeout=0.05)
    status, body, _ = await gw.call("POST", "/servers/local/test")
    assert status == 200
    assert body["reachable"] is False
    assert "no answer" in body["error"]


async def test_fake_tester_records_saved_servers(make_harness: MakeHarness) -> None:
    tester = FakeTester()
    gw = await make_harness(tester=tester)
    status, body, _ = await gw.call("POST", "/servers/test")
    assert status == 200
    assert sorted(s.id for s in tester.tested) == ["local", "remote"]
    assert all(r["saved"] for r in body["results"])
