"""A simulated ComfyUI 0.3.64 backend as an aiohttp application.

``create_fake_comfy_app(options)`` returns an app that speaks ComfyUI's HTTP and websocket API
(``/work/shared/comfyui-api.md``): same routes and ``/api`` twins, status codes, middlewares
(origin check, cache control), queue/history semantics, message order and binary frames. It
executes graphs made of a few real node types by simulating work and writing real small PNGs.

Extras that are not ComfyUI's:

* runtime knobs on :class:`FakeComfyState` (``delay_responses``, ``hang``, ``fail_status``,
  ``job_duration``, ``steps``), also settable with ``POST /__sim/control``;
* ``GET /__sim/state`` (executed prompt ids, boot id, queue) for tests in another process;
* ``system.fake_boot_id`` in ``/system_stats`` (changes on every restart);
* simulator nodes ``FailNode`` and ``FakeDelay``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import sys
import tempfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from gateway.testing.fake_files import MODEL_FOLDERS, add_file_routes, folder_paths
from gateway.testing.fake_frontend import (
    add_frontend_routes,
    add_static_routes,
    resolve_templates_root,
    resolve_web_root,
)
from gateway.testing.fake_nodes import (
    ALL_NODES,
    NodeEnv,
    node_info,
    object_info,
    validate_prompt,
)
from gateway.testing.fake_state import FakeComfyOptions, FakeComfyState, QueueItem, log
from gateway.testing.fake_userdata import add_user_routes
from gateway.testing.fake_worker import prompt_worker

__all__ = ["FAKE_STATE", "FakeComfyOptions", "FakeComfyState", "create_fake_comfy_app"]

FAKE_STATE: web.AppKey[FakeComfyState] = web.AppKey("fake_comfy_state", FakeComfyState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUIRED_FRONTEND_VERSION = "1.27.10"
TEMPLATES_VERSION = "0.1.95"
SIM_PREFIX = "/__sim/"

# --------------------------------------------------------------------------- middlewares

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@web.middleware
async def cache_control(request: web.Request, handler: Handler) -> web.StreamResponse:
    """middleware/cache_middleware.py, verbatim semantics."""
    response = await handler(request)
    path_filename = request.path.rsplit("/", 1)[-1]
    is_entry_point = path_filename.startswith("index") and path_filename.endswith(".json")
    if request.path.endswith((".js", ".css")) or is_entry_point:
        response.headers.setdefault("Cache-Control", "no-cache")
        return response
    if not request.path.lower().endswith(IMG_EXTENSIONS):
        return response
    if response.status == 404:
        response.headers.setdefault("Cache-Control", "public, max-age=3600")
    elif response.status in (200, 201, 202, 203, 204, 205, 206, 301, 308):
        response.headers.setdefault("Cache-Control", "public, max-age=86400")
    elif response.status in (302, 303, 307):
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


def is_loopback(host: str | None) -> bool:
    """server.py is_loopback without DNS: IP literals via ipaddress, ``localhost`` is loopback.

    Other names count as non-loopback (ComfyUI would resolve them with getaddrinfo).
    """
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@web.middleware
async def origin_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """server.py create_origin_only_middleware (comfyui-api.md §4.1), including OPTIONS → 200."""
    if "Host" in request.headers and "Origin" in request.headers:
        host_domain: str | None = request.headers["Host"].lower()
        parsed = urllib.parse.urlparse(request.headers["Origin"])
        origin_domain: str | None = parsed.netloc.lower()
        host_parsed = urllib.parse.urlsplit("//" + (host_domain or ""))
        loopback = is_loopback(host_parsed.hostname)
        if parsed.port is None:
            host_domain = host_parsed.hostname
        if host_parsed.port is None:
            origin_domain = parsed.hostname
        if loopback and host_domain and origin_domain and host_domain != origin_domain:
            log.warning(
                "WARNING: request with non matching host and origin %s != %s, returning 403",
                host_domain,
                origin_domain,
            )
            return web.Response(status=403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


def sim_knobs(state: FakeComfyState) -> Any:
    """Middleware applying ``hang``, ``delay_responses`` and ``fail_status`` (not to /__sim/)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(SIM_PREFIX):
            return await handler(request)
        if state.hang:
            await state.wait_unhung()
        if state.delay_responses > 0:
            await asyncio.sleep(state.delay_responses)
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if state.fail_status is not None and not upgrade:
            return web.Response(status=state.fail_status, text="simulated failure")
        return await handler(request)

    return middleware


# --------------------------------------------------------------------------- helpers


def node_env(state: FakeComfyState) -> NodeEnv:
    """The directories node schemas and validation look at."""
    return NodeEnv(
        input_dir=state.dirs.input,
        output_dir=state.dirs.output,
        temp_dir=state.dirs.temp,
        output_prefix=state.options.output_prefix,
    )


