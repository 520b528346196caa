"""Capture maths without Blender: cameras, splits, surface sampling, point colouring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from addon.core import camera as camera_model
from addon.core import capture_layout as cm
from addon.core import surface_points as sp

BOX = (np.array([-1.0, -0.5, 0.0]), np.array([1.0, 1.5, 1.2]))


def _project_independent(cams, points):
    """Pinhole projection written from the camera's axes (no matrix inverse, unlike project())."""
    m = np.asarray(cams["world_from_camera"], dtype=np.float64)
    right, up, back, eye = m[:, :3, 0], m[:, :3, 1], m[:, :3, 2], m[:, :3, 3]
    rel = points[None] - eye[:, None]
    z = -np.einsum("tpi,ti->tp", rel, back)  # distance in front of the camera (Blender looks down -Z)
    x = np.einsum("tpi,ti->tp", rel, right)
    y = np.einsum("tpi,ti->tp", rel, up)
    return np.stack([cams["cx"] + cams["fx"] * x / z, cams["cy"] - cams["fy"] * y / z], -1), z


@pytest.mark.parametrize("layout", cm.LAYOUTS)
def test_cameras_look_at_the_box_centre(layout):
    cams = cm.capture_cameras(*BOX, layout=layout, count=24, width=96, height=64, lens_mm=35.0)
    m = cams["world_from_camera"].astype(np.float64)
    assert m.shape == (24, 4, 4) and cams["world_from_camera"].dtype == np.float32
    rot = m[:, :3, :3]
    np.testing.assert_allclose(rot.transpose(0, 2, 1) @ rot, np.broadcast_to(np.eye(3), rot.shape), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-6)
    centre = (BOX[0] + BOX[1]) / 2
    pix, z = _project_independent(cams, centre[None])
    np.testing.assert_allclose(pix[:, 0], np.broadcast_to([48.0, 32.0], (24, 2)), atol=1e-3)
    assert (z > 0).all()
    # All 8 box corners are in view and in front of the near plane.
    corners = np.array([[x, y, z] for x in BOX[0][:1].tolist() + BOX[1][:1].tolist()
                        for y in (BOX[0][1], BOX[1][1]) for z in (BOX[0][2], BOX[1][2])])
    pix, z = _project_independent(cams, corners)
    assert (pix[..., 0] > 0).all() and (pix[..., 0] < 96).all()
    assert (pix[..., 1] > 0).all() and (pix[..., 1] < 64).all()
    assert (z > cams["near"]).all() and (z < cams["far"]).all()
    # project() (matrix inverse) agrees with the axis formula.
    p2, z2 = camera_model.project(corners, cams)
    np.testing.assert_allclose(p2, pix, atol=1e-3)
    if layout != "sphere":
        # Upright cameras above the centre: world +Z points up in the image (smaller row).
        assert (m[:, 2, 3] > centre[2]).all()
        pix_up, _ = _project_independent(cams, np.array([centre, centre + [0, 0, 0.1]]))
        assert (pix_up[:, 1, 1] < pix_up[:, 0, 1]).all()


def test_kernels_camera_agrees():
    torch = pytest.importorskip("torch")
    from nskernels.camera import Cameras

    cams = cm.capture_cameras(*BOX, layout="hemisphere", count=6, width=40, height=30)
    pts = np.random.default_rng(1).uniform(BOX[0], BOX[1], size=(20, 3))
    kc = Cameras.from_wire(cams)
    cam = torch.einsum("cij,pj->cpi", kc.camera_from_world().double()[:, :3, :3], torch.tensor(pts)) \
        + kc.camera_from_world().double()[:, None, :3, 3]
    uv = cam[..., :2] / cam[..., 2:] * torch.stack([kc.fx, kc.fy], -1)[:, None].double() \
        + torch.stack([kc.cx, kc.cy], -1)[:, None].double()
    pix, _ = camera_model.project(pts, cams)
    np.testing.assert_allclose(pix, uv.numpy(), atol=1e-3)


def test_generated_intrinsics_follow_blender_auto_sensor_fit():
    cams = cm.capture_cameras(*BOX, count=2, width=200, height=100, lens_mm=50.0)
    # AUTO fit, written out: the 36 mm sensor spans the larger side, here the width.
    f = 50.0 / 36.0 * 200
    assert (cams["fx"], cams["fy"], cams["cx"], cams["cy"]) == pytest.approx((f, f, 100.0, 50.0), rel=1e-12)
    cams = cm.capture_cameras(*BOX, count=2, width=100, height=200, lens_mm=36.0)
    assert cams["fx"] == pytest.approx(200.0)  # portrait: the sensor spans the height
    # The lens the temporary Blender camera gets gives the same intrinsics through camera_model.
    lens = cm.layout_lens(36.0)
    assert (lens.sensor_fit, lens.shift_x, lens.shift_y) == ("AUTO", 0.0, 0.0)
    assert camera_model.intrinsics_from_blender(lens.lens_mm, lens.sensor_width, lens.sensor_height, "AUTO",
                                                0.0, 0.0, 100, 200) == (cams["fx"], cams["fy"], cams["cx"], cams["cy"])
    with pytest.raises(ValueError, match="width"):
        cm.capture_cameras(*BOX, count=2, width=0, height=10)
    with pytest.raises(ValueError, match="lens_mm"):
        cm.layout_lens(0.0)


