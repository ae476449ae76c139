"""Content-addressed cache of uploaded inputs, so a failover never loses an input file.

ComfyUI validates a ``LoadImage`` input against its own input directory: a prompt sent to a
backend that never received the upload fails with "Invalid image file" (shared/comfyui-api.md
§7). The gateway spools every upload to disk while forwarding it (memory stays bounded), keeps it
keyed by the name the backend gave it, and copies it to any other backend before a prompt that
names it is forwarded there.

The cache is bounded in bytes; the least recently used files are evicted first. Files live in a
private temporary directory removed at shutdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader

UploadKey = tuple[str, str, str]
"""(type, subfolder, name) as the backend reported it."""

CHUNK = 256 * 1024


@dataclass(eq=False)
class SpooledFile:
    """A file part written to disk."""

    path: Path
    sha256: str
    size: int
    filename: str
    content_type: str


@dataclass(eq=False)
class CachedUpload:
    """One uploaded input, and the backends known to have it."""

    key: UploadKey
    file: SpooledFile
    present_on: set[str] = field(default_factory=set)


class UploadCache:
    """Spool, remember and look up uploaded inputs (see the module docstring)."""

    def __init__(self, max_bytes: int, directory: Path | None = None) -> None:
        self.max_bytes = max_bytes
        self._own_dir = directory is None
        self._dir = directory or Path(tempfile.mkdtemp(prefix="comfyui-gateway-uploads-"))
        self._entries: OrderedDict[UploadKey, CachedUpload] = OrderedDict()
        self._seq = 0
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def spool(self, part: BodyPartReader, limit: int) -> SpooledFile:
        """Write a multipart file part to disk, hashing it; raise ValueError above ``limit``."""
        self._seq += 1
        path = self._dir / f"upload-{self._seq}.part"
        digest = hashlib.sha256()
        size = 0
        handle = await asyncio.to_thread(path.open, "wb")
        try:
            while chunk := await part.read_chunk(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ValueError(f"upload exceeds {limit} bytes")
                digest.update(chunk)
                await asyncio.to_thread(handle.write, chunk)
        except BaseException:
            await asyncio.to_thread(handle.close)
            path.unlink(missing_ok=True)
            raise
        await asyncio.to_thread(handle.close)
        return SpooledFile(
            path=path,
            sha256=digest.hexdigest(),
            size=size,
            filename=part.filename or "upload",
            content_type=part.headers.get("Content-Type", "application/octet-stream"),
        )

    def discard(self, spooled: SpooledFile) -> None:
        """Delete a spooled file that will not be cached."""
        spooled.path.unlink(missing_ok=True)

    def add(self, key: UploadKey, spooled: SpooledFile, backend: str) -> CachedUpload:
        """Remember an upload a backend accepted under ``key``."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._forget(old)
        entry = CachedUpload(key=key, file=spooled, present_on={backend})
        self._entries[key] = entry
        self.total_bytes += spooled.size
        while self.total_bytes > self.max_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._forget(evicted)
        return entry

    def _forget(self, entry: CachedUpload) -> None:
        self.total_bytes -= entry.file.size
        entry.file.path.unlink(missing_ok=True)

    def lookup(self, key: UploadKey) -> CachedUpload | None:
        """Return the cached upload for ``key`` (marking it recently used), or None."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def inputs_of(self, graph: Any) -> list[CachedUpload]:
        """Return the cached uploads a prompt graph names in its string inputs."""
        found: dict[UploadKey, CachedUpload] = {}
        if not isinstance(graph, dict) or not self._entries:
            return []
        for node in graph.values():
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if not isinstance(inputs, dict):
                continue
            for value in inputs.values():
                if isinstance(value, str) and (entry := self._match(value)) is not None:
                    found[entry.key] = entry
        return list(found.values())

    def _match(self, value: str) -> CachedUpload | None:
        kind = "input"
        for suffix, annotated in (
            (" [input]", "input"),
            (" [output]", "output"),
            (" [temp]", "temp"),
        ):
            if value.endswith(suffix):
                value, kind = value[: -len(suffix)], annotated
                break
        subfolder, _, name = value.rpartition("/")
        return self.lookup((kind, subfolder, name))

    def close(self) -> None:
        """Delete every cached file (at shutdown)."""
        self._entries.clear()
        self.total_bytes = 0
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
