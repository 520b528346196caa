"""Issue 16, reliability 10: a frame whose splats could not be rendered is never written.

Rendered on its own, a splat scene's error stops Blender before it writes. In a final shot the
companion's error does not stop the main render, so `addon.blender.frame_guard` removes the
written frame again. Nothing listens on the discard port (9): the splat render fails after its
connect timeout, exactly as with a .blend that names another machine's (or a stopped) server.
"""

from __future__ import annotations

import os

import pytest

bpy = pytest.importorskip("bpy")

import final_shot_helpers as h  # noqa: E402
from test_occlusion import _build  # noqa: E402
from test_render_engine import _tiny_gaussians  # noqa: E402

DEAD = "tcp://127.0.0.1:9"


def test_a_splat_scene_without_its_server_writes_no_frame(blender_addon, tmp_path):
    from addon.blender.importers.gaussians import create_gaussian_object

    scene = bpy.context.scene
    h.set_resolution(scene)
    h.add_camera(scene)
    create_gaussian_object("Splats", _tiny_gaussians(), collection=scene.collection)
    scene.render.engine = "NSTUDIO_SPLATS"
    scene.nstudio_final_shot.endpoint = DEAD
    with pytest.raises(RuntimeError, match="no answer from the Neural Studio server at tcp://127.0.0.1:9"):
        h.render_exr(scene, tmp_path / "splats.exr")
    assert os.listdir(tmp_path) == []


def test_a_final_shot_whose_splats_fail_writes_no_frame(blender_addon, server, tmp_path):
    from addon.blender import frame_guard

    scene, companion, *_ = _build(server)
    companion.nstudio_final_shot.endpoint = DEAD
    before = len(frame_guard.removed)
    h.render_exr(scene, tmp_path / "shot.exr")
    assert os.listdir(tmp_path) == []
    path, reason = frame_guard.removed[-1]
    assert len(frame_guard.removed) == before + 1 and path == str(tmp_path / "shot.exr")
    assert "no answer from the Neural Studio server at tcp://127.0.0.1:9" in reason

    # An animation: every frame is checked on its own, none is kept.
    scene.frame_start, scene.frame_end = 1, 2
    h.render_exr(scene, tmp_path / "anim_", animation=True)
    assert os.listdir(tmp_path) == []

    # The same shot with its server answering is written (the guard keeps good frames).
    companion.nstudio_final_shot.endpoint = server.endpoint
    scene.frame_start, scene.frame_end = 1, 1
    h.render_exr(scene, tmp_path / "shot.exr")
    assert os.listdir(tmp_path) == ["shot.exr"]
