"""AMASS .npz import through a real server (motion.from_params) in headless bpy: the armature's
joints are smplx's for the file's parameters; without that body on the server the add-on falls
back to the stored joints and says so."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
pytest.importorskip("smplx")

import smpl_models  # noqa: E402  (tests/smpl_models.py)


@pytest.fixture(scope="module")
def amass_server(blender_addon, tmp_path_factory):
    """One server for the module, its models folder holding only a tiny SMPL-H "smplh-male"."""
    import blender_support

    tmp = tmp_path_factory.mktemp("amass")
    models = tmp / "models"
    models.mkdir()
    arrays = smpl_models.write_tiny_model(models / "smplh-male.pkl", "smplh", seed=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NSTUDIO_MODELS_DIR", str(models))
        server = blender_support.LoopbackServer(tmp).start()
    try:
        yield server, arrays
    finally:
        server.stop()


@pytest.fixture
def connected(amass_server):
    import blender_support
    from blender_support import tick_until

    from addon.blender import session

    server, arrays = amass_server
    blender_support.preferences().endpoint = server.endpoint
    assert bpy.ops.nstudio.connect() == {"FINISHED"}
    try:
        tick_until(lambda: session.current().client.connected, 30, "the welcome", server=server)
        yield server, arrays
    finally:
        session.disconnect()
        blender_support.reset_preferences()


def _import(tmp_path, server, clip, name):
    from blender_support import tick_until

    path = tmp_path / f"{name}.npz"
    np.savez(path, **clip)
    assert bpy.ops.nstudio.motion_import_file(filepath=str(path)) == {"FINISHED"}
    jobs = bpy.context.scene.nstudio_jobs
    assert len(jobs) == 1 and jobs[0].pipeline == "motion.from_params"
    tick_until(lambda: jobs[0].state in ("failed", "cancelled") or jobs[0].applied, 120, "the import job",
               server=server)
    return jobs[0], bpy.context.scene.nstudio_motion_source


def test_amass_import_through_the_server_body_matches_smplx(connected, tmp_path):
    server, arrays = connected
    clip = smpl_models.synthetic_amass(frames=10, joints=52, gender="male")
    job, obj = _import(tmp_path, server, clip, "walk")
    assert job.state == "done", job.message
    assert obj is not None and obj.name == "walk" and obj["nstudio_motion_from"] == "the server's SMPLH body"
    assert len(obj.data.bones) == 52 and "walk Mesh" in bpy.data.objects
    direct = smpl_models.smplx_joints("smplh", arrays, clip["poses"], clip["trans"], clip["betas"])
    from pipelines.motion.smpl_params import joint_names

    names = joint_names("smplh", 52)   # the joints' order (Blender lists bones depth first)
    scene = bpy.context.scene
    assert scene.render.fps == 60
    for f in (0, 4, 9):
        scene.frame_set(scene.frame_start + f)
        heads = np.array([obj.matrix_world @ obj.pose.bones[n].head for n in names])
        np.testing.assert_allclose(heads, direct[f], atol=1e-4)


def test_amass_import_falls_back_to_the_stored_joints_without_that_body(connected, tmp_path):
    from addon.core.motion import amass

    server, _ = connected
    clip = smpl_models.synthetic_amass(frames=8, joints=52, gender="female")
    stored = amass.from_amass(clip)
    clip["joints"] = stored.joints           # stored joints, as AMASS-derived files carry
    expected = amass.from_amass(clip)
    job, obj = _import(tmp_path, server, clip, "dance")
    # The server names the file it lacks; the add-on imported the stored joints instead.
    assert job.state == "failed" and "smplh-female" in job.message and "stored joints instead" in job.message
    assert obj is not None and obj["nstudio_motion_from"] == "the stored joints"
    bpy.context.scene.frame_set(bpy.context.scene.frame_start + 3)
    heads = np.array([obj.matrix_world @ obj.pose.bones[n].head for n in expected.names])
    np.testing.assert_allclose(heads, expected.joints[3], atol=1e-4)
