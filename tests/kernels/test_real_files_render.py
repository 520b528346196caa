"""The real splat files of ../shared/realsplat-data render: read by content, seen from outside
their bounds, they cover the view (a wrong decode, e.g. quaternion order or log scale, leaves it
empty or all smeared)."""

import numpy as np
import pytest
import torch

from addon.core.formats import detect
from nskernels.rasterize import rasterize
from nskernels.camera import Cameras
from tests.formats.conftest import realsplat  # noqa: F401  (the fixture)

KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def _bounds(means, logits):
    keep = 1 / (1 + np.exp(-logits.astype(np.float64))) >= 0.05
    return np.percentile(means[keep], [0.5, 99.5], axis=0)


def _views(lo, hi, size=48):
    """Three cameras around the box, 2.5 bounding radii away, each seeing the bounding sphere."""
    centre, radius = (lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2)
    f = (size / 2) / np.tan(np.arcsin(1 / 2.5) * 1.08)
    mats = []
    for d in ([0.6, -0.7, 0.4], [-0.8, 0.1, -0.6], [0.1, 0.9, 0.45]):
        back = np.asarray(d) / np.linalg.norm(d)
        right = np.cross([0.0, 0.0, 1.0], back)
        right /= np.linalg.norm(right)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, centre + 2.5 * radius * back
        mats.append(m)
    n = len(mats)
    return Cameras(world_from_camera=torch.tensor(np.array(mats), dtype=torch.float32), fx=torch.full((n,), f),
                   fy=torch.full((n,), f), cx=torch.full((n,), size / 2), cy=torch.full((n,), size / 2),
                   width=size, height=size, near=0.01 * radius, far=10 * radius)


@pytest.mark.parametrize("name", ["biker.spz", "guitar.compressed.ply", "luma-seal.splat", "plane3_edited_sh3.ply",
                                  "donut_fused_sh0.ply"])
def test_real_file_renders(realsplat, name):  # noqa: F811
    g, _ = detect.read_gaussians_file(realsplat(name))
    lo, hi = _bounds(g["means"], g["opacities"])
    cams = _views(lo, hi)
    t = {k: torch.from_numpy(np.ascontiguousarray(g[k])) for k in KEYS}
    with torch.no_grad():
        out = rasterize(*(t[k] for k in KEYS), cams, backend="torch")
    alpha = out.alpha.numpy()
    assert np.isfinite(out.rgb.numpy()).all()
    # every view sees the object, and none is smeared over the whole frame
    cover = (alpha > 0.5).mean(axis=(1, 2))
    assert np.all(cover > 0.03) and np.all(cover < 0.98), cover
    # depth_front lies within the object's bounding sphere around the view distance
    radius = np.linalg.norm(hi - lo) / 2
    front = out.depth_front.numpy()[alpha > 0.5]
    assert np.all(front > 2.5 * radius - 1.5 * radius) and np.all(front < 2.5 * radius + 1.5 * radius)
