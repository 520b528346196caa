"""Splat job requests, bpy-free: ``splat.reconstruct`` params/inputs and Render Splats file names.

What the Blender splat features (``addon/blender/splat_train.py``, ``splat_render.py``) send, as
plain numpy maps in the protocol's contracts, testable without Blender.
"""

from __future__ import annotations

import os

import numpy as np

from .formats.gaussians import K_BY_DEGREE


def empty_gaussians(sh_degree: int = 0) -> dict:
    """A Gaussians map with no Gaussians: the target object before the first partial arrives.

    Args:
        sh_degree: SH degree 0-3 of the (empty) shN array.

    Returns:
        The PROTOCOL.md Gaussians map with N = 0.
    """
    k = K_BY_DEGREE[sh_degree]
    return {"means": np.zeros((0, 3), np.float32), "quats": np.zeros((0, 4), np.float32),
            "scales": np.zeros((0, 3), np.float32), "opacities": np.zeros((0,), np.float32),
            "sh0": np.zeros((0, 3), np.float32), "shN": np.zeros((0, k, 3), np.float32)}


def reconstruct_params(steps: int, sh_degree: int, test_every: int, max_gaussians: int,
                       partial_every: int | None = None, preview_every: int | None = None) -> dict:
    """The ``splat.reconstruct`` params for the operator's settings.

    Args:
        steps: optimisation steps.
        sh_degree: SH degree of the result.
        test_every: hold out every k-th view; 0 = none.
        max_gaussians: cap on the Gaussian count.
        partial_every: steps between live partials (default: about 20 per run, at least 25
            steps apart so sending them stays a small part of the training time).
        preview_every: steps between preview images (default: about 30 per run).

    Returns:
        The params map.
    """
    if partial_every is None:
        partial_every = max(25, steps // 20)
    if preview_every is None:
        preview_every = max(10, steps // 30)
    return {"steps": int(steps), "sh_degree": int(sh_degree), "test_every": int(test_every),
            "max_gaussians": int(max_gaussians), "partial_every": int(partial_every),
            "preview_every": int(preview_every)}


def reconstruct_inputs(captured: dict) -> dict:
    """The ``splat.reconstruct`` inputs from an `addon.blender.capture.capture` result.

    Args:
        captured: ``images`` [T, H, W, 4] linear straight alpha, ``cameras`` (T cameras),
            ``points`` [P, 3], ``colors`` [P, 3].

    Returns:
        The inputs map (points/colors only when there are any).
    """
    inputs = {"images": np.ascontiguousarray(captured["images"], dtype=np.float32),
              "cameras": captured["cameras"]}
    points = captured.get("points")
    if points is not None and len(points):
        inputs["points"] = np.ascontiguousarray(points, dtype=np.float32)
        inputs["colors"] = np.ascontiguousarray(np.clip(captured["colors"], 0.0, 1.0), dtype=np.float32)
    return inputs


def frame_path(directory: str, frame: int) -> str:
    """File of one rendered frame: ``<directory>/splats_0001.png``."""
    return os.path.join(directory, f"splats_{frame:04d}.png")
