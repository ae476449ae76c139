"""File routes of the simulated backend: ``/view``, ``/upload/image``, ``/upload/mask`` and models.

Ports of ``server.py`` (``view_image``, ``image_upload``, ``upload_mask``, ``view_metadata``,
``/embeddings``, ``/models``) and ``app/model_manager.py`` against this backend's own
directories. ``preview``/``channel`` on ``/view`` are accepted and ignored (no Pillow).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import struct
from typing import IO, Any

from aiohttp import web

from gateway.testing.fake_images import color_for, encode_png, png_size
from gateway.testing.fake_state import FakeComfyState

SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

#: folder_paths.folder_names_and_paths: name → (sub-directories of models/, extensions)
MODEL_FOLDERS: dict[str, tuple[tuple[str, ...], set[str]]] = {
    "checkpoints": (("checkpoints",), SUPPORTED_PT_EXTENSIONS),
    "configs": (("configs",), {".yaml"}),
    "loras": (("loras",), SUPPORTED_PT_EXTENSIONS),
    "vae": (("vae",), SUPPORTED_PT_EXTENSIONS),
    "text_encoders": (("text_encoders", "clip"), SUPPORTED_PT_EXTENSIONS),
    "diffusion_models": (("unet", "diffusion_models"), SUPPORTED_PT_EXTENSIONS),
    "clip_vision": (("clip_vision",), SUPPORTED_PT_EXTENSIONS),
    "style_models": (("style_models",), SUPPORTED_PT_EXTENSIONS),
    "embeddings": (("embeddings",), SUPPORTED_PT_EXTENSIONS),
    "diffusers": (("diffusers",), {"folder"}),
    "vae_approx": (("vae_approx",), SUPPORTED_PT_EXTENSIONS),
    "controlnet": (("controlnet", "t2i_adapter"), SUPPORTED_PT_EXTENSIONS),
    "gligen": (("gligen",), SUPPORTED_PT_EXTENSIONS),
    "upscale_models": (("upscale_models",), SUPPORTED_PT_EXTENSIONS),
    "custom_nodes": (("../custom_nodes",), set()),
    "hypernetworks": (("hypernetworks",), SUPPORTED_PT_EXTENSIONS),
    "photomaker": (("photomaker",), SUPPORTED_PT_EXTENSIONS),
    "classifiers": (("classifiers",), {""}),
    "model_patches": (("model_patches",), SUPPORTED_PT_EXTENSIONS),
    "audio_encoders": (("audio_encoders",), SUPPORTED_PT_EXTENSIONS),
}
_LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}

#: server.py forces these to download instead of display
_DOWNLOAD_ONLY = {
    "text/html",
    "text/html-sandboxed",
    "application/xhtml+xml",
    "text/javascript",
    "text/css",
}
#: server.py registers these with mimetypes (kept local here: no global mutation)
_EXTRA_TYPES = {".js": "application/javascript; charset=utf-8", ".webp": "image/webp"}


def folder_paths(state: FakeComfyState, folder: str) -> list[str]:
    """Absolute directories of a model folder type."""
    subdirs, _ = MODEL_FOLDERS[folder]
    return [os.path.normpath(os.path.join(state.dirs.models, sub)) for sub in subdirs]


def filename_list(state: FakeComfyState, folder: str) -> list[str]:
    """folder_paths.get_filename_list: relative paths with an accepted extension, sorted."""
    folder = _LEGACY.get(folder, folder)
    _, extensions = MODEL_FOLDERS[folder]
    out: set[str] = set()
    for root in folder_paths(state, folder):
        for dirpath, _, files in os.walk(root, followlinks=True):
            for name in files:
                if not extensions or os.path.splitext(name)[1].lower() in extensions:
                    out.add(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(out)


def _content_type(filename: str) -> str:
    ext = os.path.splitext(filename)[1].lower()
    content_type = _EXTRA_TYPES.get(ext) or mimetypes.guess_type(filename)[0]
    content_type = content_type or "application/octet-stream"
    return "application/octet-stream" if content_type in _DOWNLOAD_ONLY else content_type


def resolve_view_path(state: FakeComfyState, query: Any) -> str | int:
    """The file ``/view`` would serve, or the HTTP status to answer (400/403/404)."""
    if "filename" not in query:
        return 404
    filename, output_dir = state.dirs.annotated(query["filename"])
    if not filename:
        return 400
    if filename[0] == "/" or ".." in filename:
        return 400
    if output_dir is None:
        output_dir = state.dirs.by_type(query.get("type", "output"))
    if output_dir is None:
        return 400
    if "subfolder" in query:
        full_output_dir = os.path.join(output_dir, query["subfolder"])
        if os.path.commonpath((os.path.abspath(full_output_dir), output_dir)) != output_dir:
            return 403
        output_dir = full_output_dir
    path = os.path.join(output_dir, os.path.basename(filename))
    return path if os.path.isfile(path) else 404


def _same_content(path: str, upload: IO[bytes]) -> bool:
    """server.py compare_image_hash (sha256 of both; rewinds the upload)."""
    if not os.path.exists(path):
        return False
    with open(path, "rb") as fh:
        existing = hashlib.sha256(fh.read()).hexdigest()
    incoming = hashlib.sha256(upload.read()).hexdigest()
    upload.seek(0)
    return existing == incoming


def _choose_upload_path(
    folder: str, filename: str, upload: IO[bytes], overwrite: bool
) -> tuple[str, str, bool]:
    """Pick the final name: ``name (1).ext`` on conflict, unless identical (dedup) or overwrite.

    Returns ``(filename, filepath, is_duplicate)``. Blocking: run in a thread.
    """
    filepath = os.path.join(folder, filename)
    if overwrite:
        return filename, filepath, False
    stem, ext = os.path.splitext(filename)
    i = 1
    while os.path.exists(filepath):
        if _same_content(filepath, upload):
            return filename, filepath, True
        filename = f"{stem} ({i}){ext}"
        filepath = os.path.join(folder, filename)
        i += 1
    return filename, filepath, False


def _write_upload(filepath: str, upload: IO[bytes]) -> None:
    with open(filepath, "wb") as fh:
        while chunk := upload.read(1 << 20):
            fh.write(chunk)


def _mask_writer(state: FakeComfyState, original_ref_raw: Any) -> Any:
    """The ``image_save_function`` of ``/upload/mask``.

    Like ComfyUI, problems with ``original_ref`` (bad path, missing original) silently write
    nothing: the upload still answers 200 with the name. A missing ``original_ref`` field raises
    (→ 500). The written file is an RGBA PNG of the original's size.
    """

    def save(upload: IO[bytes], filepath: str) -> None:
        original_ref = json.loads(original_ref_raw)
        filename, output_dir = state.dirs.annotated(original_ref["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return
        if output_dir is None:
            output_dir = state.dirs.by_type(original_ref.get("type", "output"))
        if output_dir is None:
            return
        if original_ref.get("subfolder", "") != "":
            full = os.path.join(output_dir, original_ref["subfolder"])
            if os.path.commonpath((os.path.abspath(full), output_dir)) != output_dir:
                return
            output_dir = full
        original = os.path.join(output_dir, filename)
        if not os.path.isfile(original):
            return
        with open(original, "rb") as fh:
            original_bytes = fh.read()
        mask_bytes = upload.read()
        width, height = png_size(original_bytes) or png_size(mask_bytes) or (64, 64)
        color = color_for(hashlib.sha256(original_bytes).hexdigest())
        alpha = hashlib.sha256(mask_bytes).digest()[0]
        with open(filepath, "wb") as out:
            out.write(encode_png(width, height, color, alpha=alpha, text={"mask_of": filename}))

    return save


def _store_upload(
    upload_dir: str,
    subfolder: str,
    filename: str,
    upload: IO[bytes],
    overwrite: bool,
    save_function: Any,
) -> str | None:
    """Blocking part of image_upload; returns the final filename, or None on a path escape."""
    full_output_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
    filepath = os.path.abspath(os.path.join(full_output_folder, filename))
    if os.path.commonpath((upload_dir, filepath)) != upload_dir:
        return None
    os.makedirs(full_output_folder, exist_ok=True)
    filename, filepath, duplicate = _choose_upload_path(
        full_output_folder, filename, upload, overwrite
    )
    if not duplicate:
        if save_function is not None:
            save_function(upload, filepath)
        else:
            _write_upload(filepath, upload)
    return filename


async def image_upload(
    state: FakeComfyState, post: Any, save_function: Any = None
) -> web.StreamResponse:
    """server.py image_upload: validates, dedups/renames, writes, answers name/subfolder/type."""
    image = post.get("image")
    upload_type = post.get("type")
    if upload_type is None:
        upload_type = "input"
    upload_dir = state.dirs.by_type(upload_type)
    if upload_dir is None:  # ComfyUI crashes with UnboundLocalError here
        raise web.HTTPInternalServerError()
    if not isinstance(image, web.FileField) or image.file is None or not image.filename:
        return web.Response(status=400)
    subfolder = post.get("subfolder", "")
    overwrite = post.get("overwrite") in ("true", "1")
    filename = await asyncio.to_thread(
        _store_upload, upload_dir, subfolder, image.filename, image.file, overwrite, save_function
    )
    if filename is None:
        return web.Response(status=400)
    return web.json_response({"name": filename, "subfolder": subfolder, "type": upload_type})


def _safetensors_metadata(path: str, max_size: int = 1024 * 1024) -> dict[str, Any] | None:
    """comfy.utils.safetensors_header + ``__metadata__`` lookup."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            return None
        (length,) = struct.unpack("<Q", head)
        if length > max_size:
            return None
        header = json.loads(fh.read(length))
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


