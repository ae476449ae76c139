"""Prompt execution of the simulated backend: the worker task and the node implementations.

One worker per app takes prompts off the queue in priority order and emits exactly the
websocket message sequence of a real ComfyUI 0.3.64 run (see ``comfyui-api.md`` §3.4):
``execution_start``, ``execution_cached``, then per node ``progress_state`` (start),
``executing``, work, ``executed`` (nodes with UI output), ``progress_state`` (finish); then
``execution_success``, the ``status`` broadcast of ``task_done`` and ``executing{node:null}``.

Simulated work: nodes of class ``FakeDelay`` spend their ``seconds`` input; otherwise one
"work node" (the first non-output node in execution order) spends ``state.job_duration`` split
into ``state.steps`` progress steps, sending one binary preview frame at the last step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.testing.fake_images import (
    PREVIEW_IMAGE,
    PREVIEW_IMAGE_WITH_METADATA,
    FakeImage,
    color_for,
    encode_png,
    image_from_bytes,
    preview_metadata_payload,
    preview_payload,
)
from gateway.testing.fake_nodes import NODES, execution_order, full_type_name, is_link
from gateway.testing.fake_state import ExecutionStatus, FakeComfyState, QueueItem

log = logging.getLogger("gateway.testing.fake_comfy")

PREVIEW_SIDE = 64


class InterruptProcessingError(Exception):
    """comfy.model_management.InterruptProcessingException."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _format_value(value: Any) -> Any:
    """execution.format_value."""
    if value is None or isinstance(value, int | float | bool | str):
        return value
    return str(value)


NodeOutputs = tuple[Any, ...]
NodeResult = tuple[NodeOutputs, dict[str, Any] | None]
NodeImpl = Callable[["PromptRun", str, dict[str, Any]], Awaitable[NodeResult]]


