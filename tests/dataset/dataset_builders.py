"""Builders for real image, caption and archive fixtures (no mocks for files)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

from PIL import Image


def write_image(path: Path, size=(320, 256), mode="RGB", fmt=None, color=None) -> Path:
    """Save a real image; the colour varies with the name so images differ unless asked not to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = sum(path.name.encode()) % 200
    fill = color if color is not None else {"RGB": (seed, 80, 120), "CMYK": (seed, 10, 20, 30), "RGBA": (seed, 1, 2, 128)}.get(mode, seed)
    Image.new(mode, size, fill).save(path, format=fmt)
    return path


def write_caption(path: Path, text: str = "1girl, solo, smile", encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def png_bytes(size=(320, 256)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height (a decompression bomb's calling card)."""
    data = bytearray(png_bytes((1, 1)))
    ihdr = 8  # after the signature: length(4) + b"IHDR"(4) + data(13) + crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 8 + 13]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def captioned_zip(count: int) -> bytes:
    """A zip of `count` captioned PNGs of distinct sizes, so two counts never give the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(count):
            zf.writestr(f"img{i}.png", png_bytes((320 + 8 * i, 256)))
            zf.writestr(f"img{i}.txt", "1girl")
    return buf.getvalue()
