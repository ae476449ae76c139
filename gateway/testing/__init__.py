"""Simulated ComfyUI backend for tests, benchmarks and ``comfyui-gateway demo``.

Public API::

    from gateway.testing import FakeComfyOptions, create_fake_comfy_app, FAKE_STATE

    app = create_fake_comfy_app(FakeComfyOptions(name="a", job_duration=0.1))
    state = app[FAKE_STATE]          # FakeComfyState: history, queue, sockets, knobs...

Run one as a separate process with ``python -m gateway.testing --port 0`` (prints
``READY http://HOST:PORT``).
"""

from gateway.testing.fake_comfy import FAKE_STATE, create_fake_comfy_app
from gateway.testing.fake_images import FakeImage, parse_binary_frame, png_text
from gateway.testing.fake_nodes import NODES, example_prompt
from gateway.testing.fake_state import ExecutionStatus, FakeComfyOptions, FakeComfyState

__all__ = [
    "FAKE_STATE",
    "NODES",
    "ExecutionStatus",
    "FakeComfyOptions",
    "FakeComfyState",
    "FakeImage",
    "create_fake_comfy_app",
    "example_prompt",
    "parse_binary_frame",
    "png_text",
]
