"""The real splat files of ../shared/realsplat-data render: read by content, seen from outside
their bounds, they cover the view (a wrong decode, e.g. quaternion order or log scale, leaves it
empty or all smeared)."""

import numpy as np
import pytest
import torch

from addon.core.formats import detect
from nskernels.rasterize import rasterize
from pipelines.splat.to_mesh import orbit_cameras, scene_bounds
from tests.formats.conftest import realsplat  # noqa: F401  (the fixture)

KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


@pytest.mark.parametrize("name", ["biker.spz", "guitar.compressed.ply", "luma-seal.splat", "plane3_edited_sh3.ply",
                                  "donut_fused_sh0.ply"])
def test_real_file_renders(realsplat, name):  # noqa: F811
    g, _ = detect.read_gaussians_file(realsplat(name))
    lo, hi = scene_bounds(g["means"], g["opacities"], pad=0.0)
    cams = orbit_cameras(lo, hi, 3, 48)
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
