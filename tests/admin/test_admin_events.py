"""GET /events: Server-Sent Events of the bus, replay, heartbeat, secrets, shutdown."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from admin_harness import BACKEND_SECRET, TOKEN, WAIT, Harness, MakeHarness


@dataclass
class SseEvent:
    id: int | None
    event: str | None
    data: Any
    comments: list[str]


class SseReader:
    """Reads blocks from a text/event-stream response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def block(self) -> SseEvent | None:
        """Return the next block (None at the end of the stream)."""
        fields: dict[str, str] = {}
        comments: list[str] = []
        async with asyncio.timeout(WAIT):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\n")
                if not line:
                    if fields or comments:
                        break
                    continue
                if line.startswith(":"):
                    comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        data = json.loads(fields["data"]) if "data" in fields else None
        event_id = int(fields["id"]) if "id" in fields else None
        return SseEvent(event_id, fields.get("event"), data, comments)

    async def until(self, kind: str, **match: Any) -> SseEvent:
        while True:
            block = await self.block()
            assert block is not None, f"stream ended before {kind}"
            if block.event == kind and all(
                block.data["data"].get(k) == v for k, v in match.items()
            ):
                return block


async def open_stream(gw: Harness, **headers: str) -> SseReader:
    resp = await gw.client.get("/gateway/api/events", headers=headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    return SseReader(resp)


async def test_stream_receives_admin_change_after_post(gw: Harness) -> None:
    reader = await open_stream(gw)
    first = await reader.block()  # the "retry:" hint block
    assert first is not None
    status, _, _ = await gw.call("POST", "/servers", {"id": "new", "url": "http://127.0.0.1:1"})
    assert status == 201
    applied = await reader.until("config.applied")
    assert "new" in applied.data["data"]["servers"]
    change = await reader.until("admin.change", action="server.added")
    assert change.id == change.data["id"]
    assert change.data["kind"] == "admin.change"
    assert change.data["data"]["server"] == "new"
    assert change.data["data"]["actor"] == "127.0.0.1"
    reader.resp.close()


async def test_last_event_id_replays_missed_events(gw: Harness) -> None:
    mark = gw.registry.events.publish("test.mark")
    await gw.call("POST", "/servers/remote/activate")
    reader = await open_stream(gw, **{"Last-Event-ID": str(mark.id)})
    seen = []
    while True:
        block = await reader.block()
        assert block is not None
        if block.event:
            seen.append(block)
        if block.event == "admin.change":
            break
    assert all(b.id is not None and b.id > mark.id for b in seen)
    assert [b.event for b in seen] == ["config.applied", "serving.changed", "admin.change"]
    ids = [b.id for b in seen]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    reader.resp.close()


async def test_unknown_last_event_id_asks_for_resync(gw: Harness) -> None:
    reader = await open_stream(gw, **{"Last-Event-ID": "999999"})
    while True:
        block = await reader.block()
        assert block is not None
        if block.event == "resync":
            assert block.id is None
            assert block.data == {"reason": "unknown event id"}
            break
    gw.registry.events.publish("after.resync")
    live = await reader.until("after.resync")
    assert live.id is not None
    assert live.id < 999999
    reader.resp.close()


async def test_heartbeat_comment(make_harness: MakeHarness) -> None:
    gw = await make_harness(sse_heartbeat=0.05)
    reader = await open_stream(gw)
    while True:
        block = await reader.block()
        assert block is not None
        if "ping" in block.comments:
            break
    reader.resp.close()


async def test_events_never_carry_secrets(gw: Harness) -> None:
    reader = await open_stream(gw)
    gw.registry.events.publish(
        "server.checked",
        server="remote",
        error=f"HTTP 401 from http://10.0.0.7:8188/system_stats?token={BACKEND_SECRET}",
        note=f"Bearer {TOKEN}",
        password="plain",
    )
    block = await reader.until("server.checked")
    text = json.dumps(block.data)
    assert BACKEND_SECRET not in text
    assert TOKEN not in text
    assert "plain" not in text
    assert "********" in text
    reader.resp.close()


async def test_streams_end_cleanly_on_shutdown(gw: Harness) -> None:
    reader = await open_stream(gw)
    await reader.block()
    assert gw.ctx.streams.open == 1
    await gw.ctx.streams.on_shutdown(gw.admin)
    while await reader.block() is not None:
        pass  # whatever was in flight, then the end of the stream (not a cut connection)
    assert reader.resp.content.at_eof()


async def test_events_follow_protect_reads(make_harness: MakeHarness) -> None:
    gw = await make_harness(protect_reads=True)
    resp = await gw.client.get("/gateway/api/events")
    assert resp.status == 401
    resp = await gw.client.get("/gateway/api/events", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    resp.close()
