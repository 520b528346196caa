"""nskernels.mesh_raster: the chunked rasterizer against its dense twin and hand-worked geometry."""

from __future__ import annotations


import numpy as np
import pytest
import torch

import mesh_scenes
from nskernels import mesh_raster
from nskernels.camera import Cameras
from nskernels.mesh_raster import rasterize_mesh, rasterize_uv
from nskernels.reference import rasterize_mesh_dense


def _look_at(eye, target=(0.0, 0.0, 0.0)):
    """world_from_camera, Blender convention (looks down -Z, +Y up). [4, 4]"""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0], back)
    if np.linalg.norm(right) < 1e-6:
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
    return m


def _camera(eye, W=64, H=48, f=60.0, cx=None, cy=None, target=(0, 0, 0)):
    return Cameras(torch.tensor(_look_at(eye, target), dtype=torch.float32)[None],
                   torch.tensor([f]), torch.tensor([f * 1.1]),
                   torch.tensor([W / 2 if cx is None else cx]), torch.tensor([H / 2 if cy is None else cy]), W, H)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_soup_matches_dense_twin(seed, monkeypatch):
    # Small chunks so several chunks (and one-triangle chunks) are exercised.
    monkeypatch.setattr(mesh_raster, "_CANDIDATES_PER_CHUNK", 97)
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(90, 3, generator=g) * 0.6
    F = torch.randint(0, 90, (150, 3), generator=g)
    cam = _camera((0.5, -3.0, 1.2), cx=30.3, cy=25.7)
    fr = rasterize_mesh(V, F, cam)
    tri, depth = rasterize_mesh_dense(V, F, cam)
    hit = tri >= 0
    assert 0.1 < hit.float().mean() < 0.95
    # Pixel centres exactly on a shared edge may go either way between twins with different
    # float paths; anything else must be identical.
    assert (fr.triangle != tri).float().mean() < 0.003
    same = (fr.triangle == tri) & hit
    np.testing.assert_allclose(fr.depth[same].double(), depth[same], rtol=1e-5)
    assert torch.isinf(fr.depth[~hit & (fr.triangle < 0)]).all()


def test_quad_facing_camera_pixel_centres_and_depth():
    # A 2 x 2 m square at z = 0 seen from 4 m straight above: it spans x, y in [-1, 1], i.e.
    # pixel columns cx +- f / 4. Pixel c is covered iff its centre c + 0.5 lies inside.
    V = torch.tensor([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=torch.float32)
    F = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uvs = torch.tensor([[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 1], [0, 1]]], dtype=torch.float32)
    cam = Cameras(torch.tensor(_look_at((0, 0, 4.0), (0, 0, 0)), dtype=torch.float32)[None],
                  torch.tensor([40.0]), torch.tensor([40.0]), torch.tensor([32.0]), torch.tensor([32.0]), 64, 64)
    fr = rasterize_mesh(V, F, cam, uvs)
    cols = torch.nonzero((fr.triangle >= 0).any(0)).squeeze(1)
    # x = f * X / Z + cx: X in [-1, 1] -> [22, 42]; centres 22.5 .. 41.5 -> columns 22 .. 41.
    assert (int(cols.min()), int(cols.max())) == (22, 41)
    hit = fr.triangle >= 0
    np.testing.assert_allclose(fr.depth[hit].numpy(), 4.0, rtol=1e-6)
    # Normal faces the camera (+Z world); UV at the centre of pixel (row 31, col 31).
    np.testing.assert_allclose(fr.normal[hit].numpy(), np.tile([0, 0, 1.0], (int(hit.sum()), 1)), atol=1e-6)
    # _look_at with a straight-down view: right = +X, up = +Y, so image row r grows towards -Y.
    u_expect = (31.5 - 32.0) / 40.0 * 4.0 / 2.0 + 0.5
    v_expect = -(31.5 - 32.0) / 40.0 * 4.0 / 2.0 + 0.5
    np.testing.assert_allclose(fr.uv[31, 31].numpy(), [u_expect, v_expect], atol=1e-6)
    np.testing.assert_allclose(fr.barycentric[hit].sum(-1).numpy(), 1.0, atol=1e-6)


def test_perspective_correct_barycentrics_reproduce_the_surface_point():
    V, F, uvs = mesh_scenes.uv_sphere(12, 24)
    cam = _camera((0.3, -3.5, 1.0), W=80, H=60)
    fr = rasterize_mesh(torch.tensor(V), torch.tensor(F), cam, torch.tensor(uvs))
    hit = fr.triangle >= 0
    tri = torch.tensor(V)[torch.tensor(F).long()][fr.triangle[hit]]  # [n, 3, 3]
    p = (fr.barycentric[hit][:, :, None] * tri).sum(1)
    # The point lies on the ray through the pixel centre at the reported depth.
    cv = cam.camera_from_world()[0]
    pc = p @ cv[:3, :3].T + cv[:3, 3]
    rows, cols = hit.nonzero().T
    np.testing.assert_allclose(pc[:, 2].numpy(), fr.depth[hit].numpy(), rtol=1e-5)
    np.testing.assert_allclose((cam.fx[0] * pc[:, 0] / pc[:, 2] + cam.cx[0]).numpy(), (cols + 0.5).numpy(), atol=1e-3)
    np.testing.assert_allclose((cam.fy[0] * pc[:, 1] / pc[:, 2] + cam.cy[0]).numpy(), (rows + 0.5).numpy(), atol=1e-3)


def test_uv_raster_maps_texel_centres_to_surface_points():
    # A flat square whose UVs equal (x, y) in [0, 1]: the texel (row r, col c) centre is
    # u = (c + 0.5) / S, v = 1 - (r + 0.5) / S, so its point is (u, v, 0).
    V = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float32)
    F = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uvs = V[F][..., :2].clone()
    S = 16
    fr = rasterize_uv(V, F, uvs, S)
    assert (fr.triangle >= 0).all()
    r, c = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    expect = torch.stack([(c + 0.5) / S, 1 - (r + 0.5) / S, torch.zeros(S, S)], -1)
    np.testing.assert_allclose(fr.position.numpy(), expect.numpy(), atol=1e-6)
    np.testing.assert_allclose(fr.normal[..., 2].numpy(), 1.0)


def test_degenerate_and_culled_triangles_draw_nothing():
    V = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0.5], [0, 1, 5.0], [1, 1, 5.0]], dtype=torch.float32)
    # A collinear triangle, a repeated-vertex triangle, and one crossing behind the camera.
    F = torch.tensor([[0, 1, 2], [0, 0, 3], [3, 4, 5]])
    cam = _camera((0.0, 0.0, 4.0), target=(0.0, 0.0, 0.0))
    fr = rasterize_mesh(V, F, cam)
    assert (fr.triangle == -1).all() and torch.isinf(fr.depth).all()
    assert torch.isfinite(fr.normal).all() and torch.isfinite(fr.barycentric).all()
    uv = rasterize_uv(V, F, torch.zeros(3, 3, 2), 8)
    assert (uv.triangle == -1).all()


def test_view_missing_the_mesh_is_empty():
    V, F, _ = mesh_scenes.uv_sphere(6, 12)
    cam = _camera((0.0, -5.0, 0.0), target=(0.0, -10.0, 0.0))  # looking away
    fr = rasterize_mesh(torch.tensor(V), torch.tensor(F), cam)
    assert (fr.triangle == -1).all()


def test_bad_faces_are_refused():
    V = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="outside"):
        rasterize_mesh(V, torch.tensor([[0, 1, 3]]), _camera((0, -3, 0)))
