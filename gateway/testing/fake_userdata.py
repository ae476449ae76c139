"""User, settings and userdata routes (ports of ``app/user_manager.py`` and ``app_settings.py``).

Single-user mode only (ComfyUI's default): every request is user ``default``; ``Comfy-User`` is
ignored. ``{file}`` is taken from ``match_info`` (aiohttp has already decoded ``%2F``) and, like
ComfyUI, unquoted once more when it still contains ``%``.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import re
import shutil
import uuid
from typing import Any
from urllib import parse

from aiohttp import web

from gateway.testing.fake_state import FakeComfyState

DEFAULT_USER = "default"


def file_info(path: str, relative_to: str) -> dict[str, Any]:
    """user_manager.get_file_info."""
    return {
        "path": os.path.relpath(path, relative_to).replace(os.sep, "/"),
        "size": os.path.getsize(path),
        "modified": os.path.getmtime(path),
        "created": os.path.getctime(path),
    }


def user_filepath(
    state: FakeComfyState, file: str | None, *, create_dir: bool = True
) -> str | None:
    """UserManager.get_request_user_filepath for the default user; None on a path escape."""
    root_dir = state.dirs.user
    path = user_root = os.path.abspath(os.path.join(root_dir, DEFAULT_USER))
    if os.path.commonpath((root_dir, user_root)) != root_dir:
        return None
    if file is not None:
        if "%" in file:
            file = parse.unquote(file)
        path = os.path.abspath(os.path.join(user_root, file))
        if os.path.commonpath((user_root, path)) != user_root:
            return None
    parent = os.path.split(path)[0]
    if create_dir and not os.path.exists(parent):
        os.makedirs(parent, exist_ok=True)
    return path


def _settings_path(state: FakeComfyState) -> str:
    path = user_filepath(state, "comfy.settings.json")
    assert path is not None
    return path


def load_settings(state: FakeComfyState) -> dict[str, Any]:
    """AppSettings.get_settings (``{}`` when missing or corrupted)."""
    path = _settings_path(state)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(state: FakeComfyState, settings: dict[str, Any]) -> None:
    """AppSettings.save_settings (indent 4, like ComfyUI)."""
    with open(_settings_path(state), "w") as fh:
        fh.write(json.dumps(settings, indent=4))


def _list_v2(base: str, target: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for root, dirs, files in os.walk(target, topdown=True):
        for name in dirs:
            rel = os.path.relpath(os.path.join(root, name), base).replace(os.sep, "/")
            results.append({"name": name, "path": rel, "type": "directory"})
        for name in files:
            full = os.path.join(root, name)
            entry: dict[str, Any] = {
                "name": name,
                "path": os.path.relpath(full, base).replace(os.sep, "/"),
                "type": "file",
            }
            try:
                st = os.stat(full)
                entry["size"] = st.st_size
                entry["modified"] = st.st_mtime
            except OSError:
                pass
            results.append(entry)
    results.sort(key=lambda x: (x["type"] != "directory", x["name"].lower()))
    return results


def _write_file(path: str, body: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(body)


def list_userdata(state: FakeComfyState, query: Any) -> web.Response:
    """``GET /userdata?dir=&recurse=&full_info=&split=``."""
    directory = query.get("dir", "")
    if not directory:
        return web.Response(status=400, text="Directory not provided")
    path = user_filepath(state, directory)
    if not path:
        return web.Response(status=403, text="Invalid directory")
    if not os.path.exists(path):
        return web.Response(status=404, text="Directory not found")
    recurse = query.get("recurse", "").lower() == "true"
    full_info = query.get("full_info", "").lower() == "true"
    split_path = query.get("split", "").lower() == "true"
    parts = ("**", "*") if recurse else ("*",)
    results: list[Any] = []
    for full_path in glob.glob(os.path.join(glob.escape(path), *parts), recursive=recurse):
        if not os.path.isfile(full_path):
            continue
        if full_info:
            results.append(file_info(full_path, path))
            continue
        rel = os.path.relpath(full_path, path).replace(os.sep, "/")
        results.append([rel, *rel.split("/")] if split_path else rel)
    return web.json_response(results)


def list_userdata_v2(state: FakeComfyState, requested: str) -> web.Response:
    """``GET /v2/userdata?path=``: directories first, then files."""
    requested = parse.unquote(requested)
    base = user_filepath(state, None, create_dir=False)
    target = user_filepath(state, requested, create_dir=False) if requested else base
    if not target or not base:
        return web.Response(status=400, text="Invalid path requested")
    if not os.path.exists(target):
        if target == base:
            return web.json_response([])
        return web.Response(status=404, text="Requested path not found")
    if not os.path.isdir(target):
        return web.Response(status=400, text="Requested path is not a directory")
    return web.json_response(_list_v2(base, target))


def data_path(
    state: FakeComfyState, request: web.Request, *, check_exists: bool, param: str = "file"
) -> str | web.Response:
    """user_manager get_user_data_path: the file path, or the error response (400/403/404)."""
    file = request.match_info.get(param)
    if not file:
        return web.Response(status=400)
    path = user_filepath(state, file)
    if not path:
        return web.Response(status=403)
    if check_exists and not os.path.exists(path):
        return web.Response(status=404)
    return path


def _path_answer(state: FakeComfyState, path: str, full_info: bool) -> web.Response:
    user_path = user_filepath(state, None)
    assert user_path is not None
    if full_info:
        return web.json_response(file_info(path, user_path))
    return web.json_response(os.path.relpath(path, user_path))


def write_userdata(
    state: FakeComfyState, path: str, body: bytes, overwrite: bool, full_info: bool
) -> web.Response:
    """``POST /userdata/{file}`` after the body was read (409 when it exists and not overwrite)."""
    if not overwrite and os.path.exists(path):
        return web.Response(status=409, text="File already exists")
    try:
        _write_file(path, body)
    except OSError:
        return web.Response(
            status=400,
            reason='Invalid filename. Please avoid special characters like :\\/*?"<>|',
        )
    return _path_answer(state, path, full_info)


def move_userdata(
    state: FakeComfyState, source: str, dest: str, overwrite: bool, full_info: bool
) -> web.Response:
    """``POST /userdata/{file}/move/{dest}``."""
    if not overwrite and os.path.exists(dest):
        return web.Response(status=409, text="File already exists")
    shutil.move(source, dest)
    return _path_answer(state, dest, full_info)


def add_user(state: FakeComfyState, username: Any) -> web.Response:
    """``POST /users``: ``"<sanitized>_<uuid4>"`` (random per backend) or 400 on a duplicate."""
    if username in state.users.values():
        return web.json_response({"error": "Duplicate username."}, status=400)
    name = str(username).strip()
    if not name:
        raise web.HTTPInternalServerError()  # ComfyUI: ValueError("username not provided")
    user_id = re.sub("[^a-zA-Z0-9-_]+", "-", name) + "_" + str(uuid.uuid4())
    state.users[user_id] = name
    with open(os.path.join(state.dirs.user, "users.json"), "w") as fh:
        json.dump(state.users, fh)
    return web.json_response(user_id)


def users_info(state: FakeComfyState) -> dict[str, Any]:
    """``GET /users`` in single-user mode."""
    user_dir = user_filepath(state, None, create_dir=False)
    return {"storage": "server", "migrated": user_dir is not None and os.path.exists(user_dir)}


def _conflict(path: str, overwrite: bool) -> bool:
    return not overwrite and os.path.exists(path)


def _flags(request: web.Request) -> tuple[bool, bool]:
    overwrite = request.query.get("overwrite", "true") != "false"
    full_info = request.query.get("full_info", "false").lower() == "true"
    return overwrite, full_info


def add_user_routes(routes: web.RouteTableDef, state: FakeComfyState) -> None:
    """Register /users, /settings*, /userdata*, /v2/userdata."""

    @routes.get("/settings")
    async def get_settings(request: web.Request) -> web.StreamResponse:
        return web.json_response(load_settings(state))

    @routes.get("/settings/{id}")
    async def get_setting(request: web.Request) -> web.StreamResponse:
        settings = load_settings(state)
        return web.json_response(settings.get(request.match_info["id"]))

    @routes.post("/settings")
    async def post_settings(request: web.Request) -> web.StreamResponse:
        new_settings = await request.json()
        save_settings(state, {**load_settings(state), **new_settings})
        return web.Response(status=200)

    @routes.post("/settings/{id}")
    async def post_setting(request: web.Request) -> web.StreamResponse:
        value = await request.json()
        settings = load_settings(state)
        settings[request.match_info["id"]] = value
        save_settings(state, settings)
        return web.Response(status=200)

    @routes.get("/users")
    async def get_users(request: web.Request) -> web.StreamResponse:
        return web.json_response(users_info(state))

    @routes.post("/users")
    async def post_users(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return add_user(state, body["username"])

    @routes.get("/userdata")
    async def get_userdata_list(request: web.Request) -> web.StreamResponse:
        return await asyncio.to_thread(list_userdata, state, request.rel_url.query)

    @routes.get("/v2/userdata")
    async def get_userdata_v2(request: web.Request) -> web.StreamResponse:
        requested = request.rel_url.query.get("path", "")
        return await asyncio.to_thread(list_userdata_v2, state, requested)

    @routes.get("/userdata/{file}")
    async def get_userdata(request: web.Request) -> web.StreamResponse:
        path = data_path(state, request, check_exists=True)
        if not isinstance(path, str):
            return path
        return web.FileResponse(path)

    @routes.post("/userdata/{file}")
    async def post_userdata(request: web.Request) -> web.StreamResponse:
        path = data_path(state, request, check_exists=False)
        if not isinstance(path, str):
            return path
        overwrite, full_info = _flags(request)
        if _conflict(path, overwrite):  # checked before reading the body, like ComfyUI
            return web.Response(status=409, text="File already exists")
        body = await request.read()
        return await asyncio.to_thread(write_userdata, state, path, body, overwrite, full_info)

    @routes.delete("/userdata/{file}")
    async def delete_userdata(request: web.Request) -> web.StreamResponse:
        path = data_path(state, request, check_exists=True)
        if not isinstance(path, str):
            return path
        await asyncio.to_thread(os.remove, path)
        return web.Response(status=204)

    @routes.post("/userdata/{file}/move/{dest}")
    async def post_move_userdata(request: web.Request) -> web.StreamResponse:
        source = data_path(state, request, check_exists=True)
        if not isinstance(source, str):
            return source
        dest = data_path(state, request, check_exists=False, param="dest")
        if not isinstance(dest, str):
            return dest
        overwrite, full_info = _flags(request)
        return await asyncio.to_thread(move_userdata, state, source, dest, overwrite, full_info)
