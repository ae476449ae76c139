"""A blocking script client written like ComfyUI's script_examples (urllib + websocket-client).

It knows nothing of the gateway: no Origin, no Content-Type on POST /prompt, ``clientId`` in the
websocket URL, binary preview frames skipped, ``executing`` with ``node: null`` as the end.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest

from gateway.testing import FakeComfyOptions, create_fake_comfy_app, example_prompt
from tests.conftest import server_url

websocket = pytest.importorskip("websocket", reason="websocket-client is a test dependency")


def script_flow(host: str, prompt: dict[str, Any]) -> dict[str, list[bytes]]:
    """Queue ``prompt``, wait for it on the websocket, download its images; return them."""
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{host}/ws?clientId={client_id}", timeout=30)
    try:
        body = json.dumps({"prompt": prompt, "client_id": client_id}).encode()
        with urllib.request.urlopen(
            urllib.request.Request(f"http://{host}/prompt", data=body)
        ) as r:
            prompt_id = json.loads(r.read())["prompt_id"]
        while True:
            out = ws.recv()
            if isinstance(out, str):
                message = json.loads(out)
                data = message["data"]
                if (
                    message["type"] == "executing"
                    and data["node"] is None
                    and (data["prompt_id"] == prompt_id)
                ):
                    break
    finally:
        ws.close()
    with urllib.request.urlopen(f"http://{host}/history/{prompt_id}") as r:
        history = json.loads(r.read())[prompt_id]
    images: dict[str, list[bytes]] = {}
    for node_id, output in history["outputs"].items():
        for image in output.get("images", []):
            query = urllib.parse.urlencode(image)
            with urllib.request.urlopen(f"http://{host}/view?{query}") as r:
                images.setdefault(node_id, []).append(r.read())
    return images


async def test_blocking_script_client_through_gateway(start_app, make_gateway):
    backend = await start_app(create_fake_comfy_app(FakeComfyOptions(job_duration=0.05)))
    gw = await make_gateway([server_url(backend)])
    images = await asyncio.to_thread(script_flow, f"127.0.0.1:{gw.port}", example_prompt("script"))
    assert images["3"][0].startswith(b"\x89PNG")
