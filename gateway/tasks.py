"""Background tasks that are never lost.

``asyncio.create_task`` keeps only a weak reference to its task, so an unreferenced task can be
garbage-collected mid-flight. :func:`spawn` names every task and keeps a strong reference until it
finishes; exceptions other than cancellation are logged, never silently dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

T = TypeVar("T")

_log = structlog.get_logger("gateway.tasks")
_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Start ``coro`` as a named task and keep it referenced until it is done."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        _log.error("background task failed", task=task.get_name(), exc_info=exc)


def running_tasks() -> int:
    """Return how many spawned tasks are still running (for leak checks)."""
    return len(_running)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the given tasks and wait until each has finished."""
    live = [t for t in tasks if t is not None and not t.done()]
    for task in live:
        task.cancel()
    if live:
        await asyncio.gather(*live, return_exceptions=True)
