"""Helpers for the workflow tests: drive the add-on's timer, read PNGs through Blender."""

from __future__ import annotations

import time
from pathlib import Path

import bpy
import numpy as np

from addon import session


def tick_until(predicate, server, timeout_s: float, on_tick=None):
    """Run the add-on's timer callback until ``predicate()`` is true (polled deadline, no fixed sleeps)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if server.returncode is not None:
            raise AssertionError(f"server exited ({server.returncode}):\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s; server log:\n{server.log_tail()}")
        interval = session.timer_tick()
        if on_tick is not None:
            on_tick()
        time.sleep(min(interval, 0.02))


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
