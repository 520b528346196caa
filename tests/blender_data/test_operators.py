"""Import/export operators via bpy.ops on temp files, and camera paths as animated cameras."""

import json

import numpy as np
import pytest

from addon.core import camera as camera_model
from addon.blender import compat
from addon.core.formats import camera_path, ply
from addon.blender.importers import gaussians as gi
from tests.formats.conftest import make_gaussians, orbit_path

bpy = pytest.importorskip("bpy")


def test_ply_import_export_round_trip(operators, tmp_path):
    g = make_gaussians(40, 8, seed=9)
    src, dst = tmp_path / "in.ply", tmp_path / "out.ply"
    ply.write_ply(src, g)
    assert bpy.ops.nstudio.import_ply(filepath=str(src), color_space="linear") == {"FINISHED"}
    obj = bpy.context.view_layer.objects.active
    assert obj.name == "in" and len(obj.data.vertices) == 40 and obj[gi.PROP_COLOR_SPACE] == "linear"
    assert bpy.ops.nstudio.export_ply(filepath=str(dst)) == {"FINISHED"}
    assert dst.read_bytes() == src.read_bytes()


def test_ply_export_applies_the_object_transform(operators, tmp_path):
    g = make_gaussians(25, 3, seed=4)
    src, world, local = tmp_path / "in.ply", tmp_path / "world.ply", tmp_path / "local.ply"
    ply.write_ply(src, g)
    bpy.ops.nstudio.import_ply(filepath=str(src))
    obj = bpy.context.view_layer.objects.active
    obj.location = (1.0, -2.0, 0.5)
    obj.rotation_euler = (0.0, 0.0, np.pi / 2)   # +90 degrees about Z: (x, y) -> (-y, x)
    obj.scale = (2.0, 2.0, 2.0)
    bpy.context.view_layer.update()
    assert bpy.ops.nstudio.export_ply(filepath=str(world)) == {"FINISHED"}
    assert bpy.ops.nstudio.export_ply(filepath=str(local), world_space=False) == {"FINISHED"}
    out = ply.read_ply(world)
    m = g["means"].astype(np.float64)
    expected = np.stack([-m[:, 1], m[:, 0], m[:, 2]], axis=1) * 2.0 + [1.0, -2.0, 0.5]
    np.testing.assert_allclose(out["means"], expected, atol=1e-5)
    np.testing.assert_allclose(out["scales"], g["scales"] + np.log(2.0), atol=1e-5)
    np.testing.assert_array_equal(out["opacities"], g["opacities"])
    assert local.read_bytes() == src.read_bytes()


def test_ply_import_axis_conversion(operators, tmp_path):
    g = make_gaussians(3, 0)
    g["means"][:] = [[1, 2, 3], [0, 1, 0], [0, 0, 1]]
    src = tmp_path / "yup.ply"
    ply.write_ply(src, g)
    bpy.ops.nstudio.import_ply(filepath=str(src), axis_conversion="y_up_to_z_up")
    back = gi.read_gaussians(bpy.context.view_layer.objects.active)
    np.testing.assert_allclose(back["means"], [[1, -3, 2], [0, 0, 1], [0, -1, 0]], atol=1e-6)


def test_splat_import(operators, tmp_path):
    rec = np.zeros(2, [("p", "<f4", 3), ("s", "<f4", 3), ("c", "u1", 4), ("r", "u1", 4)])
    rec["p"] = [[1, 2, 3], [4, 5, 6]]
    rec["s"] = 0.1
    rec["c"] = [255, 128, 0, 200]
    rec["r"] = [255, 128, 128, 128]
    path = tmp_path / "two.splat"
    path.write_bytes(rec.tobytes())
    assert bpy.ops.nstudio.import_ply(filepath=str(path)) == {"FINISHED"}
    back = gi.read_gaussians(bpy.context.view_layer.objects.active)
    assert back["means"].tolist() == [[1, 2, 3], [4, 5, 6]] and back["shN"].shape == (2, 0, 3)


