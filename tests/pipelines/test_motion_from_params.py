"""`motion.from_params` over a real server: AMASS-style parameters evaluated with the user's
SMPL-family file equal smplx's own forward pass, in Blender's world, and a missing file is named.

The models are tiny SMPL / SMPL-H files written here (tests/smpl_models.py) into the server's
models folder under the names the add-on asks for ("smplh-male", "smpl").
"""

from __future__ import annotations

import numpy as np
import pytest
import zmq

import smpl_models  # tests/smpl_models.py
from addon.core.motion import motion as motion_mod
from server_harness import Client, ServerProcess

C = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("from_params")
    models = tmp / "models"
    models.mkdir()
    arrays = {"smplh": smpl_models.write_tiny_model(models / "smplh-male.pkl", "smplh", seed=2),
              "smpl": smpl_models.write_tiny_model(models / "smpl.npz", "smpl", seed=3, posedirs=True)}
    context = zmq.Context()
    server = ServerProcess(tmp, env={"NSTUDIO_MODELS_DIR": str(models)}).start(context)
    client = Client(context, server.endpoint)
    try:
        yield client, arrays, models
    finally:
        client.close()
        server.stop()
        context.term()


def _run(client, inputs, params):
    accepted = client.submit("motion.from_params", params, inputs)
    if accepted["type"] == "error":   # refused at submit (the schema's checks)
        return accepted
    assert accepted["type"] == "accepted", accepted
    return client.events(accepted["job"], timeout=120)[-1]


def _check_motion(result, joints):
    """The Motion map is self-consistent: FK of skeleton + rotations + root gives its joints."""
    motion = motion_mod.decode_motion(result)
    g, positions = motion_mod.forward_kinematics(motion.parents, motion.rest, motion.rotations,
                                                 motion.root_translation)
    np.testing.assert_allclose(positions, joints, atol=2e-5)
    return motion


def test_amass_smplh_params_equal_smplx_forward_in_blenders_world(served):
    client, arrays, _ = served
    clip = smpl_models.synthetic_amass(frames=12, joints=52, gender="male")
    inputs = {k: clip[k] for k in ("poses", "trans", "betas")}
    result = _run(client, inputs, {"gender": "male", "fps": 60.0})
    assert result["type"] == "result", result
    out = result["outputs"]
    direct, vertices = smpl_models.smplx_joints("smplh", arrays["smplh"], clip["poses"], clip["trans"],
                                                clip["betas"], vertices=True)
    # AMASS's world is Z up like Blender's: no turn between them.
    np.testing.assert_allclose(out["joints"], direct, atol=1e-5)
    assert out["skeleton"]["names"][:3] == ["pelvis", "left_hip", "right_hip"]
    assert len(out["skeleton"]["names"]) == 52 and out["body"]["model"] == "smplh"
    motion = _check_motion(out, out["joints"])
    assert motion.fps == 60.0 and motion.mesh["vertices"].shape == (smpl_models.VERTICES, 3)
    # The rest skeleton is in the body frame: Z up, facing -Y, soles on Z = 0.
    rest = out["skeleton"]["rest"]
    assert rest[15, 2] > rest[0, 2] > rest[7, 2] >= 0.0
    assert abs(out["mesh"]["vertices"][:, 2].min()) < 1e-6
    np.testing.assert_allclose(out["keypoints3d"][:, 5], direct[:, 16], atol=1e-5)  # left shoulder
    # Face keypoints are smplx's named vertices (pose correctives and skinning as smplx's).
    from smplx.vertex_ids import vertex_ids

    np.testing.assert_allclose(out["keypoints3d"][:, 0], vertices[:, vertex_ids["smplh"]["nose"]], atol=1e-5)


