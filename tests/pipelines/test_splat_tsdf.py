"""`pipelines.splat.tsdf`: the fusion's observation model on one hand-made view.

One camera at the origin looking down -Z (Blender convention), 32 x 32 px: the left half sees a
wall at depth 2 m (alpha 1, one colour), the right half is empty. Voxels in front of the wall
get sdf > 0, voxels just behind it (within the band) sdf < 0, voxels far behind it stay unobserved
(-1), and voxels seen through the empty half are free space (+1).
"""

from __future__ import annotations

import numpy as np

from pipelines.splat import tsdf

COLOUR = np.array([0.5, 0.25, 0.1], np.float32)


def _view():
    h = w = 32
    alpha = np.zeros((1, h, w), np.float32)
    alpha[:, :, : w // 2] = 1.0
    depth = np.where(alpha > 0, 2.0, np.inf).astype(np.float32)
    rgb = (alpha[..., None] * COLOUR).astype(np.float32)
    intrinsics = np.array([[32.0, 32.0, 16.0, 16.0]])
    return np.eye(4)[None], intrinsics, rgb, alpha, depth


def test_fusion_signs_band_and_colour():
    view, intrinsics, rgb, alpha, depth = _view()
    grid = tsdf.VoxelGrid(np.array([-0.4, -0.2, -3.0]), np.array([0.4, 0.2, -1.0]), 40)  # 5 cm voxels
    volume, colour, cweight = tsdf.fuse(grid, view, intrinsics, rgb, alpha, depth, truncation=3.0)
    assert volume.shape == grid.shape == (16, 8, 40)
    centres = [grid.origin + grid.voxel * np.array(ijk) for ijk in np.ndindex(*grid.shape)]
    pts = np.array(centres).reshape(*grid.shape, 3)
    x, dist = pts[..., 0], -pts[..., 2]  # distance along -Z
    mu = 3.0 * grid.voxel
    left = x < -0.02  # projects onto the wall's half (x / z * fx + cx < 16)
    right = x > 0.02
    front = left & (dist < 2.0 - 0.01)
    near_behind = left & (dist > 2.0 + 0.01) & (dist < 2.0 + mu - 0.01)
    far_behind = left & (dist > 2.0 + mu + 0.01)
    assert np.all(volume[front] > 0) and np.all(volume[near_behind] < 0) and np.all(volume[far_behind] == -1.0)
    np.testing.assert_allclose(volume[front & (dist < 2.0 - mu)], 1.0)  # truncated
    band = front & (dist > 2.0 - mu + 0.01)
    np.testing.assert_allclose(volume[band], (2.0 - dist[band]) / mu, atol=1e-5)
    assert np.all(volume[right] == 1.0)  # free space through the empty pixels
    # straight colour summed over the band observations
    inside = cweight > 0
    assert inside.any() and not inside[right].any()
    np.testing.assert_allclose(colour[inside] / cweight[inside, None], np.broadcast_to(COLOUR, colour[inside].shape),
                               atol=1e-5)


def test_view_cosines_of_a_facing_wall():
    _, intrinsics, _, _, depth = _view()
    cos = tsdf.view_cosines(depth, *intrinsics.T)
    h, w = depth.shape[1:]
    col, row = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    expected = 1.0 / np.sqrt(((col - 16) / 32) ** 2 + ((row - 16) / 32) ** 2 + 1.0)  # ray . wall normal
    inner = np.zeros_like(depth[0], bool)
    inner[1:-1, 1 : w // 2 - 1] = True  # interior of the wall (its neighbours are wall too)
    np.testing.assert_allclose(cos[0][inner], expected[inner], atol=1e-5)
    assert np.all(cos[0][:, w // 2 + 1 :] == tsdf.MIN_COSINE)  # empty pixels
    assert np.all(cos[0][0] == tsdf.MIN_COSINE)  # the border has no central difference
