"""Frontend and static routes of the simulated backend.

The web root is, in order: ``FakeComfyOptions.frontend_root``; the ``static`` directory of the
``comfyui_frontend_package`` pip package if importable (like ComfyUI's FrontendManager); else a
tiny built-in page written to a scratch directory. ``/templates`` is served from the
``comfyui_workflow_templates`` package if importable, else from a built-in one-category index
whose template has its workflow and its thumbnail (``<name>-1.<mediaSubtype>``, which the
frontend's template dialog loads).
"""

from __future__ import annotations

import asyncio
import glob
import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.testing.fake_images import encode_png
from gateway.testing.fake_state import FakeComfyState

BUILTIN_INDEX_HTML = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>ComfyUI</title></head>
<body>
<h1>ComfyUI (simulated backend {name})</h1>
<p>This is the built-in page of gateway.testing's fake ComfyUI; install
<code>comfyui-frontend-package</code> to serve the real frontend.</p>
</body>
</html>
"""

BUILTIN_EXTENSION_JS = "// gateway.testing fake backend: placeholder core extension\nexport {};\n"

#: A valid templates index (the frontend fetches /templates/index.json) with one category.
BUILTIN_TEMPLATES_INDEX: list[dict[str, Any]] = [
    {
        "moduleName": "default",
        "title": "Basics",
        "type": "image",
        "templates": [
            {
                "name": "fake_invert",
                "title": "Invert an empty image",
                "mediaType": "image",
                "mediaSubtype": "png",
                "description": "EmptyImage → ImageInvert → SaveImage (simulated backend).",
            }
        ],
    }
]

#: UI-format workflow for the built-in template (EmptyImage → ImageInvert → SaveImage).
BUILTIN_TEMPLATE_WORKFLOW: dict[str, Any] = {
    "last_node_id": 3,
    "last_link_id": 2,
    "nodes": [
        {
            "id": 1,
            "type": "EmptyImage",
            "pos": [50, 100],
            "size": [315, 130],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": [],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
            "properties": {"Node name for S&R": "EmptyImage"},
            "widgets_values": [512, 512, 1, 0],
        },
        {
            "id": 2,
            "type": "ImageInvert",
            "pos": [420, 100],
            "size": [210, 26],
            "flags": {},
            "order": 1,
            "mode": 0,
            "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2], "slot_index": 0}],
            "properties": {"Node name for S&R": "ImageInvert"},
            "widgets_values": [],
        },
        {
            "id": 3,
            "type": "SaveImage",
            "pos": [680, 100],
            "size": [315, 270],
            "flags": {},
            "order": 2,
            "mode": 0,
            "inputs": [{"name": "images", "type": "IMAGE", "link": 2}],
            "outputs": [],
            "properties": {"Node name for S&R": "SaveImage"},
            "widgets_values": ["ComfyUI"],
        },
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]],
    "groups": [],
    "config": {},
    "extra": {},
    "version": 0.4,
}


def package_dir(package: str, subdir: str) -> Path | None:
    """``<package dir>/<subdir>`` of an importable pip package, else None."""
    if importlib.util.find_spec(package) is None:
        return None
    module = importlib.import_module(package)
    if module.__file__ is None:
        return None
    path = Path(module.__file__).parent / subdir
    return path if path.is_dir() else None


def write_builtin_frontend(root: Path, name: str) -> Path:
    """Write the built-in web root (index.html + one core extension) under ``root``."""
    web_root = root / "web"
    (web_root / "extensions" / "core").mkdir(parents=True, exist_ok=True)
    (web_root / "index.html").write_text(BUILTIN_INDEX_HTML.format(name=name), encoding="utf-8")
    (web_root / "extensions" / "core" / "fakeBackend.js").write_text(
        BUILTIN_EXTENSION_JS, encoding="utf-8"
    )
    return web_root


def write_builtin_templates(root: Path) -> Path:
    """Write the built-in ``/templates`` directory (index, one workflow, its thumbnail)."""
    templates = root / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    (templates / "index.json").write_text(json.dumps(BUILTIN_TEMPLATES_INDEX), encoding="utf-8")
    (templates / "fake_invert.json").write_text(
        json.dumps(BUILTIN_TEMPLATE_WORKFLOW), encoding="utf-8"
    )
    # The thumbnail shows what the template makes: an inverted black image, i.e. white.
    (templates / "fake_invert-1.png").write_bytes(encode_png(256, 256, 0xFFFFFF))
    return templates


def resolve_web_root(state: FakeComfyState, scratch: Path) -> Path:
    """Pick the web root (option, frontend package, or built-in page in ``scratch``).

    Logs ``[Prompt Server] web root: ...`` like ComfyUI's PromptServer, so the frontend's Logs
    panel (``/internal/logs/raw``) has a startup line to show.
    """
    if state.options.frontend_root is not None:
        web_root = Path(state.options.frontend_root)
    else:
        web_root = package_dir("comfyui_frontend_package", "static") or write_builtin_frontend(
            scratch, state.options.name
        )
    state.log(f"[Prompt Server] web root: {web_root}")
    return web_root


def resolve_templates_root(scratch: Path) -> Path:
    """``comfyui_workflow_templates``' templates directory, or the built-in one."""
    return package_dir("comfyui_workflow_templates", "templates") or write_builtin_templates(
        scratch
    )


def list_extensions(web_root: Path) -> list[str]:
    """``/extensions``: every ``extensions/**/*.js`` under the web root, as absolute URLs."""
    root = str(web_root)
    files = glob.glob(os.path.join(glob.escape(root), "extensions/**/*.js"), recursive=True)
    return ["/" + os.path.relpath(f, root).replace("\\", "/") for f in sorted(files)]


def add_frontend_routes(routes: web.RouteTableDef, web_root: Path) -> None:
    """Register ``/`` (no-cache index.html), ``/extensions``, ``/workflow_templates``, ``/i18n``."""

    @routes.get("/")
    async def get_root(request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(web_root / "index.html")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["Pragma"] = "no-cache"
        response.headers["Expires"] = "0"
        return response

    @routes.get("/extensions")
    async def get_extensions(request: web.Request) -> web.StreamResponse:
        return web.json_response(await asyncio.to_thread(list_extensions, web_root))

    @routes.get("/workflow_templates")
    async def get_workflow_templates(request: web.Request) -> web.StreamResponse:
        return web.json_response({})

    @routes.get("/i18n")
    async def get_i18n(request: web.Request) -> web.StreamResponse:
        return web.json_response({})


def add_static_routes(app: web.Application, web_root: Path, templates_root: Path) -> None:
    """The static routes ComfyUI registers last: ``/templates`` then ``/`` (the web root)."""
    app.router.add_routes([web.static("/templates", templates_root)])
    app.router.add_routes([web.static("/", web_root)])
