"""Job continuity: re-run what a failed backend lost, cancel what a thawed one still holds.

Rules, applied by one background task woken by health events and every ``interval`` seconds:

1. **Rescue.** A prompt accepted by a backend that is now down (or removed) and not finished is
   re-submitted, with the same ``prompt_id`` and body, to the best other backend (the serving one
   first). Its client's websocket is attached there first, so the re-run's events reach the same
   client socket. With ``failover.resubmit_lost_prompts`` off, or when the re-submission is
   refused (a 400 from ComfyUI) or no backend comes back within ``give_up_after`` seconds, the
   prompt is reported lost: an ``execution_error`` event (then ``executing`` with ``node: null``)
   for its ``prompt_id`` goes to its client, never silence.
2. **Reconcile.** For every backend that is up and holds unfinished prompts, ``GET /queue``; a
   prompt in neither the queue nor the history (``GET /history/{id}``) was lost by a restart and
   is re-run (on that backend or another); one found in the history is marked done.
3. **Cancel stale copies.** When a backend comes back (a frozen process thawed), the copies of
   prompts that were moved away from it are deleted from its queue and interrupted if running, so
   nothing runs twice for a client and nothing is delivered twice.

Nothing here blocks a request: all of it runs in the background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import structlog

from gateway.config.models import FailoverSettings
from gateway.events import Event
from gateway.jobs.comfy import AmbiguousFailure, ComfyRouter
from gateway.jobs.tracker import PromptRecord, PromptState
from gateway.registry import ServerRegistry, ServerState
from gateway.tasks import cancel_and_wait, spawn

log = structlog.get_logger("gateway.recovery")

_WAKE_KINDS = frozenset({"server.state", "serving.changed", "server.restarted", "config.applied"})


class JobRecovery:
    """The background task applying the rules of this module."""

    def __init__(
        self,
        *,
        registry: ServerRegistry,
        router: ComfyRouter,
        settings: Callable[[], FailoverSettings],
        interval: float = 1.0,
        give_up_after: float = 300.0,
    ) -> None:
        self.registry = registry
        self.router = router
        self.tracker = router.tracker
        self._settings = settings
        self.interval = interval
        self.give_up_after = give_up_after
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._orphaned_since: dict[str, float] = {}
        registry.events.add_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.kind in _WAKE_KINDS:
            self._wake.set()

    def wake(self) -> None:
        """Run a pass soon (tests and the admin API use it)."""
        self._wake.set()

    async def context(self, _app: Any = None) -> AsyncIterator[None]:
        """Run the task for the lifetime of an aiohttp application (a cleanup context)."""
        self._task = spawn(self._run(), name="job-recovery")
        yield
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.step()
            except Exception:  # one bad pass must not end job continuity
                log.exception("recovery pass failed")

    async def step(self) -> None:
        """Apply the three rules once."""
        unfinished = self.tracker.unfinished()
        for record in unfinished:
            if not self._backend_alive(record.backend):
                await self.rescue(record)
        for server in self.registry.servers:
            if self.registry.is_up(server.id):
                await self.cancel_stale_copies(server.id)
        busy = {r.backend for r in self.tracker.unfinished()}
        for server_id in busy:
            if self.registry.is_up(server_id):
                await self.reconcile(server_id)

    def _backend_alive(self, server_id: str) -> bool:
        server = self.registry.server(server_id)
        if server is None or not server.enabled:
            return False
        return self.registry.status(server_id).state is not ServerState.DOWN

    # -- rule 1 -------------------------------------------------------------------------

    async def rescue(self, record: PromptRecord) -> None:
        """Re-submit a prompt whose backend failed, or report it lost."""
        if record.finished:  # finished (or given up) while this pass was running
            self._orphaned_since.pop(record.prompt_id, None)
            return
        if not self._settings().resubmit_lost_prompts:
            await self.lose(record, f"backend {record.backend!r} failed and re-submission is off")
            return
        if record.body is None:
            await self.lose(record, "the prompt's body is no longer available")
            return
        started = self._orphaned_since.setdefault(record.prompt_id, time.monotonic())
        answer = await self.router.submit(
            dict(record.body), exclude=frozenset({record.backend}), rerun=record
        )
        if record.finished:  # its backend came back and finished it meanwhile: copy cancelled
            self._orphaned_since.pop(record.prompt_id, None)
            return
        if answer.status == 200:
            self._orphaned_since.pop(record.prompt_id, None)
            self._release_old_socket(record)
            log.warning(
                "prompt re-submitted after failover",
                prompt_id=record.prompt_id,
                server=self.tracker.owner(record.prompt_id),
                previous=record.previous_backends[-1:],
            )
            return
        if answer.status == 400:
            await self.lose(record, f"the new backend refused the prompt: {_text(answer.body)}")
        elif time.monotonic() - started > self.give_up_after:
            await self.lose(
                record, f"no backend could take the prompt within {self.give_up_after:.0f} s"
            )

    def _release_old_socket(self, record: PromptRecord) -> None:
        """Close the client's socket on the backend the prompt left, if nothing else runs there."""
        if not record.client_id or not record.previous_backends:
            return
        old = record.previous_backends[-1]
        if not any(r.client_id == record.client_id for r in self.tracker.unfinished_on(old)):
            self.router.relay.release_upstream(record.client_id, old)

    async def lose(self, record: PromptRecord, reason: str) -> None:
        """Give a prompt up and tell its client, so it never waits on silence."""
        self._orphaned_since.pop(record.prompt_id, None)
        if self.tracker.finish(record.prompt_id, PromptState.LOST) is None:
            return
        log.error("prompt lost", prompt_id=record.prompt_id, server=record.backend, reason=reason)
        self.router.events.publish(
            "prompt.lost", prompt_id=record.prompt_id, server=record.backend, reason=reason
        )
        if record.client_id:
            now = int(time.time() * 1000)
            await self.router.relay.send_to_client(
                record.client_id,
                {
                    "type": "execution_error",
                    "data": {
                        "prompt_id": record.prompt_id,
                        "node_id": None,
                        "node_type": None,
                        "executed": [],
                        "exception_message": f"comfyui-gateway: {reason}",
                        "exception_type": "GatewayError",
                        "traceback": [],
                        "current_inputs": {},
                        "current_outputs": [],
                        "timestamp": now,
                    },
                },
            )
            await self.router.relay.send_to_client(
                record.client_id,
                {
                    "type": "executing",
                    "data": {"node": None, "prompt_id": record.prompt_id},
                },
            )

    # -- rule 2 -------------------------------------------------------------------------

    async def reconcile(self, server_id: str) -> None:
        """Compare the unfinished prompts of a backend with its queue and history."""
        backend = self.router.pool.get(server_id)
        if backend is None:
            return
        asked_at = time.time()
        try:
            queue = await self.router._call(backend, "GET", "/queue", timeout=5.0)
        except (aiohttp.ClientError, AmbiguousFailure):
            return
        data = queue.json() if queue.status == 200 else None
        if not isinstance(data, dict):
            return
        queued = {
            item[1]
            for key in ("queue_running", "queue_pending")
            for item in data.get(key, [])
            if isinstance(item, list) and len(item) > 1
        }
        for record in self.tracker.unfinished_on(server_id):
            if record.prompt_id in queued or record.submitted_at >= asked_at:
                continue
            try:
                history = await self.router._call(
                    backend, "GET", f"/history/{record.prompt_id}", timeout=5.0
                )
            except (aiohttp.ClientError, AmbiguousFailure):
                return
            entry = history.json()
            if isinstance(entry, dict) and record.prompt_id in entry:
                if self.tracker.finish(record.prompt_id) is not None:
                    self.router.events.publish(
                        "prompt.completed", prompt_id=record.prompt_id, server=server_id
                    )
            elif history.status == 200:
                log.warning(
                    "backend lost a prompt (restarted?): re-running it",
                    prompt_id=record.prompt_id,
                    server=server_id,
                )
                await self._rerun(record)

    async def _rerun(self, record: PromptRecord) -> None:
        if not self._settings().resubmit_lost_prompts or record.body is None:
            await self.lose(record, f"backend {record.backend!r} lost the prompt (restart)")
            return
        answer = await self.router.submit(dict(record.body), rerun=record)
        if answer.status == 400:
            await self.lose(record, f"re-submission refused: {_text(answer.body)}")

    # -- rule 3 -------------------------------------------------------------------------

    async def cancel_stale_copies(self, server_id: str) -> None:
        """Delete or interrupt copies of moved prompts on a backend that came back."""
        backend = self.router.pool.get(server_id)
        stale = self.tracker.stale_copies(server_id)
        if backend is None or not stale:
            return
        ids = [r.prompt_id for r in stale]
        try:
            await self.router._call(
                backend, "POST", "/queue", json_body={"delete": ids}, timeout=5.0
            )
            for prompt_id in ids:
                await self.router._call(
                    backend, "POST", "/interrupt", json_body={"prompt_id": prompt_id}, timeout=5.0
                )
        except (aiohttp.ClientError, AmbiguousFailure):
            return
        for record in stale:
            record.cancel_pending.discard(server_id)
            self.router.events.publish(
                "prompt.copy_cancelled", prompt_id=record.prompt_id, server=server_id
            )
        log.info("cancelled stale prompt copies", server=server_id, count=len(ids))


def _text(body: bytes) -> str:
    return body[:500].decode("utf-8", "replace")
