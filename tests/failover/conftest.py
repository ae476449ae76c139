"""Fixtures for fault tests: simulated backends as real processes, and a ComfyUI client."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient


async def sim_state(url: str) -> dict[str, Any]:
    """Return a simulated backend's introspection state (executed prompts, boot id)."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/__sim/state") as resp:
        return await resp.json()


class ComfyClient:
    """A ComfyUI API client holding one websocket, like the canonical example script."""

    def __init__(self, gw: TestClient, ws: aiohttp.ClientWebSocketResponse, client_id: str) -> None:
        self.gw = gw
        self.ws = ws
        self.client_id = client_id
        self.messages: list[dict[str, Any]] = []

    async def submit(self, prompt: dict[str, Any]) -> str:
        """POST a prompt for this client; return its id."""
        prompt_id = str(uuid.uuid4())
        body = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        resp = await self.gw.post("/prompt", json=body)
        assert resp.status == 200, await resp.text()
        return prompt_id

    async def wait_for(self, kind: str, prompt_id: str | None = None, timeout: float = 30) -> dict:
        """Read messages until one of ``kind`` (for ``prompt_id``) arrives; return it."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type == WSMsgType.BINARY:
                continue
            assert msg.type == WSMsgType.TEXT, f"client websocket ended: {msg}"
            data = json.loads(msg.data)
            self.messages.append(data)
            payload = data.get("data") or {}
            if data["type"] == kind and (
                prompt_id is None or payload.get("prompt_id") == prompt_id
            ):
                return data

    async def wait_done(self, prompt_id: str, timeout: float = 30) -> None:
        """Wait for ``executing`` with ``node: null`` for ``prompt_id`` (the end of a prompt)."""
        while True:
            data = await self.wait_for("executing", prompt_id, timeout)
            if data["data"]["node"] is None:
                return


@pytest.fixture
def comfy_client() -> Callable[[TestClient], Awaitable[ComfyClient]]:
    """Return a factory connecting a ComfyUI client's websocket through a gateway."""
    opened: list[aiohttp.ClientWebSocketResponse] = []

    async def connect(gw: TestClient) -> ComfyClient:
        client_id = uuid.uuid4().hex
        ws = await gw.ws_connect(f"/ws?clientId={client_id}")
        opened.append(ws)
        client = ComfyClient(gw, ws, client_id)
        await client.wait_for("status")
        return client

    return connect
