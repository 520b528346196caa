"""Depth maps as the image depth ControlNets were trained on: the one copy, numpy only.

A convention of the protocol (`image.generate` takes a `control` depth map in metres and treats
it as this image), shared by the add-on's scene sources and the pipeline.
"""

from __future__ import annotations

import numpy as np


def inverse_depth_image(depth: np.ndarray, far: float = np.inf) -> np.ndarray:
    """A depth map in metres as a MiDaS-style inverse-depth image.

    Args:
        depth: distance along the view axis, metres; inf, NaN, <= 0 or >= ``far`` where nothing
            was hit. [H, W]
        far: depths from here on count as empty (Blender writes 1e10 m for "nothing hit").

    Returns:
        uint8 grey: inverse depth scaled to 0..255 over the visible pixels (nearest 255), empty
        pixels 0; all visible at one depth: 255. [H, W, 3]
    """
    depth = np.asarray(depth, np.float64)
    valid = np.isfinite(depth) & (depth > 0) & (depth < far)
    inverse = np.zeros_like(depth)
    inverse[valid] = 1.0 / depth[valid]
    if valid.any():
        low, high = inverse[valid].min(), inverse[valid].max()
        inverse[valid] = (inverse[valid] - low) / (high - low) if high > low else 1.0
    grey = np.round(inverse * 255.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
