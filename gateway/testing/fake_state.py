"""Options and in-memory state of one simulated ComfyUI backend.

Everything here is per app (per "process" in ComfyUI terms): queue, history, ``number``
counter, websocket session table and directories. A new app is a restarted backend.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import aiohttp
from aiohttp import web

log = logging.getLogger("gateway.testing.fake_comfy")

#: execution.py MAXIMUM_HISTORY_SIZE
MAXIMUM_HISTORY_SIZE = 10000
#: execution.py SENSITIVE_EXTRA_DATA_KEYS (stripped from history, kept in /queue)
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
#: app/logger.py keeps a ring buffer; /internal/logs returns it.
LOG_RING_SIZE = 300

#: ``[number, prompt_id, prompt, extra_data, outputs_to_execute]`` (a tuple, like ComfyUI).
QueueItem = tuple[float, str, dict[str, Any], dict[str, Any], list[str]]


@dataclass
class FakeComfyOptions:
    """Static configuration of one simulated backend (see the module docs of fake_comfy)."""

    name: str = "fake"
    job_duration: float = 0.2
    steps: int = 4
    max_upload_size: int = 104857600
    output_prefix: str = "ComfyUI"
    data_dir: Path | None = None
    frontend_root: Path | None = None
    comfyui_version: str = "0.3.64"


class ExecutionStatus(NamedTuple):
    """execution.py PromptQueue.ExecutionStatus (stored as a dict in history)."""

    status_str: Literal["success", "error"]
    completed: bool
    messages: list[tuple[str, dict[str, Any]]]


@dataclass(order=True)
class _HeapEntry:
    """Heap ordering of ComfyUI's queue: by ``number``, then ``prompt_id`` (then arrival)."""

    number: float
    prompt_id: str
    seq: int
    item: QueueItem = field(compare=False)


