"""Tiny PNG encoder/decoder helpers and the binary websocket frame formats of ComfyUI.

No Pillow: PNGs are produced with :mod:`zlib` and :mod:`struct` only. Images are solid colour
(enough for a simulator) and carry ``tEXt`` chunks, which is where ComfyUI itself stores the
prompt metadata of saved images.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# protocol.py BinaryEventTypes
PREVIEW_IMAGE = 1
UNENCODED_PREVIEW_IMAGE = 2
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4

# image_format values inside a PREVIEW_IMAGE frame (server.py send_image)
FORMAT_JPEG = 1
FORMAT_PNG = 2

#: Larger requested sizes are clamped: the simulator honours sizes "loosely" to stay fast.
MAX_SIDE = 1024


@dataclass(frozen=True)
class FakeImage:
    """The simulated value of an ``IMAGE`` (or ``MASK``) socket: a batch of solid-colour images."""

    width: int = 512
    height: int = 512
    color: int = 0
    batch: int = 1

    def inverted(self) -> FakeImage:
        """Return the colour-inverted image (what ``ImageInvert`` does)."""
        return FakeImage(self.width, self.height, self.color ^ 0xFFFFFF, self.batch)

    def __str__(self) -> str:
        return f"FakeImage({self.batch}x{self.height}x{self.width}, color=#{self.color:06x})"


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def encode_png(
    width: int,
    height: int,
    color: int,
    *,
    alpha: int | None = None,
    text: Mapping[str, str] | None = None,
    compress_level: int = 4,
) -> bytes:
    """Encode a valid solid-colour PNG.

    ``color`` is ``0xRRGGBB``; ``alpha`` (0-255) makes it an RGBA image. ``text`` entries become
    ``tEXt`` chunks (latin-1, unencodable characters replaced). Sides are clamped to
    ``1..MAX_SIDE``.
    """
    width = min(max(int(width), 1), MAX_SIDE)
    height = min(max(int(height), 1), MAX_SIDE)
    pixel = bytes(((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF))
    color_type = 2
    if alpha is not None:
        pixel += bytes((alpha & 0xFF,))
        color_type = 6
    row = b"\x00" + pixel * width
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", ihdr)]
    for key, value in (text or {}).items():
        keyword = key.encode("latin-1", "replace")[:79]
        parts.append(_chunk(b"tEXt", keyword + b"\x00" + value.encode("latin-1", "replace")))
    parts.append(_chunk(b"IDAT", zlib.compress(row * height, compress_level)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def png_size(data: bytes) -> tuple[int, int] | None:
    """Return ``(width, height)`` from a PNG's IHDR, or None if ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def png_text(data: bytes) -> dict[str, str]:
    """Return the ``tEXt`` chunks of a PNG as a dict (used by tests to check provenance)."""
    out: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if tag == b"tEXt" and b"\x00" in body:
            key, _, value = body.partition(b"\x00")
            out[key.decode("latin-1")] = value.decode("latin-1")
        if tag == b"IEND":
            break
        pos += 12 + length
    return out


def image_from_bytes(data: bytes) -> FakeImage:
    """Describe a file as a :class:`FakeImage` (PNG size if readable, colour from its hash)."""
    size = png_size(data) or (64, 64)
    color = int.from_bytes(hashlib.sha256(data).digest()[:3], "big")
    return FakeImage(size[0], size[1], color, 1)


def color_for(key: str) -> int:
    """A stable pseudo-random 0xRRGGBB colour derived from ``key``."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:3], "big")


def preview_payload(image_png: bytes, image_format: int = FORMAT_PNG) -> bytes:
    """Payload of binary event 1 ``PREVIEW_IMAGE`` (after the 4-byte type): ``>I format``, image."""
    return struct.pack(">I", image_format) + image_png


def preview_metadata_payload(image_png: bytes, metadata: Mapping[str, object]) -> bytes:
    """Payload of binary event 4 ``PREVIEW_IMAGE_WITH_METADATA``: ``>I json_len``, JSON, image.

    ``metadata`` should hold node_id, prompt_id, display_node_id, parent_node_id and
    real_node_id; ``image_type`` is appended like ``server.py`` does.
    """
    meta = {**metadata, "image_type": "image/png"}
    blob = json.dumps(meta).encode("utf-8")
    return struct.pack(">I", len(blob)) + blob + image_png


def parse_binary_frame(frame: bytes) -> tuple[int, dict[str, object] | None, bytes]:
    """Split a binary websocket frame into ``(event_type, metadata_or_None, image_bytes)``.

    Type 1 yields ``{"image_format": n}`` as metadata; type 4 the JSON metadata; type 3
    ``{"node_id": ...}`` and the text bytes.
    """
    (event,) = struct.unpack(">I", frame[:4])
    if event == PREVIEW_IMAGE:
        (fmt,) = struct.unpack(">I", frame[4:8])
        return event, {"image_format": fmt}, frame[8:]
    if event == PREVIEW_IMAGE_WITH_METADATA:
        (length,) = struct.unpack(">I", frame[4:8])
        return event, json.loads(frame[8 : 8 + length]), frame[8 + length :]
    if event == TEXT:
        (length,) = struct.unpack(">I", frame[4:8])
        return event, {"node_id": frame[8 : 8 + length].decode()}, frame[8 + length :]
    return event, None, frame[4:]
