"""camera_model against Blender's own projection (bpy_extras.object_utils.world_to_camera_view)."""

from __future__ import annotations

import numpy as np
import pytest

from addon.core import camera as camera_model

bpy = pytest.importorskip("bpy")

CASES = [
    # lens, sensor w, sensor h, fit, shift x, shift y, res x, res y, percent, pixel aspect x, y
    (50.0, 36.0, 24.0, "AUTO", 0.0, 0.0, 64, 48, 100, 1.0, 1.0),
    (35.0, 36.0, 24.0, "AUTO", 0.1, -0.05, 48, 64, 100, 1.0, 1.0),       # portrait: sensor on the height
    (24.0, 36.0, 24.0, "HORIZONTAL", -0.2, 0.15, 64, 48, 50, 1.0, 1.0),  # percentage
    (85.0, 36.0, 20.0, "VERTICAL", 0.05, 0.1, 80, 40, 100, 1.0, 1.0),
    (40.0, 30.0, 20.0, "VERTICAL", 0.0, 0.0, 40, 80, 100, 1.0, 1.0),
    (50.0, 36.0, 24.0, "AUTO", 0.12, 0.07, 64, 48, 100, 1.0, 2.0),       # non-square pixels
    (50.0, 36.0, 24.0, "AUTO", -0.1, 0.2, 60, 50, 100, 2.0, 1.0),        # AUTO flips to vertical
]


def _project(point, world_from_camera, fx, fy, cx, cy):
    """Pinhole projection in PROTOCOL.md pixels (row 0 at the top)."""
    p = np.linalg.inv(world_from_camera) @ np.append(point, 1.0)
    x_cv, y_cv, z_cv = p[0], -p[1], -p[2]
    return fx * x_cv / z_cv + cx, fy * y_cv / z_cv + cy, z_cv


@pytest.mark.parametrize("case", CASES)
def test_intrinsics_match_blender_projection(case):
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    lens, sw, sh, fit, sx, sy, rx, ry, pct, pax, pay = case
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = rx, ry, pct
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = pax, pay
    cam_obj = scene.camera
    cam = cam_obj.data
    cam.lens, cam.sensor_width, cam.sensor_height, cam.sensor_fit = lens, sw, sh, fit
    cam.shift_x, cam.shift_y = sx, sy
    bpy.context.view_layer.update()

    width, height = camera_model.render_size(rx, ry, pct)
    fx, fy, cx, cy = camera_model.intrinsics_from_blender(lens, sw, sh, fit, sx, sy, width, height, pax, pay)
    wfc = np.array(cam_obj.matrix_world, dtype=np.float64)
    rng = np.random.default_rng(0)
    # Points in front of the camera, spread over (and beyond) the frame.
    for _ in range(20):
        local = np.array([rng.uniform(-2, 2), rng.uniform(-2, 2), -rng.uniform(2, 20), 1.0])
        point = (wfc @ local)[:3]
        ndc = world_to_camera_view(scene, cam_obj, Vector(point))
        u, v, z = _project(point, wfc, fx, fy, cx, cy)
        # Blender: x, y in [0, 1] from the bottom-left corner of the frame; z depth.
        assert u == pytest.approx(ndc.x * width, abs=1e-3)
        assert v == pytest.approx((1.0 - ndc.y) * height, abs=1e-3)
        assert z == pytest.approx(ndc.z, rel=1e-5)


def test_shift_convention():
    # Vertical fit: shift in units of the height; positive shift_x moves the principal point left.
    fx, fy, cx, cy = camera_model.intrinsics_from_blender(24.0, 36.0, 24.0, "VERTICAL", 0.1, -0.2, 400, 300)
    assert (fx, fy) == (300.0, 300.0)
    assert cx == pytest.approx(200 - 0.1 * 300) and cy == pytest.approx(150 - 0.2 * 300)


@pytest.mark.parametrize("fit, width, height", [("AUTO", 400, 300), ("AUTO", 300, 400), ("HORIZONTAL", 300, 400),
                                                 ("VERTICAL", 640, 360)])
def test_intrinsics_match_blender_projection_matrix(fit, width, height):
    """Our formula against Blender's own projection matrix (OpenGL: x_ndc = P00 x/-z - P02)."""
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
    cam = scene.camera
    cam.data.lens, cam.data.sensor_width, cam.data.sensor_height, cam.data.sensor_fit = 35.0, 36.0, 20.0, fit
    cam.data.shift_x, cam.data.shift_y = 0.07, -0.12
    p = np.array(cam.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=width, y=height))
    expected = (width / 2 * p[0, 0], height / 2 * p[1, 1], width / 2 * (1 - p[0, 2]), height / 2 * (1 + p[1, 2]))
    got = camera_model.intrinsics_from_blender(35.0, 36.0, 20.0, fit, 0.07, -0.12, width, height)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_inverse_round_trip_through_blender(case):
    lens, sw, sh, fit, sx, sy, rx, ry, pct, pax, pay = case
    width, height = camera_model.render_size(rx, ry, pct)
    want = camera_model.intrinsics_from_blender(lens, sw, sh, fit, sx, sy, width, height, pax, pay)
    lens_settings = camera_model.blender_from_intrinsics(*want, width, height)
    got = camera_model.intrinsics_from_blender(
        lens_settings.lens_mm, lens_settings.sensor_width, lens_settings.sensor_height, lens_settings.sensor_fit,
        lens_settings.shift_x, lens_settings.shift_y, width, height,
        lens_settings.pixel_aspect_x, lens_settings.pixel_aspect_y)
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_centred_principal_point_and_known_focal():
    # 50 mm on a 36 mm sensor across 64 px: fx = 50 / 36 * 64.
    fx, fy, cx, cy = camera_model.intrinsics_from_blender(50, 36, 24, "AUTO", 0, 0, 64, 48)
    assert (fx, fy, cx, cy) == pytest.approx((50 / 36 * 64, 50 / 36 * 64, 32.0, 24.0))


@pytest.mark.parametrize("bad", [dict(lens_mm=0), dict(width=0), dict(sensor_fit="DIAGONAL"), dict(sensor_width=-1)])
def test_bad_input_names_the_field(bad):
    args = dict(lens_mm=50, sensor_width=36, sensor_height=24, sensor_fit="AUTO", shift_x=0, shift_y=0,
                width=64, height=48)
    args.update(bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        camera_model.intrinsics_from_blender(**args)