class FakePromptQueue:
    """Port of ``execution.PromptQueue`` onto asyncio (single event loop, no locks needed).

    ``on_update`` is called wherever ComfyUI calls ``server.queue_updated()`` (a ``status``
    broadcast).
    """

    def __init__(self, on_update: Callable[[], None]) -> None:
        self._on_update = on_update
        self._seq = itertools.count()
        self._not_empty = asyncio.Event()
        self.queue: list[_HeapEntry] = []
        self.currently_running: dict[int, QueueItem] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.task_counter = 0
        self.flags: dict[str, Any] = {}

    def put(self, item: QueueItem) -> None:
        """Enqueue ``item``; broadcasts ``status``."""
        heapq.heappush(self.queue, _HeapEntry(item[0], item[1], next(self._seq), item))
        self._on_update()
        self._not_empty.set()

    async def get(self) -> tuple[QueueItem, int]:
        """Wait for the next item by priority; moves it to ``currently_running`` (broadcasts)."""
        while not self.queue:
            self._not_empty.clear()
            await self._not_empty.wait()
        entry = heapq.heappop(self.queue)
        item_id = self.task_counter
        self.currently_running[item_id] = copy.deepcopy(entry.item)
        self.task_counter += 1
        self._on_update()
        return entry.item, item_id

    def task_done(
        self, item_id: int, history_result: dict[str, Any], status: ExecutionStatus | None
    ) -> None:
        """Move a finished item to history (sensitive extra_data stripped); broadcasts."""
        prompt = self.currently_running.pop(item_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        status_dict = copy.deepcopy(status._asdict()) if status is not None else None
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            prompt[3].pop(key, None)
        entry: dict[str, Any] = {"prompt": prompt, "outputs": {}, "status": status_dict}
        entry.update(history_result)
        self.history[prompt[1]] = entry
        self._on_update()

    def running_items(self) -> list[QueueItem]:
        """Items currently executing (0 or 1)."""
        return list(self.currently_running.values())

    def pending_items(self) -> list[QueueItem]:
        """Pending items in heap-array order (exactly what ``GET /queue`` shows)."""
        return [e.item for e in self.queue]

    def tasks_remaining(self) -> int:
        """Pending plus running (``queue_remaining``)."""
        return len(self.queue) + len(self.currently_running)

    def wipe_queue(self) -> None:
        """Drop all pending items; broadcasts."""
        self.queue = []
        self._on_update()

    def delete_queue_item(self, predicate: Callable[[QueueItem], bool]) -> bool:
        """Delete the first pending item matching ``predicate`` (ComfyUI's double broadcast)."""
        for index, entry in enumerate(self.queue):
            if predicate(entry.item):
                if len(self.queue) == 1:
                    self.wipe_queue()
                else:
                    self.queue.pop(index)
                    heapq.heapify(self.queue)
                self._on_update()
                return True
        return False

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict[str, Any]:
        """``GET /history`` semantics: insertion order, last ``max_items`` by default."""
        if prompt_id is None:
            out: dict[str, Any] = {}
            if offset < 0 and max_items is not None:
                offset = len(self.history) - max_items
            for i, key in enumerate(self.history):
                if i >= offset:
                    out[key] = self.history[key]
                    if max_items is not None and len(out) >= max_items:
                        break
            return out
        if prompt_id in self.history:
            return {prompt_id: copy.deepcopy(self.history[prompt_id])}
        return {}

    def wipe_history(self) -> None:
        """Forget all history."""
        self.history = {}

    def delete_history_item(self, prompt_id: str) -> None:
        """Forget one history entry (no error when unknown)."""
        self.history.pop(prompt_id, None)

    def set_flag(self, name: str, data: Any) -> None:
        """``POST /free`` flags (accepted, no effect on the simulator)."""
        self.flags[name] = data


@dataclass(frozen=True)
class Dirs:
    """ComfyUI's folder layout under one base directory (absolute, normalised strings)."""

    base: str
    input: str
    output: str
    temp: str
    user: str
    models: str

    @classmethod
    def under(cls, base: Path) -> Dirs:
        """Create (if needed) the standard sub-directories of ``base``; wipe temp like main.py."""
        root = os.path.abspath(base)
        dirs = cls(
            base=root,
            input=os.path.join(root, "input"),
            output=os.path.join(root, "output"),
            temp=os.path.join(root, "temp"),
            user=os.path.join(root, "user"),
            models=os.path.join(root, "models"),
        )
        shutil.rmtree(dirs.temp, ignore_errors=True)  # main.py cleanup_temp()
        for path in (dirs.input, dirs.output, dirs.temp, dirs.user, dirs.models):
            os.makedirs(path, exist_ok=True)
        return dirs

    def by_type(self, type_name: str | None) -> str | None:
        """folder_paths.get_directory_by_type."""
        return {"output": self.output, "temp": self.temp, "input": self.input}.get(type_name or "")

    def annotated(self, name: str) -> tuple[str, str | None]:
        """folder_paths.annotated_filepath: strip `` [output]``/``[input]``/``[temp]``."""
        if name.endswith("[output]"):
            return name[:-9], self.output
        if name.endswith("[input]"):
            return name[:-8], self.input
        if name.endswith("[temp]"):
            return name[:-7], self.temp
        return name, None


class FakeComfyState:
    """All mutable state of one simulated backend, plus the message bus towards websockets.

    Tests may read anything and flip the runtime knobs ``delay_responses``, ``hang``,
    ``fail_status``, ``job_duration`` and ``steps``.
    """

    def __init__(self, options: FakeComfyOptions) -> None:
        self.options = options
        self.boot_id: str = secrets.token_hex(8)
        self.started_at: float = time.time()
        self._data_tmp: tempfile.TemporaryDirectory[str] | None = None
        if options.data_dir is None:
            self._data_tmp = tempfile.TemporaryDirectory(prefix=f"fake-comfy-{options.name}-")
            base = Path(self._data_tmp.name)
        else:
            base = Path(options.data_dir)
        self.dirs = Dirs.under(base)
        self.data_dir = Path(self.dirs.base)

        self.number: int = 0
        self.queue = FakePromptQueue(self.queue_updated)
        self.executed_prompt_ids: list[str] = []
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.sockets_metadata: dict[str, dict[str, Any]] = {}
        self.all_websockets: set[web.WebSocketResponse] = set()
        # server.client_id / last_node_id / last_prompt_id of PromptServer
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.users: dict[str, str] = {"default": "default"}
        self.log_entries: deque[dict[str, str]] = deque(maxlen=LOG_RING_SIZE)
        self.log_subscribers: set[str] = set()

        # runtime knobs
        self.delay_responses: float = 0.0
        self.fail_status: int | None = None
        self.job_duration: float = options.job_duration
        self.steps: int = max(1, options.steps)
        self._hang = False
        self._unhang = asyncio.Event()
        self._unhang.set()

        self.interrupt_event = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        self._messages: asyncio.Queue[tuple[str | int, Any, str | None]] = asyncio.Queue()
        self.system_stats_body: bytes | None = None

    # ------------------------------------------------------------------ knobs
    @property
    def history(self) -> dict[str, dict[str, Any]]:
        """prompt_id → history entry (insertion order)."""
        return self.queue.history

    @property
    def hang(self) -> bool:
        """When True, HTTP requests (except ``/__sim/*``) are accepted but not answered."""
        return self._hang

    @hang.setter
    def hang(self, value: bool) -> None:
        self._hang = bool(value)
        if self._hang:
            self._unhang.clear()
        else:
            self._unhang.set()

    async def wait_unhung(self) -> None:
        """Block while ``hang`` is set (released when it is cleared or the app shuts down)."""
        await self._unhang.wait()

    def release_all(self) -> None:
        """Shutdown: let hung requests finish."""
        self.closing = True
        self._unhang.set()

    # ------------------------------------------------------------------ info
    def queue_info(self) -> dict[str, Any]:
        """``{"exec_info": {"queue_remaining": N}}``."""
        return {"exec_info": {"queue_remaining": self.queue.tasks_remaining()}}

    def server_features(self) -> dict[str, Any]:
        """comfy_api.feature_flags.get_server_features()."""
        return {"supports_preview_metadata": True, "max_upload_size": self.options.max_upload_size}

    def supports_preview_metadata(self, sid: str | None) -> bool:
        """feature_flags.supports_feature(sockets_metadata, sid, "supports_preview_metadata")."""
        if sid is None or sid not in self.sockets_metadata:
            return False
        flags = self.sockets_metadata[sid].get("feature_flags", {})
        return isinstance(flags, dict) and flags.get("supports_preview_metadata", False) is True

    # ------------------------------------------------------------------ messages
    def queue_updated(self) -> None:
        """Broadcast ``status`` (PromptServer.queue_updated)."""
        self.send_sync("status", {"status": self.queue_info()})

    def send_sync(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """Queue a message for the publisher (keeps ComfyUI's global ordering).

        ``event`` is a message type, or an int binary event type with ``data`` the frame payload
        after the 4-byte type. ``sid=None`` broadcasts; otherwise the message is dropped unless
        ``sid`` is connected when it is published.
        """
        self._messages.put_nowait((event, data, sid))

    async def publish_loop(self) -> None:
        """Deliver queued messages forever (PromptServer.publish_loop)."""
        while True:
            event, data, sid = await self._messages.get()
            await self.send(event, data, sid)

    async def send(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """Send now: JSON ``{"type","data"}`` or a binary frame (``data`` must be bytes)."""
        if isinstance(event, int):
            await self._deliver(_binary(event, data), sid)
        else:
            await self._deliver(json.dumps({"type": event, "data": data}), sid)

    async def _deliver(self, message: str | bytes, sid: str | None) -> None:
        if sid is None:
            targets = list(self.sockets.values())
        elif sid in self.sockets:
            targets = [self.sockets[sid]]
        else:
            return
        for ws in targets:
            try:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message)
            except (aiohttp.ClientError, ConnectionError) as err:
                log.warning("send error: %s", err)

    # ------------------------------------------------------------------ logs
    def log(self, message: str) -> None:
        """Append to the log ring buffer (``/internal/logs``) and push to subscribed sockets."""
        entry = {"t": datetime.now().isoformat(), "m": message + "\n"}  # noqa: DTZ005 (like ComfyUI)
        self.log_entries.append(entry)
        log.debug("[%s] %s", self.options.name, message)
        for sid in list(self.log_subscribers):
            self.send_sync("logs", {"entries": [entry], "size": None}, sid)

    # ------------------------------------------------------------------ lifecycle
    def cleanup_data_dir(self) -> None:
        """Remove the temporary data directory (only when the app created it)."""
        if self._data_tmp is not None:
            self._data_tmp.cleanup()
            self._data_tmp = None


def _binary(event: int, payload: bytes) -> bytes:
    """PromptServer.encode_bytes: 4-byte big-endian event type, then the payload."""
    return event.to_bytes(4, "big") + bytes(payload)
