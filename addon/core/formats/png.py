"""8-bit RGBA PNG writer, stdlib + numpy (Render Splats writes its frames with it; no bpy image round trip)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np


def write_png(path: str, rgba: np.ndarray) -> None:
    """Write an 8-bit RGBA PNG (non-interlaced, one IDAT chunk).

    Args:
        path: file to write (its folder must exist).
        rgba: row 0 at the top. [H, W, 4] uint8
    """
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"write_png wants [H, W, 4] uint8, got {rgba.shape} {rgba.dtype}")
    h, w = rgba.shape[:2]
    # Filter type 0 (none) before each row.
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgba.reshape(h, w * 4)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(png)
    os.replace(tmp, path)
