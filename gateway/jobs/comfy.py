"""ComfyUI-aware request routing: the requests that depend on one backend's state.

Which requests are special (shared/comfyui-api.md §7), and what the gateway does with them:

=====================================  ============================================================
``POST /prompt``                       mint ``prompt_id`` if absent; undo tagged output references
                                       in inputs; copy cached uploads it names to the target; open
                                       the client's websocket there *before* forwarding; retry on
                                       another backend only when the connection was refused; after
                                       an ambiguous failure, look for the prompt on that backend.
``GET /history/{id}``                  the owner backend; unknown: each backend, first non-empty
``GET /history``, ``/queue``,          merged across every reachable backend
``GET /prompt``
``POST /queue``, ``POST /history``     deletes go to the owners; ``clear`` goes to every backend
``POST /interrupt``                    with ``prompt_id``: its owner; without: where prompts run
``GET /view``                          the backend named by the tagged subfolder, else the file map,
                                       else each backend in turn (first answer that is not 404)
``POST /upload/image``, ``/mask``      spooled to disk, cached, forwarded to the serving backend (a
                                       mask goes where its original is)
=====================================  ============================================================

Every other request is forwarded unchanged to the serving backend. Output references relayed to
clients (``executed`` events, ``/history`` answers) are tagged with their backend
(:mod:`gateway.jobs.refs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from yarl import URL

from gateway.events import EventBus
from gateway.jobs import refs
from gateway.jobs.tracker import JobTracker, PromptRecord, PromptState
from gateway.jobs.uploads import CachedUpload, SpooledFile, UploadCache
from gateway.proxy.http import HttpForwarder, error_response
from gateway.proxy.upstream import Backend, BackendPool
from gateway.proxy.websocket import DROP, WsRelay, message_hook_keywords

log = structlog.get_logger("gateway.jobs")

MAX_JSON_BODY = 100 * 1024 * 1024
FANOUT_TIMEOUT = 10.0


class Exchange:
    """The answer of one backend to a small JSON request made by the gateway."""

    def __init__(self, status: int, body: bytes, headers: Any) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        """Return the parsed JSON body, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class AmbiguousFailure(Exception):
    """The request may or may not have reached the backend (timeout, reset after sending)."""