class PromptRun:
    """Executes one queue item against a :class:`FakeComfyState` (PromptExecutor + hooks)."""

    def __init__(self, state: FakeComfyState, item: QueueItem) -> None:
        self.state = state
        _, self.prompt_id, self.prompt, self.extra_data, self.outputs = item
        self.status_messages: list[tuple[str, dict[str, Any]]] = []
        self.success = True
        self.progress_nodes: dict[str, dict[str, Any]] = {}
        self.values: dict[str, NodeOutputs] = {}
        self.executed: list[str] = []
        self.ui_outputs: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.work_node: str | None = None
        self.history_result: dict[str, Any] = {"outputs": {}, "meta": {}}

    # ------------------------------------------------------------------ messaging
    @property
    def client_id(self) -> str | None:
        """server.client_id: the client of the prompt being executed (None → broadcasts)."""
        return self.state.client_id

    def add_message(self, event: str, data: dict[str, Any], *, broadcast: bool) -> None:
        """PromptExecutor.add_message: record for history, send if targeted or ``broadcast``."""
        data = {**data, "timestamp": _now_ms()}
        self.status_messages.append((event, data))
        if self.client_id is not None or broadcast:
            self.state.send_sync(event, data, self.client_id)

    def _send_progress_state(self) -> None:
        nodes = {
            node_id: {
                "value": entry["value"],
                "max": entry["max"],
                "state": entry["state"],
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, entry in self.progress_nodes.items()
            if entry["state"] != "pending"
        }
        self.state.send_sync(
            "progress_state", {"prompt_id": self.prompt_id, "nodes": nodes}, self.client_id
        )

    def start_progress(self, node_id: str) -> None:
        """ProgressRegistry.start_progress → ``progress_state``."""
        self.progress_nodes[node_id] = {"state": "running", "value": 0.0, "max": 1.0}
        self._send_progress_state()

    def update_progress(self, node_id: str, value: float, max_value: float) -> None:
        """ProgressRegistry.update_progress → ``progress_state``."""
        self.progress_nodes[node_id] = {"state": "running", "value": value, "max": max_value}
        self._send_progress_state()

    def finish_progress(self, node_id: str) -> None:
        """ProgressRegistry.finish_progress → ``progress_state``."""
        entry = self.progress_nodes.setdefault(node_id, {"value": 0.0, "max": 1.0})
        entry["state"] = "finished"
        entry["value"] = entry["max"]
        self._send_progress_state()

    def progress_hook(self, node_id: str, value: int, total: int, image: bytes | None) -> None:
        """main.py hijack_progress hook: ``progress_state``, ``progress``, then a preview frame.

        The frame is type 4 (with metadata) if this client negotiated
        ``supports_preview_metadata``, else type 1 with a PNG format header.
        """
        self.check_interrupt()
        self.update_progress(node_id, value, total)
        progress = {"value": value, "max": total, "prompt_id": self.prompt_id, "node": node_id}
        self.state.send_sync("progress", progress, self.client_id)
        if image is None:
            return
        if self.state.supports_preview_metadata(self.client_id):
            metadata = {
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            payload = preview_metadata_payload(image, metadata)
            self.state.send_sync(PREVIEW_IMAGE_WITH_METADATA, payload, self.client_id)
        else:
            self.state.send_sync(PREVIEW_IMAGE, preview_payload(image), self.client_id)

    # ------------------------------------------------------------------ time & interrupts
    def check_interrupt(self) -> None:
        """Raise (and reset the flag) if ``/interrupt`` hit this prompt."""
        if self.state.interrupt_event.is_set():
            self.state.interrupt_event.clear()
            raise InterruptProcessingError

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` but wake up at once (raising) when interrupted."""
        if seconds <= 0:
            await asyncio.sleep(0)
        else:
            try:
                await asyncio.wait_for(self.state.interrupt_event.wait(), seconds)
            except TimeoutError:
                return
        self.check_interrupt()

    async def work(self, node_id: str, seconds: float, steps: int) -> None:
        """Spend ``seconds`` in ``steps`` progress steps; the last one carries a preview."""
        steps = max(1, steps)
        for step in range(1, steps + 1):
            await self.sleep(seconds / steps)
            preview = None
            if step == steps:
                color = color_for(f"{self.prompt_id}:{node_id}")
                preview = encode_png(PREVIEW_SIDE, PREVIEW_SIDE, color, compress_level=1)
            self.progress_hook(node_id, step, steps, preview)

    # ------------------------------------------------------------------ execution
    def _pick_work_node(self, order: list[str]) -> str | None:
        if any(self.prompt[n]["class_type"] == "FakeDelay" for n in order):
            return None
        for node_id in order:
            if not NODES[self.prompt[node_id]["class_type"]].output_node:
                return node_id
        return order[0] if order else None

    async def execute(self) -> None:
        """PromptExecutor.execute_async; fills ``success``, ``status_messages``, history."""
        state = self.state
        state.interrupt_event.clear()
        state.client_id = self.extra_data.get("client_id")
        self.add_message("execution_start", {"prompt_id": self.prompt_id}, broadcast=False)
        self.add_message(
            "execution_cached", {"nodes": [], "prompt_id": self.prompt_id}, broadcast=False
        )
        order = execution_order(self.prompt, list(self.outputs))
        self.work_node = self._pick_work_node(order)
        for node_id in order:
            error, exc = await self.run_node(node_id)
            if error is not None:
                self.success = False
                self.handle_execution_error(error, exc)
                break
        else:
            self.add_message("execution_success", {"prompt_id": self.prompt_id}, broadcast=False)
        self.history_result = {"outputs": self.ui_outputs, "meta": self.meta}
        state.last_node_id = None

    def _resolve_inputs(self, node_id: str) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for name, value in self.prompt[node_id].get("inputs", {}).items():
            if is_link(value):
                produced = self.values.get(value[0])
                slot = int(value[1])
                ok = produced is not None and slot < len(produced)
                args[name] = produced[slot] if ok and produced is not None else None
            else:
                args[name] = value
        return args

    async def run_node(self, node_id: str) -> tuple[dict[str, Any] | None, BaseException | None]:
        """execution.execute for one node; returns ``(error_details, exception)`` on failure."""
        class_type = self.prompt[node_id]["class_type"]
        args: dict[str, Any] | None = None
        try:
            self.start_progress(node_id)
            args = self._resolve_inputs(node_id)
            if self.client_id is not None:
                self.state.last_node_id = node_id
                executing = {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id}
                self.state.send_sync("executing", executing, self.client_id)
            self.check_interrupt()
            if node_id == self.work_node:
                await self.work(node_id, self.state.job_duration, self.state.steps)
            outputs, ui = await IMPLEMENTATIONS[class_type](self, node_id, args)
            self.values[node_id] = outputs
        except InterruptProcessingError as iex:
            self.state.log("Processing interrupted")
            return {"node_id": node_id}, iex
        except Exception as ex:
            typ, _, tb = sys.exc_info()
            self.state.log(f"!!! Exception during processing !!! {ex}")
            current_inputs = {k: [_format_value(v)] for k, v in (args or {}).items()}
            return {
                "node_id": node_id,
                "exception_message": f"{ex}\n",
                "exception_type": full_type_name(typ or type(ex)),
                "traceback": traceback.format_tb(tb),
                "current_inputs": current_inputs,
            }, ex
        if ui:
            self.meta[node_id] = {
                "node_id": node_id,
                "display_node": node_id,
                "parent_node": None,
                "real_node_id": node_id,
            }
            self.ui_outputs[node_id] = ui
            if self.client_id is not None:
                executed = {
                    "node": node_id,
                    "display_node": node_id,
                    "output": ui,
                    "prompt_id": self.prompt_id,
                }
                self.state.send_sync("executed", executed, self.client_id)
        self.finish_progress(node_id)
        self.executed.append(node_id)
        return None, None

    def handle_execution_error(self, error: dict[str, Any], exc: BaseException | None) -> None:
        """PromptExecutor.handle_execution_error: send ``execution_interrupted``/``_error``."""
        node_id = error["node_id"]
        message: dict[str, Any] = {
            "prompt_id": self.prompt_id,
            "node_id": node_id,
            "node_type": self.prompt[node_id]["class_type"],
            "executed": list(self.executed),
        }
        if isinstance(exc, InterruptProcessingError):
            self.add_message("execution_interrupted", message, broadcast=True)
            return
        message.update(
            exception_message=error["exception_message"],
            exception_type=error["exception_type"],
            traceback=error["traceback"],
            current_inputs=error["current_inputs"],
            current_outputs=[],
        )
        self.add_message("execution_error", message, broadcast=False)


# --------------------------------------------------------------------------- saving images


def _save_image_path(
    prefix: str, output_dir: str, width: int, height: int
) -> tuple[str, str, int, str]:
    """folder_paths.get_save_image_path → ``(full_folder, filename, counter, subfolder)``."""
    if "%" in prefix:
        now = time.localtime()
        for key, value in (
            ("%width%", str(width)),
            ("%height%", str(height)),
            ("%year%", str(now.tm_year)),
            ("%month%", str(now.tm_mon).zfill(2)),
            ("%day%", str(now.tm_mday).zfill(2)),
            ("%hour%", str(now.tm_hour).zfill(2)),
            ("%minute%", str(now.tm_min).zfill(2)),
            ("%second%", str(now.tm_sec).zfill(2)),
        ):
            prefix = prefix.replace(key, value)
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    full_folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(full_folder))) != output_dir:
        raise Exception(  # ComfyUI raises a bare Exception
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(full_folder)}"
            f"\n         output_dir: {output_dir}"
        )
    prefix_len = len(os.path.basename(prefix))
    counter = 1
    try:
        existing = os.listdir(full_folder)
    except FileNotFoundError:
        os.makedirs(full_folder, exist_ok=True)
        existing = []
    numbers = []
    for name in existing:
        head = name[: prefix_len + 1]
        if os.path.normcase(head[:-1]) == os.path.normcase(filename) and head[-1:] == "_":
            try:
                numbers.append(int(name[prefix_len + 1 :].split("_")[0]))
            except ValueError:
                numbers.append(0)
    if numbers:
        counter = max(numbers) + 1
    return full_folder, filename, counter, subfolder


def _write_batch(
    output_dir: str,
    prefix: str,
    images: FakeImage,
    text: dict[str, str],
    folder_type: str,
    compress_level: int,
) -> list[dict[str, str]]:
    """Write one PNG per batch item, named ``{prefix}_{counter:05}_.png`` (runs in a thread)."""
    full_folder, filename, counter, subfolder = _save_image_path(
        prefix, output_dir, images.width, images.height
    )
    results = []
    for batch_number in range(images.batch):
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        data = encode_png(
            images.width, images.height, images.color, text=text, compress_level=compress_level
        )
        with open(os.path.join(full_folder, name), "wb") as fh:
            fh.write(data)
        results.append({"filename": name, "subfolder": subfolder, "type": folder_type})
        counter += 1
    return results


async def save_images(
    run: PromptRun, images: Any, prefix: str, *, folder_type: str, compress_level: int
) -> dict[str, Any]:
    """SaveImage.save_images: real PNGs whose bytes depend on prompt_id and backend identity."""
    if not isinstance(images, FakeImage):
        raise TypeError(f"'images' is not an IMAGE: {images!r}")
    state = run.state
    text = {"prompt": json.dumps(run.prompt)}
    extra = run.extra_data.get("extra_pnginfo")
    if isinstance(extra, dict):
        text.update({key: json.dumps(value) for key, value in extra.items()})
    text["prompt_id"] = run.prompt_id
    text["fake_backend"] = f"{state.options.name}:{state.boot_id}"
    output_dir = state.dirs.output if folder_type == "output" else state.dirs.temp
    results = await asyncio.to_thread(
        _write_batch, output_dir, prefix, images, text, folder_type, compress_level
    )
    return {"images": results}


# --------------------------------------------------------------------------- node implementations


async def _empty_image(run: PromptRun, node_id: str, a: dict[str, Any]) -> NodeResult:
    image = FakeImage(
        int(a["width"]), int(a["height"]), int(a.get("color", 0)), int(a.get("batch_size", 1))
    )
    return (image,), None


async def _image_invert(run: PromptRun, node_id: str, a: dict[str, Any]) -> NodeResult:
    image = a["image"]
    if not isinstance(image, FakeImage):
        raise TypeError(f"'image' is not an IMAGE: {image!r}")
    return (image.inverted(),), None


async def _image_scale(run: PromptRun, node_id: str, a: dict[str, Any]) -> NodeResult:
    image = a["image"]
    if not isinstance(image, FakeImage):
        raise TypeError(f"'image' is not an IMAGE: {image!r}")
    width, height = int(a["width"]), int(a["height"])
    if width == 0 and height == 0:
        return (image,), None
    if width == 0:
        width = max(1, round(image.width * height / image.height))
    elif height == 0:
        height = max(1, round(image.height * width / image.width))
    return (FakeImage(width, height, image.color, image.batch),), None


async def _save_image(run: PromptRun, node_id: str, a: dict[str, Any]) -> NodeResult:
    ui = await save_images(
        run, a["images"], str(a["filename_prefix"]), folder_type="output", compress_level=4
    )
    return (), ui


async def _preview_image(run: PromptRun, node_id: str, a: dict[str, Any]) -> NodeResult:
    suffix = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    prefix = f"{run.state.options.output_prefix}_temp_{suffix}"
    ui = await save_images(run, a["images"], prefix, folder_type="temp", compress_level=1)
    return (), ui


async def _load_image(run: PromptRun, node_id: str, a: dict[str, Any]) -> NodeResult:
    name = str(a["image"])
    base = run.state.dirs.input
    stripped, annotated = run.state.dirs.annotated(name)
    path = os.path.join(annotated or base, stripped)

    def read() -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    image = image_from_bytes(await asyncio.to_thread(read))
    return (image, FakeImage(image.width, image.height, 0, 1)), None


async def _save_image_websocket(run: PromptRun, node_id: str, a: dict[str, Any]) -> NodeResult:
    images = a["images"]
    if not isinstance(images, FakeImage):
        raise TypeError(f"'images' is not an IMAGE: {images!r}")
    png = encode_png(images.width, images.height, images.color, compress_level=1)
    for step in range(images.batch):
        run.progress_hook(node_id, step, images.batch, png)
    return (), None


async def _primitive_int(run: PromptRun, node_id: str, a: dict[str, Any]) -> NodeResult:
    return (int(a["value"]),), None


async def _fail_node(run: PromptRun, node_id: str, a: dict[str, Any]) -> NodeResult:
    raise RuntimeError(str(a.get("message", "simulated failure")))


async def _fake_delay(run: PromptRun, node_id: str, a: dict[str, Any]) -> NodeResult:
    await run.work(node_id, float(a["seconds"]), run.state.steps)
    image = a.get("image")
    if not isinstance(image, FakeImage):
        image = FakeImage(PREVIEW_SIDE, PREVIEW_SIDE, color_for(run.prompt_id), 1)
    return (image,), None


IMPLEMENTATIONS: dict[str, NodeImpl] = {
    "EmptyImage": _empty_image,
    "ImageInvert": _image_invert,
    "ImageScale": _image_scale,
    "SaveImage": _save_image,
    "PreviewImage": _preview_image,
    "LoadImage": _load_image,
    "SaveImageWebsocket": _save_image_websocket,
    "PrimitiveInt": _primitive_int,
    "FailNode": _fail_node,
    "FakeDelay": _fake_delay,
}
assert set(IMPLEMENTATIONS) == set(NODES), "every node schema needs an implementation"


# --------------------------------------------------------------------------- worker


async def prompt_worker(state: FakeComfyState) -> None:
    """main.py prompt_worker: run queued prompts one at a time, forever."""
    while True:
        item, item_id = await state.queue.get()
        prompt_id = item[1]
        state.last_prompt_id = prompt_id
        state.executed_prompt_ids.append(prompt_id)
        started = time.perf_counter()
        run = PromptRun(state, item)
        try:
            await run.execute()
        except Exception:  # a simulator bug must not kill the worker
            log.exception("fake backend %s: prompt %s crashed", state.options.name, prompt_id)
            run.success = False
            state.last_node_id = None
        status = ExecutionStatus(
            status_str="success" if run.success else "error",
            completed=run.success,
            messages=run.status_messages,
        )
        state.queue.task_done(item_id, run.history_result, status)
        if state.client_id is not None:
            state.send_sync("executing", {"node": None, "prompt_id": prompt_id}, state.client_id)
        state.log(f"Prompt executed in {time.perf_counter() - started:.2f} seconds")
        state.queue.flags.clear()