def _ram_total() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 * 1024**3


def build_system_stats(state: FakeComfyState, host: str, port: int) -> bytes:
    """The ``/system_stats`` body (§6 shape), built once per app; ``argv`` is realistic."""
    total = _ram_total()
    free = int(total * random.uniform(0.55, 0.9))  # per boot, not per call
    argv = [
        "main.py",
        "--cpu",
        "--listen",
        host,
        "--port",
        str(port),
        "--base-directory",
        str(state.data_dir),
        "--fake-backend-name",
        state.options.name,
    ]
    if state.options.max_upload_size != 104857600:
        argv += ["--max-upload-size", str(state.options.max_upload_size / (1024 * 1024))]
    stats = {
        "system": {
            "os": os.name,
            "ram_total": total,
            "ram_free": free,
            "comfyui_version": state.options.comfyui_version,
            "required_frontend_version": REQUIRED_FRONTEND_VERSION,
            "installed_templates_version": TEMPLATES_VERSION,
            "required_templates_version": TEMPLATES_VERSION,
            "python_version": sys.version,
            "pytorch_version": "2.9.1+cpu",
            "embedded_python": False,
            "argv": argv,
            "fake_boot_id": state.boot_id,
        },
        "devices": [
            {
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": total,
                "vram_free": free,
                "torch_vram_total": total,
                "torch_vram_free": free,
            }
        ],
    }
    return json.dumps(stats).encode()


def sim_state_json(state: FakeComfyState) -> dict[str, Any]:
    """Body of ``GET /__sim/state``."""
    return {
        "name": state.options.name,
        "boot_id": state.boot_id,
        "started_at": state.started_at,
        "executed_prompt_ids": list(state.executed_prompt_ids),
        "queue": {
            "running": [item[1] for item in state.queue.running_items()],
            "pending": [item[1] for item in state.queue.pending_items()],
        },
        "history_size": len(state.history),
        "number": state.number,
        "sockets": list(state.sockets),
        "data_dir": str(state.data_dir),
        "delay_responses": state.delay_responses,
        "hang": state.hang,
        "fail_status": state.fail_status,
        "job_duration": state.job_duration,
        "steps": state.steps,
    }


_CONTROL_FIELDS: dict[str, Callable[[Any], Any]] = {
    "delay_responses": float,
    "hang": bool,
    "fail_status": lambda v: None if v is None else int(v),
    "job_duration": float,
    "steps": lambda v: max(1, int(v)),
}


# --------------------------------------------------------------------------- core routes