class ComfyRouter:
    """Answer the backend-state-dependent ComfyUI requests (see the module docstring)."""

    def __init__(
        self,
        *,
        pool: BackendPool,
        forwarder: HttpForwarder,
        relay: WsRelay,
        tracker: JobTracker,
        uploads: UploadCache,
        events: EventBus,
        candidates: Callable[[frozenset[str]], list[str]],
        reachable: Callable[[], list[str]],
        max_body_size: Callable[[], int],
    ) -> None:
        self.pool = pool
        self.forwarder = forwarder
        self.relay = relay
        self.tracker = tracker
        self.uploads = uploads
        self.events = events
        self._candidates = candidates
        self._reachable = reachable
        self._max_body_size = max_body_size
        self._routes: dict[tuple[str, str], Callable[[web.Request], Any]] = {
            ("POST", "/prompt"): self.post_prompt,
            ("GET", "/prompt"): self.get_prompt,
            ("GET", "/queue"): self.get_queue,
            ("POST", "/queue"): self.post_queue_or_history,
            ("GET", "/history"): self.get_history,
            ("POST", "/history"): self.post_queue_or_history,
            ("POST", "/interrupt"): self.post_interrupt,
            ("GET", "/view"): self.get_view,
            ("HEAD", "/view"): self.get_view,
            ("POST", "/upload/image"): self.post_upload,
            ("POST", "/upload/mask"): self.post_upload,
            ("PATCH", "/internal/logs/subscribe"): self.patch_logs_subscribe,
        }
        self.log_subscribers: dict[str, bool] = {}
        """clientId -> subscribed to a backend's log lines (replayed on a new backend)."""

    # -- dispatch ------------------------------------------------------------------------

    def handles(self, method: str, path: str) -> bool:
        """Return True when :meth:`__call__` may answer ``method path`` itself.

        ``path`` is the decoded path. The socket-level fast lane asks this to leave such
        requests to the full path (False means: plain forwarding to the serving backend).
        """
        bare = path[4:] if path.startswith("/api/") else path
        return (method, bare) in self._routes or (method == "GET" and bare.startswith("/history/"))

    async def __call__(self, request: web.Request) -> web.StreamResponse | None:
        """Answer ``request`` if it depends on backend state; return None to forward it."""
        path = request.path
        bare = path[4:] if path.startswith("/api/") else path
        handler = self._routes.get((request.method, bare))
        if handler is not None:
            return await handler(request)
        if request.method == "GET" and bare.startswith("/history/"):
            return await self.get_history_item(request, bare[len("/history/") :])
        return None

    # -- helpers ----------------------------------------------------------------------------

    def _backend(self, server_id: str | None) -> Backend | None:
        return self.pool.get(server_id) if server_id else None

    async def _call(
        self,
        backend: Backend,
        method: str,
        path_qs: str,
        *,
        request: web.Request | None = None,
        json_body: Any = None,
        data: Any = None,
        timeout: float | None = None,
    ) -> Exchange:
        """Make a small request to ``backend`` and read the whole answer.

        Raises ``aiohttp.ClientConnectorError`` when nothing was sent, :class:`AmbiguousFailure`
        when the request may have reached the backend.
        """
        if request is not None:
            headers = self.forwarder.upstream_headers(request, backend)
            for name in ("Content-Length", "Content-Type", "Content-Encoding"):
                headers.popall(name, None)
        else:
            headers = backend.auth_headers.copy()
        kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": False}
        if json_body is not None:
            kwargs["data"] = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            # The pooled sessions skip automatic Content-Type (the proxy copies the client's),
            # so a generated body must state its own (multipart boundary included).
            payload = data() if isinstance(data, aiohttp.FormData) else data
            if isinstance(payload, aiohttp.payload.Payload) and payload.content_type:
                headers["Content-Type"] = payload.content_type
            kwargs["data"] = payload
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with backend.session.request(method, backend.url(path_qs), **kwargs) as resp:
                return Exchange(resp.status, await resp.read(), resp.headers)
        except aiohttp.ClientConnectorError as exc:
            self.forwarder.observer.upstream_failed(backend.id, "connect", str(exc))
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            kind = (
                "timeout"
                if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
                else ("reset")
            )
            self.forwarder.observer.upstream_failed(backend.id, kind, repr(exc))
            raise AmbiguousFailure(f"{type(exc).__name__}: {exc}") from exc

    async def _fanout(
        self,
        method: str,
        path_qs: str,
        request: web.Request | None = None,
        json_body: Any = None,
        servers: list[str] | None = None,
    ) -> dict[str, Exchange]:
        """Send the same small request to several backends; return the answers that came."""
        targets = [
            b
            for s in (servers if servers is not None else self._reachable())
            if (b := self._backend(s)) is not None
        ]

        async def one(backend: Backend) -> tuple[str, Exchange | None]:
            try:
                return backend.id, await self._call(
                    backend,
                    method,
                    path_qs,
                    request=request,
                    json_body=json_body,
                    timeout=FANOUT_TIMEOUT,
                )
            except (aiohttp.ClientError, AmbiguousFailure, TimeoutError):
                return backend.id, None

        results = await asyncio.gather(*(one(b) for b in targets))
        return {server: ex for server, ex in results if ex is not None}

    async def _read_json_body(self, request: web.Request) -> tuple[bytes, Any]:
        limit = min(self._max_body_size(), MAX_JSON_BODY)
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        # Read to the end: ``content.read(n)`` returns what has arrived so far, which truncates
        # a body that comes in several TCP segments (a prompt with its workflow attached).
        buffer = bytearray()
        if request.body_exists:
            async for chunk in request.content.iter_any():
                buffer += chunk
                if len(buffer) > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(buffer))
        raw = bytes(buffer)
        try:
            return raw, json.loads(raw) if raw else None
        except ValueError:
            return raw, None

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        return web.json_response(data, status=status)

    @staticmethod
    def _relay(exchange: Exchange) -> web.Response:
        content_type = exchange.headers.get("Content-Type", "application/json")
        return web.Response(
            status=exchange.status, body=exchange.body, headers={"Content-Type": content_type}
        )

    # -- prompts -------------------------------------------------------------------------

    async def post_prompt(self, request: web.Request) -> web.StreamResponse:
        """Submit a prompt (see the module docstring)."""
        raw, body = await self._read_json_body(request)
        if not isinstance(body, dict):
            # Not JSON we understand: let ComfyUI produce its own error answer.
            return await self.forwarder.forward(request, self._picker(), body=raw)
        if not isinstance(body.get("prompt_id"), str) or not body["prompt_id"]:
            body["prompt_id"] = str(uuid.uuid4())
        graph, named = refs.untag_prompt_inputs(body.get("prompt"))
        body["prompt"] = graph
        preferred = [s for s in named if s in self._reachable()]
        result = await self.submit(body, request=request, prefer=preferred)
        return result

    def _next_backend(
        self, tried: set[str], prefer: list[str] | None = None, last: frozenset[str] = frozenset()
    ) -> Backend | None:
        """Return the next backend to try: ``prefer`` first, then the routing candidates;
        those in ``last`` only when nothing else is left."""
        order = [*(prefer or ()), *self._candidates(frozenset(tried))]
        order = [s for s in order if s not in last] + [s for s in order if s in last]
        return next(
            (b for s in order if s not in tried and (b := self._backend(s)) is not None), None
        )

    def _picker(self) -> Callable[[frozenset[str]], Backend | None]:
        """Return a picker for the plain forwarder over the routing candidates."""
        return lambda tried: self._next_backend(set(tried))

    async def submit(
        self,
        body: dict[str, Any],
        *,
        request: web.Request | None = None,
        prefer: list[str] | None = None,
        exclude: frozenset[str] = frozenset(),
        path: str = "/prompt",
        rerun: PromptRecord | None = None,
    ) -> web.Response:
        """Send a prompt body to the best backend; record it; return ComfyUI's answer.

        ``rerun`` is the record of the prompt this submission re-runs (recovery). When that
        prompt finished while the copy was on its way (its backend came back and completed it),
        the copy just placed is cancelled at once and 409 ``prompt_finished`` is returned: the
        prompt must neither run nor be delivered twice.
        """
        prompt_id: str = body["prompt_id"]
        client_id = body.get("client_id") if isinstance(body.get("client_id"), str) else None
        tried: set[str] = set(exclude)
        last_error = "no ComfyUI backend is available"
        # A re-run goes preferably where the prompt never was: a backend it left may still hold
        # a copy, and two runs of one prompt_id on one backend cannot be told apart.
        visited = frozenset(rerun.previous_backends) | {rerun.backend} if rerun else frozenset()
        while True:
            backend = self._next_backend(tried, prefer, visited)
            if backend is None:
                status = 503 if not tried - exclude else 502
                return error_response(
                    status,
                    "no_backend_available" if status == 503 else "upstream_unreachable",
                    last_error,
                )
            tried.add(backend.id)
            if rerun is not None and not await self._clear_of_copies(rerun, backend):
                last_error = f"backend {backend.id!r} still holds an earlier copy of the prompt"
                continue
            # The client's socket there stays open until the prompt is recorded (or refused):
            # a serving change in between must not close it, or the prompt's events are lost.
            with (
                self.relay.pinned(client_id, backend.id),
                self._incoming(rerun, backend.id, earlier_copy=backend.id in visited),
            ):
                await self.prepare_backend(backend, body, client_id)
                try:
                    exchange = await self._call(
                        backend, "POST", path, request=request, json_body=body
                    )
                except aiohttp.ClientConnectorError as exc:
                    last_error = f"could not connect to backend {backend.id!r}: {exc}"
                    continue  # nothing was sent: another backend is safe
                except AmbiguousFailure as exc:
                    found = await self.reconcile(backend, prompt_id)
                    if found is None:
                        return error_response(
                            502,
                            "upstream_ambiguous",
                            f"backend {backend.id!r} failed while accepting the prompt ({exc}); "
                            "whether it was queued could not be determined",
                            backend.id,
                            prompt_id=prompt_id,
                        )
                    if not found:
                        last_error = f"backend {backend.id!r} failed before queueing: {exc}"
                        continue  # confirmed absent: safe to submit elsewhere
                    if (late := await self._late_copy(rerun, backend)) is not None:
                        return late
                    self._accepted(prompt_id, backend.id, client_id, body)
                    return self._json({"prompt_id": prompt_id, "number": 0, "node_errors": {}})
                if exchange.status == 200:
                    if (late := await self._late_copy(rerun, backend)) is not None:
                        return late
                    self._accepted(prompt_id, backend.id, client_id, body)
                return self._relay(exchange)

    @staticmethod
    @contextlib.contextmanager
    def _incoming(
        rerun: PromptRecord | None, backend_id: str, *, earlier_copy: bool
    ) -> Iterator[None]:
        """While a re-run is submitted to ``backend_id``, its events from there are its own: a
        backend may run a prompt (and send every event of it) before its answer arrives.

        ``earlier_copy``: the backend ran the prompt before; its events count only from the
        re-run's ``execution_start`` on (see ``PromptRecord.awaiting_start``).
        """
        if rerun is None:
            yield
            return
        rerun.incoming.add(backend_id)
        if earlier_copy:
            rerun.awaiting_start.add(backend_id)
        try:
            yield
        finally:
            rerun.incoming.discard(backend_id)
            if rerun.backend != backend_id:  # not placed there after all
                rerun.awaiting_start.discard(backend_id)

    async def _late_copy(self, rerun: PromptRecord | None, backend: Backend) -> web.Response | None:
        """Cancel a re-run copy accepted after its prompt finished; None when still wanted."""
        if rerun is None or not rerun.finished or rerun.backend == backend.id:
            return None  # not a re-run, still wanted, or it finished right here
        if not await self.cancel_copy(backend, rerun.prompt_id):
            rerun.cancel_pending.add(backend.id)  # recovery retries when the backend answers
        return error_response(
            409,
            "prompt_finished",
            f"prompt {rerun.prompt_id!r} finished while it was being re-submitted; the copy "
            f"on backend {backend.id!r} is cancelled",
            backend.id,
            prompt_id=rerun.prompt_id,
        )

    async def cancel_copy(self, backend: Backend, prompt_id: str) -> bool:
        """Delete a prompt from a backend's queue and interrupt it if it runs there."""
        if not await self._cancel(backend, prompt_id):
            return False
        self.events.publish("prompt.copy_cancelled", prompt_id=prompt_id, server=backend.id)
        return True

    async def _cancel(self, backend: Backend, prompt_id: str) -> bool:
        try:
            for path, body in (
                ("/queue", {"delete": [prompt_id]}),
                ("/interrupt", {"prompt_id": prompt_id}),
            ):
                await self._call(backend, "POST", path, json_body=body, timeout=FANOUT_TIMEOUT)
        except (aiohttp.ClientError, AmbiguousFailure, TimeoutError):
            return False
        return True

    async def _clear_of_copies(self, record: PromptRecord, backend: Backend) -> bool:
        """Before a re-run goes to ``backend``: make sure no earlier copy of it is still there.

        A backend the prompt left may still queue or run it (frozen, then thawed): its copy is
        cancelled and the re-run goes there only once its queue no longer shows the prompt
        (ComfyUI events carry the prompt_id only, so two runs there would look like one).
        """
        if backend.id not in record.cancel_pending and backend.id not in record.previous_backends:
            return True
        pending = backend.id in record.cancel_pending
        if not await (self.cancel_copy if pending else self._cancel)(backend, record.prompt_id):
            return False
        record.cancel_pending.discard(backend.id)
        try:
            queue = await self._call(backend, "GET", "/queue", timeout=FANOUT_TIMEOUT)
        except (aiohttp.ClientError, AmbiguousFailure):
            return False
        data = queue.json() if queue.status == 200 else None
        if not isinstance(data, dict):
            return False
        return not any(
            isinstance(item, list) and len(item) > 1 and item[1] == record.prompt_id
            for key in ("queue_running", "queue_pending")
            for item in data.get(key, [])
        )

    def _accepted(
        self, prompt_id: str, backend: str, client_id: str | None, body: dict[str, Any]
    ) -> None:
        record = self.tracker.submitted(prompt_id, backend, client_id, body)
        kind = "prompt.submitted" if record.attempts == 1 else "prompt.resubmitted"
        self.events.publish(kind, prompt_id=prompt_id, server=backend, attempts=record.attempts)

    async def prepare_backend(
        self, backend: Backend, body: dict[str, Any], client_id: str | None
    ) -> None:
        """Before a prompt goes to ``backend``: copy its inputs there, attach the client ws."""
        for entry in self.uploads.inputs_of(body.get("prompt")):
            if backend.id not in entry.present_on:
                await self.replicate(entry, backend)
        if client_id:
            await self.relay.ensure_upstream(client_id, backend.id)

    async def replicate(self, entry: CachedUpload, backend: Backend) -> bool:
        """Upload a cached input file to ``backend`` under the same name."""
        kind, subfolder, name = entry.key
        form = aiohttp.FormData()
        form.add_field("type", kind)
        form.add_field("subfolder", subfolder)
        form.add_field("overwrite", "true")
        with entry.file.path.open("rb") as handle:
            form.add_field("image", handle, filename=name, content_type=entry.file.content_type)
            try:
                exchange = await self._call(backend, "POST", "/upload/image", data=form)
            except (aiohttp.ClientError, AmbiguousFailure) as exc:
                log.warning(
                    "upload replication failed", server=backend.id, file=name, error=str(exc)
                )
                return False
        if exchange.status == 200:
            entry.present_on.add(backend.id)
            self.events.publish("upload.replicated", server=backend.id, bytes=entry.file.size)
            return True
        log.warning("upload replication refused", server=backend.id, status=exchange.status)
        return False

    async def reconcile(self, backend: Backend, prompt_id: str) -> bool | None:
        """Return whether ``backend`` holds ``prompt_id`` (queue or history); None if unknown."""
        try:
            queue = await self._call(backend, "GET", "/queue", timeout=FANOUT_TIMEOUT)
            history = await self._call(
                backend, "GET", f"/history/{prompt_id}", timeout=FANOUT_TIMEOUT
            )
        except (aiohttp.ClientError, AmbiguousFailure):
            return None
        data = queue.json() or {}
        for item in (*data.get("queue_running", []), *data.get("queue_pending", [])):
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                return True
        entry = history.json()
        return bool(isinstance(entry, dict) and prompt_id in entry)

    async def get_prompt(self, request: web.Request) -> web.StreamResponse:
        """``GET /prompt``: the queue length summed over every reachable backend."""
        answers = await self._fanout("GET", "/prompt", request)
        total = 0
        for exchange in answers.values():
            data = exchange.json() or {}
            total += int(data.get("exec_info", {}).get("queue_remaining", 0) or 0)
        if not answers:
            return error_response(503, "no_backend_available", "no ComfyUI backend answered")
        return self._json({"exec_info": {"queue_remaining": total}})

    async def get_queue(self, request: web.Request) -> web.StreamResponse:
        """``GET /queue``: running and pending items of every reachable backend."""
        answers = await self._fanout("GET", "/queue", request)
        if not answers:
            return error_response(503, "no_backend_available", "no ComfyUI backend answered")
        running: list[Any] = []
        pending: list[Any] = []
        for server in self._ordered(answers):
            data = answers[server].json() or {}
            running.extend(self._live_items(server, data.get("queue_running", [])))
            pending.extend(self._live_items(server, data.get("queue_pending", [])))
        return self._json({"queue_running": running, "queue_pending": pending})

    def _live_items(self, server: str, items: Any) -> list[Any]:
        """Drop stale copies: items whose prompt the gateway moved to another backend."""
        if not isinstance(items, list):
            return []
        kept = []
        for item in items:
            prompt_id = item[1] if isinstance(item, list) and len(item) > 1 else None
            owner = self.tracker.owner(prompt_id) if isinstance(prompt_id, str) else None
            if owner is None or owner == server:
                kept.append(item)
        return kept

    def _ordered(self, answers: dict[str, Any]) -> list[str]:
        order = self._candidates(frozenset())
        return [s for s in order if s in answers] + [s for s in answers if s not in order]

    async def get_history(self, request: web.Request) -> web.StreamResponse:
        """``GET /history``: every reachable backend's history, merged, tagged."""
        answers = await self._fanout("GET", "/history" + _query(request), request)
        if not answers:
            return error_response(503, "no_backend_available", "no ComfyUI backend answered")
        merged: list[tuple[float, str, Any]] = []
        for server, exchange in answers.items():
            data = exchange.json()
            if not isinstance(data, dict):
                continue
            for prompt_id, entry in refs.tag_history(server, self._learn(server, data)).items():
                owner = self.tracker.owner(prompt_id)
                if owner is not None and owner != server:
                    continue  # a stale copy on a backend the prompt was moved away from
                merged.append((_started_at(entry), prompt_id, entry))
        merged.sort(key=lambda item: item[0])
        max_items = _int(request.query.get("max_items"))
        if max_items is not None and max_items >= 0:
            merged = merged[-max_items:] if max_items else []
        return self._json({prompt_id: entry for _, prompt_id, entry in merged})

    def _learn(self, server: str, history: dict[str, Any]) -> dict[str, Any]:
        """Remember which backend produced the files a history answer lists."""
        for entry in history.values():
            outputs = entry.get("outputs") if isinstance(entry, dict) else None
            if isinstance(outputs, dict):
                for out in outputs.values():
                    for ref in refs.file_refs(out):
                        self.tracker.output_seen(server, ref)
        return history

    async def get_history_item(self, request: web.Request, prompt_id: str) -> web.StreamResponse:
        """``GET /history/{id}``: asked of the owner first, then of every backend."""
        owner = self.tracker.owner(prompt_id)
        if owner is not None and (backend := self._backend(owner)) is not None:
            with contextlib.suppress(aiohttp.ClientError, AmbiguousFailure):
                exchange = await self._call(
                    backend, "GET", request.raw_path, request=request, timeout=FANOUT_TIMEOUT
                )
                data = exchange.json()
                if exchange.status == 200 and isinstance(data, dict) and data:
                    return self._json(refs.tag_history(owner, self._learn(owner, data)))
        others = [s for s in self._reachable() if s != owner]
        answers = await self._fanout("GET", request.raw_path, request, servers=others)
        for server in self._ordered(answers):
            data = answers[server].json()
            if answers[server].status == 200 and isinstance(data, dict) and data:
                return self._json(refs.tag_history(server, self._learn(server, data)))
        if not answers and owner is None:
            return error_response(503, "no_backend_available", "no ComfyUI backend answered")
        return self._json({})

    async def post_queue_or_history(self, request: web.Request) -> web.StreamResponse:
        """``POST /queue`` or ``POST /history``: deletes to owners, ``clear`` to all."""
        raw, body = await self._read_json_body(request)
        if not isinstance(body, dict):
            return await self.forwarder.forward(request, self._picker(), body=raw)
        path = request.raw_path
        is_queue = request.path.endswith("/queue")
        if body.get("clear"):
            await self._fanout("POST", path, request, json_body={"clear": True})
            if is_queue:  # cleared prompts must not be "rescued" later
                for record in self.tracker.unfinished():
                    if record.state is PromptState.QUEUED:
                        self.tracker.finish(record.prompt_id, PromptState.LOST)
        deletes = body.get("delete")
        if isinstance(deletes, list):
            by_owner: dict[str | None, list[Any]] = {}
            for prompt_id in deletes:
                if is_queue and isinstance(prompt_id, str):
                    record = self.tracker.record(prompt_id)
                    if record is not None and record.state is PromptState.QUEUED:
                        self.tracker.finish(prompt_id, PromptState.LOST)
                owner = self.tracker.owner(prompt_id) if isinstance(prompt_id, str) else None
                by_owner.setdefault(owner, []).append(prompt_id)
            for owner, ids in by_owner.items():
                servers = [owner] if owner else None
                await self._fanout(
                    "POST", path, request, json_body={"delete": ids}, servers=servers
                )
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.StreamResponse:
        """``POST /interrupt``: the owner of ``prompt_id``, else backends running prompts."""
        raw, body = await self._read_json_body(request)
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if isinstance(prompt_id, str):
            owner = self.tracker.owner(prompt_id)
            servers = [owner] if owner else None
            await self._fanout(
                "POST",
                request.raw_path,
                request,
                json_body={"prompt_id": prompt_id},
                servers=servers,
            )
            return web.Response(status=200)
        running = sorted(
            {r.backend for r in self.tracker.unfinished() if r.state is PromptState.RUNNING}
        )
        targets = running or self._candidates(frozenset())[:1]
        await self._fanout(
            "POST", request.raw_path, request, json_body=body if raw else None, servers=targets
        )
        return web.Response(status=200)

    # -- files -------------------------------------------------------------------------

    async def get_view(self, request: web.Request) -> web.StreamResponse:
        """``GET /view``: route by the tagged subfolder, the file map, or ask each backend."""
        query = request.url.query
        filename = query.get("filename", "")
        kind = query.get("type", "output")
        backend_id, subfolder = refs.untag_subfolder(query.get("subfolder", ""))
        path_qs = request.raw_path
        if backend_id is not None:
            new_query = query.copy()
            new_query["subfolder"] = subfolder
            path_qs = str(URL.build(path=request.path, query=new_query, encoded=False))
            backend = self._backend(backend_id)
            if backend is None:
                return error_response(
                    404, "unknown_backend", f"the file's backend {backend_id!r} is not configured"
                )
            return await self.forwarder.forward(request, _once(backend), path_qs=path_qs)
        name = filename.rsplit(" [", 1)[0] if filename.endswith("]") else filename
        owner = self.tracker.file_owner((name, subfolder, kind))
        order = (
            ([owner] if owner else [])
            + [s for s in self._candidates(frozenset()) if s != owner]
            + [s for s in self._reachable() if s != owner]
        )
        seen: list[str] = []
        response: web.StreamResponse | None = None
        for server_id in order:
            if server_id in seen or (backend := self._backend(server_id)) is None:
                continue
            seen.append(server_id)
            response = await self.forwarder.forward(request, _once(backend), path_qs=path_qs)
            if response.status != 404 or response.prepared:
                return response
        return response or error_response(
            503, "no_backend_available", "no ComfyUI backend is available"
        )

    async def post_upload(self, request: web.Request) -> web.StreamResponse:
        """``POST /upload/image|mask``: spool, forward to one backend, cache the input."""
        if not request.content_type.startswith("multipart/"):
            return await self.forwarder.forward(request, self._picker())
        limit = self._max_body_size()
        if request.content_length is not None and request.content_length > limit:
            return error_response(
                413, "request_too_large", f"upload exceeds the gateway limit of {limit} bytes"
            )
        fields: list[tuple[str, str]] = []
        spooled: SpooledFile | None = None
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                if part.name == "image" and part.filename is not None and spooled is None:
                    spooled = await self.uploads.spool(part, limit)
                else:
                    fields.append((part.name or "", await _read_field(part, limit)))
        except (ValueError, BadHttpMessage) as exc:
            # BadHttpMessage: a malformed multipart body (e.g. a "line" longer than aiohttp reads).
            if spooled is not None:
                self.uploads.discard(spooled)
            return error_response(413 if "exceeds" in str(exc) else 400, "bad_upload", str(exc))
        cached = False
        try:
            response, cached = await self._forward_upload(request, fields, spooled)
            return response
        finally:
            if spooled is not None and not cached:
                self.uploads.discard(spooled)

    async def _forward_upload(
        self, request: web.Request, fields: list[tuple[str, str]], spooled: SpooledFile | None
    ) -> tuple[web.StreamResponse, bool]:
        """Forward a spooled upload; return the answer and whether the file is now cached."""
        prefer: list[str] = []
        out_fields: list[tuple[str, str]] = []
        for name, value in fields:
            if name == "original_ref":
                value, owner = _untag_original_ref(value)
                if owner:
                    prefer.append(owner)
            out_fields.append((name, value))
        tried: set[str] = set()
        while True:
            backend = self._next_backend(tried, prefer)
            if backend is None:
                return error_response(
                    503, "no_backend_available", "no ComfyUI backend is available for the upload"
                ), False
            tried.add(backend.id)
            form = aiohttp.FormData()
            for name, value in out_fields:
                form.add_field(name, value)
            handle = None
            if spooled is not None:
                handle = spooled.path.open("rb")
                form.add_field(
                    "image", handle, filename=spooled.filename, content_type=spooled.content_type
                )
            try:
                exchange = await self._call(
                    backend, "POST", request.raw_path, request=request, data=form
                )
            except aiohttp.ClientConnectorError:
                continue
            except AmbiguousFailure as exc:
                return error_response(502, "upstream_reset", str(exc), backend.id), False
            finally:
                if handle is not None:
                    handle.close()
            cached = (
                exchange.status == 200
                and spooled is not None
                and self._remember_upload(backend.id, exchange, spooled)
            )
            return self._relay(exchange), cached

    def _remember_upload(self, server: str, exchange: Exchange, spooled: SpooledFile) -> bool:
        data = exchange.json()
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return False
        key = (str(data.get("type") or "input"), str(data.get("subfolder") or ""), data["name"])
        if key[0] != "input":
            return False
        self.uploads.add(key, spooled, server)
        self.events.publish(
            "uploads.cache", bytes=self.uploads.total_bytes, entries=len(self.uploads)
        )
        return True

    # -- log subscriptions -----------------------------------------------------------------

    async def patch_logs_subscribe(self, request: web.Request) -> web.StreamResponse:
        """Forward a log subscription and remember it, to replay it on the next backend."""
        raw, body = await self._read_json_body(request)
        if isinstance(body, dict) and isinstance(body.get("clientId"), str):
            client_id = body["clientId"]
            if body.get("enabled"):
                self.log_subscribers[client_id] = True
            else:
                self.log_subscribers.pop(client_id, None)
        return await self.forwarder.forward(request, self._picker(), body=raw)

    async def on_ws_attach(self, client_id: str, backend_id: str) -> None:
        """Replay a client's log subscription on the backend its socket moved to."""
        backend = self._backend(backend_id)
        if backend is None or not self.log_subscribers.get(client_id):
            return
        with contextlib.suppress(aiohttp.ClientError, AmbiguousFailure):
            await self._call(
                backend,
                "PATCH",
                "/internal/logs/subscribe",
                json_body={"clientId": client_id, "enabled": True},
                timeout=FANOUT_TIMEOUT,
            )

    # -- websocket hook -------------------------------------------------------------------

    @message_hook_keywords('"prompt_id"', '"executed"')
    def on_ws_message(
        self, client_id: str, backend_id: str, message: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Track prompt progress from a relayed event; tag output references in it.

        Events of a stale copy (a prompt the gateway moved to another backend) are dropped, so
        a client never hears about one prompt twice. Only messages with a ``prompt_id`` or of
        type ``executed`` matter here: the relay does not parse the others for this hook (it
        looks for the keywords as they appear in ComfyUI's JSON, unescaped).
        """
        data = message.get("data")
        if isinstance(data, dict) and isinstance(data.get("prompt_id"), str):
            record = self.tracker.record(data["prompt_id"])
            if record is not None and backend_id in record.awaiting_start:
                if message.get("type") != "execution_start":
                    return DROP  # what an earlier copy there still had to say
                record.awaiting_start.discard(backend_id)
            if (
                record is not None
                and record.backend != backend_id
                and (backend_id not in record.incoming or record.finished)
            ):
                return DROP
        finished = self.tracker.observe_event(backend_id, message)
        if finished is not None:
            self.events.publish("prompt.completed", prompt_id=finished.prompt_id, server=backend_id)
        if message.get("type") != "executed":
            return None
        data = message.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("output"), dict):
            return None
        for ref in refs.file_refs(data["output"]):
            self.tracker.output_seen(backend_id, ref)
        return {**message, "data": {**data, "output": refs.tag_outputs(backend_id, data["output"])}}


MAX_FORM_FIELD = 1024 * 1024
"""Largest non-file field of an upload form (``type``, ``subfolder``, ``original_ref``...)."""


async def _read_field(part: aiohttp.BodyPartReader, limit: int) -> str:
    """Read a text field of a multipart form, bounded (``part.text()`` reads without limit).

    The bytes are taken as sent (form fields carry no transfer or content encoding in practice;
    decompressing one could also outgrow the bound).
    """
    cap = min(limit, MAX_FORM_FIELD)
    data = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        data += chunk
        if len(data) > cap:
            raise ValueError(f"form field {part.name!r} exceeds {cap} bytes")
    return bytes(data).decode(part.get_charset(default="utf-8"))  # UnicodeDecodeError: 400


def _once(backend: Backend):  # type: ignore[no-untyped-def]
    def pick(tried: frozenset[str]) -> Backend | None:
        return None if backend.id in tried else backend

    return pick


def _query(request: web.Request) -> str:
    return "?" + request.query_string if request.query_string else ""


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _started_at(entry: Any) -> float:
    """Return the ``execution_start`` timestamp of a history entry (0 when unknown)."""
    try:
        for kind, data in entry["status"]["messages"]:
            if kind == "execution_start":
                return float(data.get("timestamp", 0))
    except (KeyError, TypeError, ValueError):
        pass
    return 0.0


def _untag_original_ref(value: str) -> tuple[str, str | None]:
    """Undo the tag in ``/upload/mask``'s ``original_ref`` JSON; return it and the backend."""
    try:
        ref = json.loads(value)
    except ValueError:
        return value, None
    if not isinstance(ref, dict) or not isinstance(ref.get("subfolder", ""), str):
        return value, None
    backend_id, subfolder = refs.untag_subfolder(ref.get("subfolder", ""))
    if backend_id is None:
        return value, None
    return json.dumps({**ref, "subfolder": subfolder}), backend_id