def test_cameras_map_has_per_view_intrinsics_and_strips_scale():
    lenses = [camera_model.BlenderLens(35.0, 36.0, 24.0, "AUTO", 0.1, -0.05),
              camera_model.BlenderLens(60.0, 36.0, 20.0, "VERTICAL", 0.0, 0.2)]
    m = cm.look_at(np.array([[4.0, -3.0, 2.0], [-3.0, -4.0, 3.0]]), np.zeros(3))
    scaled = m.copy()
    scaled[0, :3, :3] *= 2.5  # a scaled camera object: Blender renders it unscaled
    cams = camera_model.lens_cameras_map(scaled, lenses, 48, 36, near=0.1, far=100.0)
    np.testing.assert_allclose(cams["world_from_camera"], m, atol=1e-6)
    assert cams["world_from_camera"].dtype == np.float32
    for key in ("fx", "fy", "cx", "cy"):
        assert cams[key].shape == (2,)
    for i, lens in enumerate(lenses):
        want = camera_model.intrinsics_from_blender(lens.lens_mm, lens.sensor_width, lens.sensor_height,
                                                    lens.sensor_fit, lens.shift_x, lens.shift_y, 48, 36)
        assert tuple(cams[k][i] for k in ("fx", "fy", "cx", "cy")) == want
    assert (cams["width"], cams["height"], cams["near"], cams["far"]) == (48, 36, 0.1, 100.0)
    # Per-view arrays work where the maths reads cameras: the look-at target lands on each principal point.
    pix, _ = camera_model.project(np.zeros((1, 3)), cams)
    np.testing.assert_allclose(pix[:, 0], np.stack([cams["cx"], cams["cy"]], -1), atol=1e-4)
    with pytest.raises(ValueError, match="1 lenses for 2"):
        camera_model.lens_cameras_map(m, lenses[:1], 48, 36, 0.1, 100.0)
    bad = m.copy()
    bad[1, :3, 0] = 0.0
    with pytest.raises(ValueError, match="camera 1: matrix has a zero-length axis"):
        camera_model.lens_cameras_map(bad, lenses, 48, 36, 0.1, 100.0)


def test_look_at_straight_down_is_defined():
    m = cm.look_at(np.array([0.0, 0.0, 5.0]), np.zeros(3))
    np.testing.assert_allclose(m[:3, 2], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(m[:3, :3].T @ m[:3, :3], np.eye(3), atol=1e-12)


def test_holdout_split():
    train, test = cm.holdout_split(10, 4)
    assert test.tolist() == [0, 4, 8] and train.tolist() == [1, 2, 3, 5, 6, 7, 9]
    train, test = cm.holdout_split(5, 0)
    assert train.tolist() == [0, 1, 2, 3, 4] and test.size == 0


def test_sampling_is_area_weighted_and_uniform():
    # Two disjoint triangles with areas 0.5 and 1.5 (ratio 1:3).
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0], [8, 0, 0], [5, 1, 0]], dtype=np.float64)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    n = 40_000
    pts, face = sp.sample_surface(verts, faces, n, seed=11)
    frac = (face == 1).mean()
    sigma = math.sqrt(0.75 * 0.25 / n)  # binomial standard deviation, about 0.0022
    assert abs(frac - 0.75) < 4 * sigma
    np.testing.assert_array_equal(pts[:, 0] >= 4.999, face == 1)  # each point lies on its face
    small = pts[face == 0].astype(np.float64)
    assert (small[:, 0] >= -1e-6).all() and (small[:, 1] >= -1e-6).all() and (small.sum(1) <= 1 + 1e-6).all()
    # Uniform inside a triangle: the part with x < 0.5 holds 3/4 of the unit right triangle's area.
    m = len(small)
    assert abs((small[:, 0] < 0.5).mean() - 0.75) < 4 * math.sqrt(0.75 * 0.25 / m)
    again, _ = sp.sample_surface(verts, faces, n, seed=11)
    np.testing.assert_array_equal(pts, again)
    with pytest.raises(ValueError):
        sp.sample_surface(verts, np.array([[0, 1, 9]]), 10)


def test_colour_points_uses_depth_for_visibility():
    cams = cm.capture_cameras([-1, -1, -1], [1, 1, 1], layout="ring", count=2, width=33, height=33)
    eye = cams["world_from_camera"][0, :3, 3].astype(np.float64)
    centre = np.zeros(3)
    d = (centre - eye) / np.linalg.norm(centre - eye)
    near_pt, far_pt = eye + 2.0 * d, eye + 3.0 * d  # both on camera 0's optical axis
    images = np.zeros((2, 33, 33, 4), np.float32)
    images[0] = [1.0, 0.5, 0.25, 1.0]
    images[1] = [0.0, 0.0, 0.0, 0.0]  # camera 1 sees nothing
    depths = np.full((2, 33, 33), np.inf, np.float32)
    depths[0] = 2.0  # planar depth of the near point on the axis
    cols, seen = sp.colour_points(np.array([near_pt, far_pt]), images, depths, cams)
    assert seen.tolist() == [1, 0]
    np.testing.assert_allclose(cols[0], [1.0, 0.5, 0.25])
    np.testing.assert_allclose(cols[1], [0.5, 0.5, 0.5])
