"""Job tracking: which backend owns which prompt, file and client (pure state, no I/O).

ComfyUI keeps a prompt's queue entry, history, output files and websocket events on the one
backend that ran it (shared/comfyui-api.md §7). The :class:`JobTracker` remembers:

* ``prompt_id -> PromptRecord`` (owner backend, client id, the submitted body until the prompt
  finished, state), so ``/history/{id}``, targeted ``/interrupt`` and queue/history deletes reach
  the owner, and unfinished prompts can be re-submitted after a failover;
* ``(filename, subfolder, type) -> backend`` for output files learned from ``executed`` events
  and ``/history`` answers (used for references that were not tagged, see :mod:`refs`);
* ``client_id -> backend`` (the last backend that ran something for that client).

Every map is bounded in size (least recently used entries go first) and in age.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """A mapping bounded by entry count (LRU eviction) and entry age (TTL)."""

    def __init__(
        self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = (self._clock(), value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def get(self, key: K) -> V | None:
        """Return the value, or None when absent or expired."""
        item = self._data.get(key)
        if item is None:
            return None
        stamp, value = item
        if self._clock() - stamp > self.ttl:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def pop(self, key: K) -> V | None:
        """Remove and return the value, or None."""
        item = self._data.pop(key, None)
        return None if item is None else item[1]

    def values(self) -> Iterator[V]:
        """Iterate over live values (oldest first)."""
        now = self._clock()
        for stamp, value in list(self._data.values()):
            if now - stamp <= self.ttl:
                yield value

    def __len__(self) -> int:
        return len(self._data)

    def expire(self) -> int:
        """Drop expired entries; return how many were dropped."""
        now = self._clock()
        stale = [k for k, (stamp, _) in self._data.items() if now - stamp > self.ttl]
        for key in stale:
            del self._data[key]
        return len(stale)


class PromptState(StrEnum):
    """Life of a prompt as the gateway knows it."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    LOST = "lost"


TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})


@dataclass(eq=False)
class PromptRecord:
    """One prompt accepted by a backend through the gateway."""

    prompt_id: str
    backend: str
    client_id: str | None
    body: dict[str, Any] | None
    """The JSON body as submitted (kept until the prompt finishes, for re-submission)."""
    state: PromptState = PromptState.QUEUED
    submitted_at: float = field(default_factory=time.time)
    attempts: int = 1
    previous_backends: list[str] = field(default_factory=list)
    """Backends this prompt was moved away from (a copy may still sit there)."""
    cancel_pending: set[str] = field(default_factory=set)
    """Backends that may still hold a stale copy to cancel when they come back."""
    incoming: set[str] = field(default_factory=set)
    """Backends a re-run is being submitted to (its answer has not come back yet)."""
    moved_early: str | None = None
    """The backend the re-run's own events moved the prompt to before its answer came."""
    awaiting_start: set[str] = field(default_factory=set)
    """Backends that ran an earlier copy and got a re-run: until the re-run's
    ``execution_start`` arrives from there, the prompt's events from there are the earlier
    copy's last words (ComfyUI sends a backend's messages in order)."""

    @property
    def finished(self) -> bool:
        """Return True once the prompt is done or given up."""
        return self.state in (PromptState.DONE, PromptState.LOST)


FileKey = tuple[str, str, str]


class JobTracker:
    """Prompt, file and client affinity (see the module docstring)."""

    def __init__(self, max_entries: int = 100_000, ttl: float = 7 * 86400) -> None:
        self.prompts: BoundedMap[str, PromptRecord] = BoundedMap(max_entries, ttl)
        self.files: BoundedMap[FileKey, str] = BoundedMap(max_entries, ttl)
        self.clients: BoundedMap[str, str] = BoundedMap(max_entries, ttl)

    # -- prompts ---------------------------------------------------------------------

    def submitted(
        self, prompt_id: str, backend: str, client_id: str | None, body: dict[str, Any]
    ) -> PromptRecord:
        """Record a prompt the backend accepted."""
        record = self.prompts.get(prompt_id)
        if record is not None and record.moved_early == backend:
            record.moved_early = None  # its events already moved it here (maybe finished it)
            return record
        if record is not None and not record.finished:
            self._move(record, backend)
            record.state = PromptState.QUEUED
            return record
        record = PromptRecord(prompt_id, backend, client_id, body)
        self.prompts[prompt_id] = record
        if client_id:
            self.clients[client_id] = backend
        return record

    @staticmethod
    def _move(record: PromptRecord, backend: str) -> None:
        if record.backend != backend:
            record.previous_backends.append(record.backend)
            record.cancel_pending.add(record.backend)
        record.cancel_pending.discard(backend)  # its new home: never cancelled there
        record.backend = backend
        record.attempts += 1

    def owner(self, prompt_id: str) -> str | None:
        """Return the backend that owns a prompt, or None when unknown."""
        record = self.prompts.get(prompt_id)
        return record.backend if record else None

    def record(self, prompt_id: str) -> PromptRecord | None:
        """Return the record of a prompt, or None."""
        return self.prompts.get(prompt_id)

    def finish(self, prompt_id: str, state: PromptState = PromptState.DONE) -> PromptRecord | None:
        """Mark a prompt finished and drop its body (nothing to re-submit any more)."""
        record = self.prompts.get(prompt_id)
        if record is None or record.finished:
            return None
        record.state = state
        record.body = None
        return record

    def unfinished_on(self, backend: str) -> list[PromptRecord]:
        """Return the prompts a backend accepted that have not finished, oldest first."""
        return [r for r in self.prompts.values() if r.backend == backend and not r.finished]

    def unfinished(self) -> list[PromptRecord]:
        """Return every unfinished prompt."""
        return [r for r in self.prompts.values() if not r.finished]

    def busy(self, backend: str) -> bool:
        """Return True when a prompt submitted through the gateway runs on ``backend``."""
        return any(
            r.state is PromptState.RUNNING for r in self.prompts.values() if r.backend == backend
        )

    def stale_copies(self, backend: str) -> list[PromptRecord]:
        """Return prompts moved away from ``backend`` whose copy there must be cancelled."""
        return [
            r for r in self.prompts.values() if backend in r.cancel_pending and r.backend != backend
        ]

    # -- files -----------------------------------------------------------------------

    def output_seen(self, backend: str, ref: FileKey) -> None:
        """Remember that ``backend`` produced the (untagged) file reference ``ref``."""
        self.files[ref] = backend

    def file_owner(self, ref: FileKey) -> str | None:
        """Return the backend that produced a file, or None when unknown."""
        return self.files.get(ref)

    # -- websocket events ---------------------------------------------------------------

    def observe_event(self, backend: str, message: dict[str, Any]) -> PromptRecord | None:
        """Update prompt states from a websocket event; return the record it finished."""
        data = message.get("data")
        if not isinstance(data, dict):
            return None
        prompt_id = data.get("prompt_id")
        if not isinstance(prompt_id, str):
            return None
        record = self.prompts.get(prompt_id)
        if record is None:
            return None
        if record.backend != backend:
            if backend not in record.incoming or record.finished:
                return None  # an event from a stale copy is not this prompt's truth
            # A re-run's events came before the answer to its submission: it runs here now.
            self._move(record, backend)
            record.moved_early = backend
        kind = message.get("type")
        if kind == "execution_start":
            record.state = PromptState.RUNNING
        elif kind in TERMINAL_EVENTS or (kind == "executing" and data.get("node") is None):
            return self.finish(prompt_id)
        return None