def add_core_routes(routes: web.RouteTableDef, state: FakeComfyState) -> None:
    """server.py's own routes (websocket, queue, history, prompt, object_info, stats)."""

    @routes.get("/ws")
    async def websocket_handler(request: web.Request) -> web.StreamResponse:
        return await _websocket(request, state)

    stats_cache: dict[tuple[str, int], bytes] = {}

    @routes.get("/system_stats")
    async def system_stats(request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        key = (str(sockname[0]), int(sockname[1])) if sockname else ("127.0.0.1", 8188)
        body = stats_cache.get(key)
        if body is None:
            body = stats_cache[key] = build_system_stats(state, *key)
            state.system_stats_body = body
        return web.Response(body=body, content_type="application/json")

    @routes.get("/features")
    async def get_features(request: web.Request) -> web.StreamResponse:
        return web.json_response(state.server_features())

    @routes.get("/prompt")
    async def get_prompt(request: web.Request) -> web.StreamResponse:
        return web.json_response(state.queue_info())

    @routes.get("/object_info")
    async def get_object_info(request: web.Request) -> web.StreamResponse:
        return web.json_response(object_info(node_env(state)))

    @routes.get("/object_info/{node_class}")
    async def get_object_info_node(request: web.Request) -> web.StreamResponse:
        name = request.match_info["node_class"]
        out = {name: node_info(ALL_NODES[name], node_env(state))} if name in ALL_NODES else {}
        return web.json_response(out)

    @routes.get("/history")
    async def get_history(request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        return web.json_response(state.queue.get_history(max_items=max_items, offset=offset))

    @routes.get("/history/{prompt_id}")
    async def get_history_prompt_id(request: web.Request) -> web.StreamResponse:
        return web.json_response(state.queue.get_history(request.match_info["prompt_id"]))

    @routes.get("/queue")
    async def get_queue(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "queue_running": state.queue.running_items(),
                "queue_pending": state.queue.pending_items(),
            }
        )

    @routes.post("/prompt")
    async def post_prompt(request: web.Request) -> web.StreamResponse:
        state.log("got prompt")
        return await _post_prompt(await request.json(), state)

    @routes.post("/queue")
    async def post_queue(request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        if json_data.get("clear"):
            state.queue.wipe_queue()
        for id_to_delete in json_data.get("delete", []):
            state.queue.delete_queue_item(_has_prompt_id(id_to_delete))
        return web.Response(status=200)

    @routes.post("/interrupt")
    async def post_interrupt(request: web.Request) -> web.StreamResponse:
        try:
            json_data = await request.json()
        except json.JSONDecodeError:
            json_data = {}
        prompt_id = json_data.get("prompt_id")
        if prompt_id:
            if any(item[1] == prompt_id for item in state.queue.running_items()):
                state.log(f"Interrupting prompt {prompt_id}")
                state.interrupt_event.set()
            else:
                state.log(f"Prompt {prompt_id} is not currently running, skipping interrupt")
        else:
            state.log("Global interrupt (no prompt_id specified)")
            state.interrupt_event.set()
        return web.Response(status=200)

    @routes.post("/free")
    async def post_free(request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        for flag in ("unload_models", "free_memory"):
            if json_data.get(flag, False):
                state.queue.set_flag(flag, json_data[flag])
        return web.Response(status=200)

    @routes.post("/history")
    async def post_history(request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        if json_data.get("clear"):
            state.queue.wipe_history()
        for id_to_delete in json_data.get("delete", []):
            state.queue.delete_history_item(id_to_delete)
        return web.Response(status=200)


def _has_prompt_id(prompt_id: Any) -> Callable[[QueueItem], bool]:
    def predicate(item: QueueItem) -> bool:
        return bool(item[1] == prompt_id)

    return predicate


async def _post_prompt(json_data: Any, state: FakeComfyState) -> web.StreamResponse:
    """server.py post_prompt: number/front priority, validation, enqueue."""
    if not isinstance(json_data, dict):
        raise web.HTTPInternalServerError()
    number: float
    if "number" in json_data:
        number = float(json_data["number"])
    else:
        number = state.number
        if json_data.get("front"):
            number = -number
        state.number += 1
    if "prompt" not in json_data:
        error = {
            "type": "no_prompt",
            "message": "No prompt provided",
            "details": "No prompt provided",
            "extra_info": {},
        }
        return web.json_response({"error": error, "node_errors": {}}, status=400)
    prompt = json_data["prompt"]
    if not isinstance(prompt, dict):
        raise web.HTTPInternalServerError()
    prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
    partial = json_data.get("partial_execution_targets")
    result = validate_prompt(node_env(state), prompt, partial)
    extra_data = json_data.get("extra_data", {})
    if not isinstance(extra_data, dict):
        raise web.HTTPInternalServerError()
    if "client_id" in json_data:
        extra_data["client_id"] = json_data["client_id"]
    if not result.ok:
        state.log(f"invalid prompt: {result.error}")
        return web.json_response(
            {"error": result.error, "node_errors": result.node_errors}, status=400
        )
    state.queue.put((number, prompt_id, prompt, extra_data, result.outputs))
    return web.json_response(
        {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}
    )


async def _websocket(request: web.Request, state: FakeComfyState) -> web.StreamResponse:
    """server.py websocket_handler, including its deregistration bug (§3.1)."""
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    sid = request.rel_url.query.get("clientId", "")
    if sid:
        state.sockets.pop(sid, None)  # the old socket stays open, it just stops receiving
    else:
        sid = uuid.uuid4().hex
    state.sockets[sid] = ws
    state.sockets_metadata[sid] = {"feature_flags": {}}
    state.all_websockets.add(ws)
    try:
        await state.send("status", {"status": state.queue_info(), "sid": sid}, sid)
        if state.client_id == sid and state.last_node_id is not None:
            await state.send("executing", {"node": state.last_node_id}, sid)
        first_message = True
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                log.warning("ws connection closed with exception %s", ws.exception())
            elif msg.type == WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                    if first_message and data.get("type") == "feature_flags":
                        state.sockets_metadata[sid]["feature_flags"] = data.get("data", {})
                        await state.send("feature_flags", state.server_features(), sid)
                    first_message = False
                except json.JSONDecodeError:
                    log.warning("Invalid JSON received from client %s: %s", sid, msg.data)
                except Exception as e:
                    log.error("Error processing WebSocket message: %s", e)
    finally:
        # Unconditional, like ComfyUI: an old socket closing removes a newer registration.
        state.sockets.pop(sid, None)
        state.sockets_metadata.pop(sid, None)
        state.all_websockets.discard(ws)
    return ws


# --------------------------------------------------------------------------- internal & sim


def internal_app(state: FakeComfyState) -> web.Application:
    """The ``/internal`` sub-app (api_server/routes/internal/internal_routes.py); no /api twin."""
    routes = web.RouteTableDef()

    @routes.get("/logs")
    async def get_logs(request: web.Request) -> web.StreamResponse:
        return web.json_response("".join(e["t"] + " - " + e["m"] for e in state.log_entries))

    @routes.get("/logs/raw")
    async def get_raw_logs(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"entries": list(state.log_entries), "size": {"cols": 80, "rows": 24}}
        )

    @routes.patch("/logs/subscribe")
    async def subscribe_logs(request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        client_id = json_data["clientId"]
        if json_data["enabled"]:
            state.log_subscribers.add(client_id)
        else:
            state.log_subscribers.discard(client_id)
        return web.Response(status=200)

    @routes.get("/folder_paths")
    async def get_folder_paths(request: web.Request) -> web.StreamResponse:
        return web.json_response({name: folder_paths(state, name) for name in MODEL_FOLDERS})

    @routes.get("/files/{directory_type}")
    async def get_files(request: web.Request) -> web.StreamResponse:
        directory_type = request.match_info["directory_type"]
        if directory_type not in ("output", "input", "temp"):
            return web.json_response({"error": "Invalid directory type"}, status=400)
        directory = state.dirs.by_type(directory_type)
        assert directory is not None
        entries = [e for e in os.scandir(directory) if e.is_file()]
        entries.sort(key=lambda e: -e.stat().st_mtime)
        return web.json_response([e.name for e in entries])

    sub = web.Application()
    sub.add_routes(routes)
    return sub


def add_sim_routes(app: web.Application, state: FakeComfyState) -> None:
    """``POST /__sim/control`` and ``GET /__sim/state`` (simulator only, no /api twin)."""

    async def control(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not isinstance(body, dict) or set(body) - set(_CONTROL_FIELDS):
            unknown = sorted(set(body) - set(_CONTROL_FIELDS)) if isinstance(body, dict) else body
            return web.json_response({"error": f"unknown knobs: {unknown}"}, status=400)
        try:
            values = {key: _CONTROL_FIELDS[key](value) for key, value in body.items()}
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for key, value in values.items():
            setattr(state, key, value)
        return web.json_response(sim_state_json(state))

    async def get_state(request: web.Request) -> web.StreamResponse:
        return web.json_response(sim_state_json(state))

    app.router.add_post(SIM_PREFIX + "control", control)
    app.router.add_get(SIM_PREFIX + "state", get_state)


# --------------------------------------------------------------------------- lifecycle


async def _close_websockets(state: FakeComfyState) -> None:
    sockets = list(state.all_websockets)
    if not sockets:
        return
    loop = asyncio.get_running_loop()
    closers = [
        loop.create_task(ws.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutdown"))
        for ws in sockets
    ]
    _, pending = await asyncio.wait(closers, timeout=2.0)
    for task in pending:
        task.cancel()
    await asyncio.gather(*closers, return_exceptions=True)


def _lifecycle(state: FakeComfyState, scratch: tempfile.TemporaryDirectory[str]) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        name = state.options.name
        state.tasks.add(loop.create_task(prompt_worker(state), name=f"fake-comfy-{name}-worker"))
        state.tasks.add(loop.create_task(state.publish_loop(), name=f"fake-comfy-{name}-publish"))
        try:
            yield
        finally:
            tasks = list(state.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            state.tasks.clear()
            scratch.cleanup()
            state.cleanup_data_dir()

    return ctx


def create_fake_comfy_app(options: FakeComfyOptions | None = None) -> web.Application:
    """Build one simulated ComfyUI backend. Its state is ``app[FAKE_STATE]``.

    Directories are created immediately (a temporary data dir is removed on app cleanup); the
    worker and message publisher start with the app and are cancelled on cleanup.
    """
    options = options or FakeComfyOptions()
    state = FakeComfyState(options)
    scratch = tempfile.TemporaryDirectory(prefix=f"fake-comfy-web-{options.name}-")
    web_root = resolve_web_root(state, Path(scratch.name))
    templates_root = resolve_templates_root(Path(scratch.name))

    app = web.Application(
        client_max_size=options.max_upload_size,
        middlewares=[sim_knobs(state), cache_control, origin_only],
    )
    app[FAKE_STATE] = state
    add_sim_routes(app, state)

    routes = web.RouteTableDef()
    add_core_routes(routes, state)
    add_file_routes(routes, state)
    add_frontend_routes(routes, web_root)
    add_user_routes(routes, state)

    app.add_subapp("/internal", internal_app(state))
    api_routes = [
        web.route(r.method, "/api" + r.path, r.handler, **r.kwargs)
        for r in routes
        if isinstance(r, web.RouteDef)
    ]
    app.add_routes(api_routes)
    app.add_routes(routes)
    add_static_routes(app, web_root, templates_root)

    async def on_shutdown(app: web.Application) -> None:
        state.release_all()
        await _close_websockets(state)

    app.on_shutdown.append(on_shutdown)
    app.cleanup_ctx.append(_lifecycle(state, scratch))
    return app
