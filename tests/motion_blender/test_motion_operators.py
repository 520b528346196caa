"""The Motion operators with the add-on enabled: bone map auto/edit/save/load, retarget, the
motion.recover result handler (a synthetic Motion map with camera and mesh), file import."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon.blender import compat, motion_import  # noqa: E402
from addon.core import handlers, jobs  # noqa: E402
from addon.core.motion import amass, synthetic  # noqa: E402
from tests.motion_blender.test_motion_blender import _build_other_rig  # noqa: E402


def _select_only(obj):
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj


def test_bone_map_edit_save_load_and_retarget(blender_addon):
    walk = synthetic.walk(30)
    body = motion_import.import_motion(bpy.context, walk.to_map(), "Body")
    bpy.context.scene.nstudio_motion_source = body
    rig = _build_other_rig()
    _select_only(rig)
    assert bpy.ops.nstudio.bone_map_auto() == {"FINISHED"}
    rows = {r.canonical: r for r in rig.nstudio_bone_map}
    assert rows["left_knee"].target == "Bip_L_Calf" and rows["head"].target == "Bip_Head"
    rows["head"].target = ""  # the user unmaps the head
    assert bpy.ops.nstudio.bone_map_save_preset(name="Test Rig") == {"FINISHED"}
    rig.nstudio_bone_map.clear()
    assert bpy.ops.nstudio.bone_map_load_preset(preset="user:Test_Rig.json") == {"FINISHED"}
    rows = {r.canonical: r for r in rig.nstudio_bone_map}
    assert rows["head"].target == "" and rows["right_elbow"].target == "Bip_R_Forearm"
    assert bpy.ops.nstudio.motion_retarget() == {"FINISHED"}
    strip = rig.animation_data.nla_tracks[0].strips[0]
    keyed = {fc.data_path.split('"')[1] for fc in compat.action_fcurves(strip.action)}
    assert "Bip_L_Calf" in keyed and "Bip_Head" not in keyed
    assert len(rig.animation_data.nla_tracks) == 1


def test_recover_result_handler_builds_body_camera_and_mesh(blender_addon):
    walk = synthetic.walk(20)
    t = walk.frames
    w2c = np.tile(np.eye(4, dtype=np.float32), (t, 1, 1))
    w2c[:, :3, 3] = [0.0, -4.0, 1.0]
    w2c[:, :3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]  # looking along +Y at the body
    w2c[:, 0, 3] += np.linspace(0, 0.5, t)
    camera = {"world_from_camera": w2c, "fx": 800.0, "fy": 800.0, "cx": 320.0, "cy": 240.0,
              "width": 640, "height": 480}
    v = walk.rest[[0, 4, 5]].astype(np.float32)
    mesh = {"vertices": v, "faces": np.array([[0, 1, 2]], np.int32),
            "skin_index": np.array([[0, 4], [4, 0], [5, 0]], np.int32),
            "skin_weight": np.array([[1.0, 0.0], [0.75, 0.25], [1.0, 0.0]], np.float32)}
    outputs = walk.to_map() | {"camera": camera, "mesh": mesh, "keypoints2d": np.zeros((t, 17, 3), np.float32)}
    record = jobs.JobRecord(request_id="r1", pipeline="motion.recover", id="job1", target="Recovered")
    assert handlers.get_handler("motion.recover").on_result(record, outputs) is None
    body = bpy.data.objects["Recovered"]
    assert body.type == "ARMATURE" and body["nstudio_job"] == "job1"
    cam = bpy.data.objects["Recovered Camera"]
    assert bpy.context.scene.camera == cam
    bpy.context.scene.frame_set(bpy.context.scene.frame_start + t - 1)
    np.testing.assert_allclose(np.array(cam.matrix_world), w2c[-1], atol=1e-5)
    assert cam.data.lens == pytest.approx(800.0 * 36.0 / 640.0)
    me = bpy.data.objects["Recovered Mesh"]
    group = me.vertex_groups["left_knee"]
    assert group.weight(1) == pytest.approx(0.75)
    assert any(m.startswith("L down") or m.startswith("R down") for m in bpy.context.scene.timeline_markers.keys())


def test_import_amass_npz_file_operator(blender_addon, tmp_path):
    walk = synthetic.walk(25)
    path = tmp_path / "clip.npz"
    np.savez(path, **{k: v for k, v in amass.to_amass(walk).items() if k != "gender"})
    assert bpy.ops.nstudio.motion_import_file(filepath=str(path)) == {"FINISHED"}
    obj = bpy.context.scene.nstudio_motion_source
    assert obj.type == "ARMATURE"
    bpy.context.scene.frame_set(bpy.context.scene.frame_start + 10)
    heads = np.array([obj.matrix_world @ obj.pose.bones[n].head for n in walk.names])
    np.testing.assert_allclose(heads, walk.joints[10], atol=1e-4)


def test_recover_request_and_the_operator_refuses_clearly_without_the_pipeline(blender_addon, tmp_path):
    from addon.blender import motion_ui, session
    from addon.core.formats.png import write_png

    video = tmp_path / "clip.png"  # Blender opens a still image as a one-frame movie clip
    write_png(str(video), np.full((8, 8, 4), 200, np.uint8))
    clip = bpy.data.movieclips.load(str(video))
    inputs, params = motion_ui.recover_request(str(video), clip, (0, 0))
    assert inputs["video"].dtype == np.uint8 and inputs["video"].tobytes() == video.read_bytes()
    assert params == {"start": 0, "end": 1} and "camera" not in inputs  # the clip has no solve
    with pytest.raises(ValueError, match="no video file"):
        motion_ui.recover_request(str(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match="empty"):
        motion_ui.recover_request(str(video), frame_range=(5, 2))
    # Not connected: a clear error, nothing submitted.
    session.disconnect()
    with pytest.raises(RuntimeError, match="not connected"):
        bpy.ops.nstudio.motion_recover(filepath=str(video))


def test_recover_operator_reports_an_undecodable_video_from_a_real_server(blender_addon, tmp_path):
    import blender_support
    from blender_support import tick_until

    from addon.blender import session

    server = blender_support.LoopbackServer(tmp_path).start()
    try:
        blender_support.preferences().endpoint = server.endpoint
        assert bpy.ops.nstudio.connect() == {"FINISHED"}
        tick_until(lambda: session.current().client.connected, 30, "the welcome", server=server)
        video = tmp_path / "walk.mp4"
        video.write_bytes(b"\x00" * 64)
        assert bpy.ops.nstudio.motion_recover(filepath=str(video)) == {"FINISHED"}
        jobs = bpy.context.scene.nstudio_jobs
        assert len(jobs) == 1
        tick_until(lambda: jobs[0].state in ("failed", "done", "cancelled"), 60, "the job's end", server=server)
        # The server's clear refusal reaches the job panel, naming the input; the server lives on.
        assert jobs[0].state == "failed"
        assert "video" in jobs[0].message
        assert session.current().client.connected
    finally:
        session.disconnect()
        blender_support.reset_preferences()
        server.stop()
