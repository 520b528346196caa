"""THE occlusion test: a Cycles mesh and server-rendered splats, composited by depth through F12.

A green Gaussian "wall" stands tilted in depth (y = 0.5 x, seen from a camera on -Y looking +Y):
its left half is nearer to the camera than the origin, its right half farther. A thin red
emissive bar along x at y = 0 crosses it. Where x < 0 the wall hides the bar (green); where x > 0
the bar hides the wall (red); above and below the bar the wall shows (green); outside the wall
the black world shows.
"""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import final_shot_helpers as h  # noqa: E402
from addon.blender import compat# noqa: E402

GREEN = (0.05, 0.9, 0.05)
RED = (1.0, 0.0, 0.0)


def _wall(slope=0.5, spacing=0.06):
    """Opaque flat Gaussians on the plane y = slope * x, x in [-2, 2], z in [-1.2, 1.2]."""
    xs, zs = np.meshgrid(np.arange(-2.0, 2.0 + 1e-6, spacing), np.arange(-1.2, 1.2 + 1e-6, spacing))
    x, z = xs.ravel(), zs.ravel()
    n = len(x)
    means = np.stack([x, slope * x, z], 1).astype(np.float32)
    # Rotate the local x axis onto the wall's in-plane direction (1, slope, 0): about +Z by atan(slope).
    angle = np.arctan(slope)
    quats = np.tile([np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)], (n, 1)).astype(np.float32)
    scales = np.tile(np.log([spacing * 0.9, 0.002, spacing * 0.9]), (n, 1)).astype(np.float32)
    return {
        "means": means, "quats": quats, "scales": scales,
        "opacities": np.full(n, 6.0, np.float32),
        "sh0": np.tile(h.sh0_for(GREEN), (n, 1)),
        "shN": np.zeros((n, 0, 3), np.float32),
    }


def _build(server):
    from addon.blender import final_shot
    from addon.blender.importers.gaussians import create_gaussian_object

    scene = bpy.context.scene
    for obj in list(scene.objects):
        bpy.data.objects.remove(obj)
    h.set_resolution(scene)
    h.use_cycles(scene)
    h.black_world(scene)
    cam = h.add_camera(scene, location=(0.0, -6.0, 0.0), lens=30.0)
    # 0.5 tall: about 4 px, so the checked centre row is fully covered whatever Cycles' sample
    # pattern (Blender 4.2 and 5.0 antialias a 2-3 px bar differently).
    bar = h.add_emissive_box(scene, "Bar", location=(0.0, 0.0, 0.0), size=(3.6, 0.1, 0.5), colour=RED)
    splats = create_gaussian_object("Wall", _wall(), collection=scene.collection)
    companion = final_shot.setup_final_shot(scene)
    companion.nstudio_final_shot.endpoint = server.endpoint
    return scene, companion, cam, bar, splats


def _check_frame(img, scene, cam):
    def at(point):
        return img[h.project(point, cam, scene)][:3]

    # Bar crossing the wall: left of centre the wall is nearer, right of centre the bar is.
    for x in (-1.5, -1.0, -0.6):
        np.testing.assert_allclose(at((x, -0.05, 0.0)), GREEN, atol=0.03, err_msg=f"wall in front at x={x}")
    for x in (0.6, 1.0, 1.5):
        np.testing.assert_allclose(at((x, -0.05, 0.0)), RED, atol=0.03, err_msg=f"bar in front at x={x}")
    # Above and below the bar: the wall alone.
    for x, z in ((-1.0, 0.7), (1.0, 0.7), (1.0, -0.7)):
        np.testing.assert_allclose(at((x, 0.5 * x, z)), GREEN, atol=0.03, err_msg=f"wall at {(x, z)}")
    # Beyond the wall's top edge: black world.
    np.testing.assert_allclose(at((0.0, 0.0, 1.6)), (0, 0, 0), atol=0.03)


def test_mesh_and_splats_occlude_each_other(blender_addon, server, tmp_path):
    scene, companion, cam, bar, splats = _build(server)
    # The main renderer must not draw the display proxy; the companion scene sees the Gaussians.
    assert compat.scene_compositor(scene) is not None and scene.render.use_compositing
    assert companion.render.engine == "NSTUDIO_SPLATS" and companion.camera == cam
    assert splats.name in companion.objects
    h.render_exr(scene, tmp_path / "shot.exr")
    _check_frame(h.read_exr(tmp_path / "shot.exr"), scene, cam)


def test_setup_is_idempotent(blender_addon, server):
    from addon.blender import final_shot

    scene, companion, *_ = _build(server)
    groups, scenes = len(bpy.data.node_groups), len(bpy.data.scenes)
    assert final_shot.setup_final_shot(scene) == companion
    assert (len(bpy.data.node_groups), len(bpy.data.scenes)) == (groups, scenes)


def test_animated_camera(blender_addon, server, tmp_path):
    scene, companion, cam, *_ = _build(server)
    scene.frame_start, scene.frame_end = 1, 2
    cam.location = (0.0, -6.0, 0.0)
    cam.keyframe_insert("location", frame=1)
    cam.location = (0.0, -5.0, 0.35)  # closer and higher at frame 2
    cam.keyframe_insert("location", frame=2)
    h.render_exr(scene, tmp_path / "anim_", animation=True)
    assert (companion.frame_start, companion.frame_end) == (1, 2)  # kept in sync
    frames = []
    for frame in (1, 2):
        img = h.read_exr(tmp_path / f"anim_{frame:04d}.exr")
        scene.frame_set(frame)
        _check_frame(img, scene, cam)
        frames.append(img)
    assert np.abs(frames[0] - frames[1]).max() > 0.5


def test_operator_reports_a_scene_without_gaussians(blender_addon):
    with pytest.raises(RuntimeError, match="no Gaussian objects"):
        bpy.ops.nstudio.setup_final_shot()
    assert compat.scene_compositor(bpy.context.scene) is None
