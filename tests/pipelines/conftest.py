"""Fixtures for the splat pipeline tests: a real in-process Job and a tiny synthetic scene.

The scene's ground truth comes from elsewhere: random Gaussians rendered by `nskernels.rasterize`
from cameras made by `addon.core.capture_layout`, so the pipelines are checked against the kernels.
"""

from __future__ import annotations

import numpy as np
import pytest

from recording_job import RecordingJob


@pytest.fixture
def make_job():
    return RecordingJob


def _scene(seed: int = 3, n: int = 250, count: int = 10, size: int = 32):
    import torch

    from addon.core import capture_layout
    from nskernels.camera import Cameras
    from nskernels.rasterize import rasterize

    g = torch.Generator().manual_seed(seed)
    gaussians = {
        "means": torch.rand(n, 3, generator=g) * 1.2 - 0.6,
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.log(torch.rand(n, 3, generator=g) * 0.08 + 0.04),
        "opacities": torch.randn(n, generator=g) + 1.5,
        "sh0": torch.randn(n, 3, generator=g) * 0.8,
        "shN": torch.randn(n, 3, 3, generator=g) * 0.1,
    }
    cams = capture_layout.capture_cameras([-0.7] * 3, [0.7] * 3, layout="sphere", count=count,
                                        width=size, height=size, lens_mm=40.0)
    with torch.no_grad():
        out = rasterize(*(gaussians[k] for k in ("means", "quats", "scales", "opacities", "sh0", "shN")),
                        Cameras.from_wire(cams))
    rgb, alpha = out.rgb.numpy(), out.alpha.numpy()
    # Rendered frames are premultiplied; images on the wire carry straight alpha.
    straight = np.where(alpha[..., None] > 1e-6, rgb / np.maximum(alpha[..., None], 1e-6), 0.0)
    images = np.concatenate([straight, alpha[..., None]], axis=-1).astype(np.float32)
    wire_g = {k: v.numpy().astype(np.float32) for k, v in gaussians.items()}
    return {"gaussians": wire_g, "cameras": cams, "images": images}


@pytest.fixture(scope="session")
def tiny_scene():
    """Random Gaussians (250) seen by 10 cameras at 32x32: {"gaussians", "cameras", "images" RGBA}."""
    return _scene()