def view_metadata(state: FakeComfyState, folder: str, filename: str | None) -> Any:
    """``/view_metadata/{folder}``: the safetensors ``__metadata__`` dict, or None (→ 404)."""
    if filename is None or not filename.endswith(".safetensors"):
        return None
    folder = _LEGACY.get(folder, folder)
    if folder not in MODEL_FOLDERS:
        return None
    for root in folder_paths(state, folder):
        path = os.path.join(root, filename)
        if os.path.commonpath((root, os.path.abspath(path))) == root and os.path.isfile(path):
            return _safetensors_metadata(path)
    return None


def experiment_models(state: FakeComfyState, folder: str) -> list[dict[str, Any]]:
    """``/experiment/models/{folder}`` entries (name, pathIndex, modified, created, size)."""
    out = []
    for index, root in enumerate(folder_paths(state, folder)):
        for name in filename_list(state, folder):
            path = os.path.join(root, name)
            if os.path.isfile(path):
                st = os.stat(path)
                out.append(
                    {
                        "name": name,
                        "pathIndex": index,
                        "modified": st.st_mtime,
                        "created": st.st_ctime,
                        "size": st.st_size,
                    }
                )
    return out


def add_file_routes(routes: web.RouteTableDef, state: FakeComfyState) -> None:
    """Register /view, /upload/*, /view_metadata, /embeddings, /models and /experiment/models."""

    @routes.get("/view")
    async def view_image(request: web.Request) -> web.StreamResponse:
        result = resolve_view_path(state, request.rel_url.query)
        if isinstance(result, int):
            return web.Response(status=result)
        filename = os.path.basename(result)
        headers = {
            "Content-Disposition": f'filename="{filename}"',
            "Content-Type": _content_type(filename),
        }
        return web.FileResponse(result, headers=headers)

    @routes.post("/upload/image")
    async def upload_image(request: web.Request) -> web.StreamResponse:
        post = await request.post()
        return await image_upload(state, post)

    @routes.post("/upload/mask")
    async def upload_mask(request: web.Request) -> web.StreamResponse:
        post = await request.post()
        return await image_upload(state, post, _mask_writer(state, post.get("original_ref")))

    @routes.get("/view_metadata/{folder_name}")
    async def get_view_metadata(request: web.Request) -> web.StreamResponse:
        folder = request.match_info["folder_name"]
        filename = request.rel_url.query.get("filename")
        metadata = await asyncio.to_thread(view_metadata, state, folder, filename)
        if metadata is None:
            return web.Response(status=404)
        return web.json_response(metadata)

    @routes.get("/embeddings")
    async def get_embeddings(request: web.Request) -> web.StreamResponse:
        names = await asyncio.to_thread(filename_list, state, "embeddings")
        return web.json_response([os.path.splitext(n)[0] for n in names])

    @routes.get("/models")
    async def list_model_types(request: web.Request) -> web.StreamResponse:
        return web.json_response(list(MODEL_FOLDERS))

    @routes.get("/models/{folder}")
    async def get_models(request: web.Request) -> web.StreamResponse:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(await asyncio.to_thread(filename_list, state, folder))

    @routes.get("/experiment/models")
    async def get_model_folders(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            [
                {"name": folder, "folders": folder_paths(state, folder)}
                for folder in MODEL_FOLDERS
                if folder not in ("configs", "custom_nodes")
            ]
        )

    @routes.get("/experiment/models/{folder}")
    async def get_all_models(request: web.Request) -> web.StreamResponse:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(await asyncio.to_thread(experiment_models, state, folder))

    @routes.get("/experiment/models/preview/{folder}/{path_index}/{filename:.*}")
    async def get_model_preview(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404)  # the simulator has no model previews
