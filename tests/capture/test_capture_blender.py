"""addon.capture with real bpy 5.0.1: a cube on a plane, 4 views at 33x33, headless renders."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon import capture_math  # noqa: E402
from addon.capture import CaptureOptions, capture  # noqa: E402

pytestmark = pytest.mark.blender

CUBE = (np.array([-0.5, -0.5, 0.0]), np.array([0.5, 0.5, 1.0]))
PLANE_HALF = 1.5


@pytest.fixture(autouse=True)
def clean_file():
    bpy.ops.wm.read_homefile(app_template="")
    yield
    bpy.ops.wm.read_homefile(app_template="")


def _build_scene():
    for obj in list(bpy.data.objects):
        if obj.type == "MESH":
            bpy.data.objects.remove(obj)
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.0, 0.0, 0.5))
    cube = bpy.context.active_object
    bpy.ops.mesh.primitive_plane_add(size=2 * PLANE_HALF, location=(0.0, 0.0, 0.0))
    plane = bpy.context.active_object
    return cube, plane


def _ray_depth(eye, direction):
    """Distance to the first hit of the cube (slab test) or the plane z = 0, along a unit ray."""
    with np.errstate(divide="ignore"):
        t1 = (CUBE[0] - eye) / direction
        t2 = (CUBE[1] - eye) / direction
    t_near = np.max(np.minimum(t1, t2))
    t_far = np.min(np.maximum(t1, t2))
    hits = []
    if t_near <= t_far and t_far > 0:
        hits.append(t_near)
    if direction[2] < 0:
        t = -eye[2] / direction[2]
        p = eye + t * direction
        if abs(p[0]) <= PLANE_HALF and abs(p[1]) <= PLANE_HALF:
            hits.append(t)
    return min(hits)


@pytest.mark.parametrize("engine, samples", [("WORKBENCH", 1), ("CYCLES", 2)])
def test_capture_cube_on_plane(engine, samples):
    cube, plane = _build_scene()
    scene = bpy.context.scene
    before = (scene.render.engine, scene.render.resolution_x, scene.render.filepath, scene.camera,
              len(bpy.data.objects), len(bpy.data.cameras), scene.render.film_transparent)
    opts = CaptureOptions(count=4, width=33, height=33, engine=engine, samples=samples, points=2000, seed=1)
    out = capture([cube, plane], opts)

    images, depths, cams = out["images"], out["depths"], out["cameras"]
    assert images.shape == (4, 33, 33, 4) and images.dtype == np.float32
    assert depths.shape == (4, 33, 33) and depths.dtype == np.float32
    assert cams["world_from_camera"].shape == (4, 4, 4) and (cams["width"], cams["height"]) == (33, 33)
    assert out["points"].dtype == np.float32 and out["points"].shape[1] == 3
    assert out["colors"].shape == out["points"].shape

    # Empty background: alpha 0, no colour, no depth; covered pixels have finite depth.
    alpha = images[..., 3]
    empty = alpha == 0.0
    assert empty.sum() > 50, "the corners of the views should miss the plane"
    assert (images[empty][:, :3] == 0).all() and np.isinf(depths[empty]).all()
    # Depth is not antialiased (one sample per pixel), so only clearly covered pixels must have it.
    assert np.isfinite(depths[alpha > 0.9]).all()
    assert (alpha[:, 16, 16] > 0.99).all()

    # Centre pixel (33 px: its centre is the principal point) sees the cube at the known depth.
    m = cams["world_from_camera"].astype(np.float64)
    for i in range(4):
        eye, forward = m[i, :3, 3], -m[i, :3, 2]
        expected = _ray_depth(eye, forward)  # on the optical axis, ray distance = depth along -Z
        assert abs(depths[i, 16, 16] - expected) < 0.01 * expected, (i, depths[i, 16, 16], expected)

    # Points lie on the surfaces and got colours from the renders (finite, non-negative).
    p = out["points"]
    on_plane = np.abs(p[:, 2]) < 1e-4
    on_cube = np.all((p >= CUBE[0] - 1e-4) & (p <= CUBE[1] + 1e-4), axis=1)
    assert (on_plane | on_cube).all() and on_cube.any() and on_plane.any()
    assert np.isfinite(out["colors"]).all() and (out["colors"] >= 0).all()
    # Points hidden under the cube (on the plane, inside its footprint) are never visible.
    # (0.2 m inside the footprint: more than the 2 % depth tolerance at these distances.)
    hidden = on_plane & (np.abs(p[:, 0]) < 0.3) & (np.abs(p[:, 1]) < 0.3)
    assert not hidden.any()

    # Everything capture changed is back; no temporary camera is left behind.
    after = (scene.render.engine, scene.render.resolution_x, scene.render.filepath, scene.camera,
             len(bpy.data.objects), len(bpy.data.cameras), scene.render.film_transparent)
    assert after == before


def test_capture_hides_other_objects_and_checks_options():
    cube, plane = _build_scene()
    out = capture([cube], CaptureOptions(count=2, width=17, height=17, engine="WORKBENCH", points=0))
    # Only the cube: its bounding sphere frames the view and the plane is hidden from the render.
    expected_centre = capture_math.capture_cameras(CUBE[0], CUBE[1], count=2, width=17, height=17)
    np.testing.assert_allclose(out["cameras"]["world_from_camera"], expected_centre["world_from_camera"], atol=1e-5)
    assert len(out["points"]) == 0
    assert plane.hide_render is False
    with pytest.raises(ValueError, match="engine"):
        capture([cube], CaptureOptions(engine="POVRAY"))