def test_import_error_is_reported(operators, tmp_path):
    path = tmp_path / "broken.ply"
    path.write_bytes(b"not a ply at all")
    with pytest.raises(RuntimeError, match="broken.ply: not a PLY file"):
        bpy.ops.nstudio.import_ply(filepath=str(path))
    assert not any(o.type == "MESH" and gi.is_gaussian_object(o) for o in bpy.data.objects)


def test_export_needs_gaussian_object(operators, tmp_path):
    assert not bpy.ops.nstudio.export_ply.poll()


def test_camera_path_import_creates_keyframes(operators, tmp_path):
    t = 48
    fy = np.linspace(500, 700, t).astype(np.float32)
    path_map = orbit_path(fy, 640, 360, 30.0)
    src = tmp_path / "camera_path.json"
    camera_path.write_camera_path(src, path_map)
    assert bpy.ops.nstudio.import_camera_path(filepath=str(src)) == {"FINISHED"}
    scene = bpy.context.scene
    cam = scene.camera
    assert cam.name == "camera_path" and cam.animation_data.action is not None
    assert (scene.frame_end - scene.frame_start + 1, scene.render.resolution_x, scene.render.fps) == (t, 640, 30)
    fcurves = compat.fcurves_for(cam)
    assert sorted((fc.data_path, fc.array_index) for fc in fcurves) == (
        [("location", i) for i in range(3)] + [("rotation_quaternion", i) for i in range(4)])
    assert all(len(fc.keyframe_points) == t for fc in fcurves)
    assert [(fc.data_path, len(fc.keyframe_points)) for fc in compat.fcurves_for(cam.data)] == [("lens", t)]
    # evaluate a few frames: the camera's world matrix and focal length match the path
    for i in (0, 17, t - 1):
        scene.frame_set(scene.frame_start + i)
        np.testing.assert_allclose(np.array(cam.matrix_world), path_map["world_from_camera"][i], atol=1e-5)
        fx, fy_b, cx, cy = camera_model.intrinsics_from_blender(
            cam.data.lens, cam.data.sensor_width, cam.data.sensor_height, cam.data.sensor_fit, cam.data.shift_x,
            cam.data.shift_y, 640, 360, scene.render.pixel_aspect_x, scene.render.pixel_aspect_y)
        np.testing.assert_allclose([fy_b, cx, cy], [fy[i], 320, 180], rtol=1e-4)

    # and back out through the export operator
    dst = tmp_path / "out.json"
    assert bpy.ops.nstudio.export_camera_path(filepath=str(dst)) == {"FINISHED"}
    back = camera_path.read_camera_path(dst)
    np.testing.assert_allclose(back["world_from_camera"], path_map["world_from_camera"], atol=1e-5)
    np.testing.assert_allclose(back["fy"], fy, rtol=1e-4)
    assert back["fps"] == 30.0 and json.loads(dst.read_text())["render_width"] == 640


def test_export_camera_path_from_scene_camera(operators, tmp_path):
    scene = bpy.context.scene
    cam = scene.camera  # the default scene's camera, animated here by keyframes inserted by hand
    scene.frame_start, scene.frame_end = 1, 3
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 200, 100, 100
    for f, x in ((1, 0.0), (3, 2.0)):
        cam.location.x = x
        cam.keyframe_insert("location", index=0, frame=f)
    cam.data.lens, cam.data.sensor_width, cam.data.sensor_fit = 50.0, 36.0, "AUTO"
    dst = tmp_path / "scene.json"
    assert bpy.ops.nstudio.export_camera_path(filepath=str(dst)) == {"FINISHED"}
    back = camera_path.read_camera_path(dst)
    assert back["world_from_camera"].shape == (3, 4, 4)
    np.testing.assert_allclose(back["world_from_camera"][:, 0, 3], [0.0, 1.0, 2.0], atol=1e-5)
    np.testing.assert_allclose(back["fy"], 50.0 / 36.0 * 200, rtol=1e-5)  # AUTO fit: the wider side
    assert scene.frame_current == 1


def test_export_camera_path_shift_is_an_error(operators, tmp_path):
    bpy.context.scene.camera.data.shift_x = 0.1
    with pytest.raises(RuntimeError, match="centred principal point"):
        bpy.ops.nstudio.export_camera_path(filepath=str(tmp_path / "x.json"))
