"""Helpers for the workflow tests: read PNGs through Blender (waiting: blender_support.tick_until)."""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np


def png_pixels(path: Path):
    """A PNG's pixels as Blender reads them: float [H, W, 4] in [0, 1], row 0 at the bottom."""
    image = bpy.data.images.load(str(path))
    try:
        w, h = image.size
        buf = np.empty(w * h * 4, np.float32)
        image.pixels.foreach_get(buf)
        return buf.reshape(h, w, 4)
    finally:
        bpy.data.images.remove(image)