def test_orientation_amass_root_turn_stands_upright_facing_minus_y(served):
    client, _, _ = served
    t = 3
    poses = np.zeros((t, 156))
    poses[:, 0] = np.pi / 2          # AMASS's root: SMPL's Y up turned to Z up
    trans = np.zeros((t, 3))
    out = _run(client, {"poses": poses, "trans": trans}, {"gender": "male"})["outputs"]
    joints, nose = out["joints"][0], out["keypoints3d"][0, 0]
    assert joints[15, 2] - joints[0, 2] > 0.5                    # head well above the pelvis
    assert joints[7, 2] < joints[0, 2] - 0.6                     # ankles below
    assert nose[1] < joints[15, 1] - 0.05                        # the face looks towards -Y
    assert joints[1, 0] > joints[2, 0]                           # left hip on +X
    # With that root turn the armature's root bone has no turn left in the body frame.
    np.testing.assert_allclose(np.abs(out["rotations"][0, 0]), [1, 0, 0, 0], atol=1e-6)


def test_smpl_y_up_params_are_turned_into_blenders_world(served):
    client, arrays, _ = served
    clip = smpl_models.synthetic_amass(frames=6, joints=24, seed=5)
    inputs = {"poses": clip["poses"], "trans": clip["trans"], "betas": clip["betas"][:10]}
    out = _run(client, inputs, {"body": "smpl", "model": "smpl", "up": "y"})["outputs"]
    direct, vertices = smpl_models.smplx_joints("smpl", arrays["smpl"], clip["poses"], clip["trans"],
                                                clip["betas"][:10], vertices=True)
    np.testing.assert_allclose(out["joints"], direct @ C.T, atol=1e-5)
    # This model has pose correctives on its named vertices: the nose moves with them too.
    from smplx.vertex_ids import vertex_ids

    nose = vertices[:, vertex_ids["smplh"]["nose"]] @ C.T
    np.testing.assert_allclose(out["keypoints3d"][:, 0], nose, atol=1e-5)
    assert len(out["skeleton"]["names"]) == 24 and out["body"]["world_from_body"][2, 1] == 1.0
    _check_motion(out, out["joints"])


def test_missing_smpl_file_is_named(served, tmp_path):
    client, _, models = served
    clip = smpl_models.synthetic_amass(frames=2)
    inputs = {k: clip[k] for k in ("poses", "trans")}
    missing = tmp_path / "SMPLH_FEMALE.pkl"
    error = _run(client, inputs, {"body": str(missing)})
    assert error["type"] == "error" and str(missing) in error["message"]
    assert error["detail"]["field"] == "params.body"
    # By name (gender from the file): the name and the folder looked in.
    error = _run(client, inputs, {"gender": "female"})
    assert error["type"] == "error" and "smplh-female" in error["message"] and str(models) in error["message"]
    # Bad shapes name the input; the server keeps serving.
    error = _run(client, {"poses": clip["poses"], "trans": clip["trans"][:1]}, {"gender": "male"})
    assert error["type"] == "error" and error["detail"]["field"] == "inputs.trans"
    error = _run(client, {"trans": clip["trans"]}, {"gender": "male"})
    assert error["type"] == "error" and error["detail"]["field"] == "inputs.poses"
    assert _run(client, inputs, {"gender": "male"})["type"] == "result"


def test_amass_split_keys_give_the_same_body_as_poses(served):
    client, _, _ = served
    clip = smpl_models.synthetic_amass(frames=4, joints=52, seed=7)
    poses = clip["poses"]
    whole = _run(client, {"poses": poses, "trans": clip["trans"]}, {"gender": "male"})["outputs"]
    split = {"root_orient": poses[:, :3], "pose_body": poses[:, 3:66], "pose_hand": poses[:, 66:156],
             "trans": clip["trans"]}
    parts = _run(client, split, {"gender": "male"})["outputs"]
    np.testing.assert_allclose(parts["joints"], whole["joints"], atol=1e-6)
    np.testing.assert_allclose(parts["rotations"], whole["rotations"], atol=1e-6)
