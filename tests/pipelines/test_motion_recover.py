"""`motion.recover` through run() with a real Job: bad input gets clear errors, cancel is prompt,
client keypoints in every supported format reach the fit."""

from __future__ import annotations

import time

import numpy as np
import pytest

from addon.wire.schema import PipelineError, check_inputs, parse_params
from pipelines.base import Cancelled
from pipelines.motion import recover
from pipelines.motion.keypoints import COMMON, FORMATS, to_common
from pipelines.motion.synthetic import make_clip
from server.models import ModelRegistry

P = recover.Params
# The server's own registry resolves and loads the models, as for a request over the wire.
REGISTRY = ModelRegistry(device="cpu")


def _run(inputs, params, job):
    models = REGISTRY.acquire(recover.PIPELINE, params, "cpu")
    try:
        return recover.run(inputs, params, job, models)
    finally:
        models.close()


def _submit_checks(inputs, params=None):
    """What the server does on submit: schema, params, then the pipeline's own check."""
    parsed = parse_params(P, params or {})
    check_inputs(recover.INPUTS, inputs)
    recover._check(inputs, parsed)
    return parsed


def _error(inputs, params=None, job=None, run=False):
    with pytest.raises(PipelineError) as error:
        parsed = _submit_checks(inputs, params)
        if run:
            _run(inputs, parsed, job)
    return error.value


def test_bad_inputs_are_clear_errors(make_job):
    e = _error({})
    assert e.code == "invalid_input" and "exactly one of video, frames or keypoints2d" in e.message
    e = _error({"video": np.frombuffer(b"\x00\x01garbage" * 50, np.uint8)}, run=True, job=make_job())
    assert (e.code, e.field) == ("invalid_input", "inputs.video") and "decodable" in e.message
    e = _error({"frames": np.zeros((0, 32, 32, 3), np.uint8), "fps": 30.0})
    assert (e.code, e.field) == ("invalid_input", "inputs.frames") and "zero frames" in e.message
    e = _error({"frames": np.zeros((3, 32, 32, 3), np.uint8)})
    assert e.field == "inputs.fps"
    e = _error({"keypoints2d": np.zeros((5, 17, 3), np.float32), "width": 64, "height": 48, "fps": 30.0},
               {"keypoint_format": "mediapipe33"})
    assert (e.code, e.field) == ("invalid_input", "inputs.keypoints2d") and "33" in e.message
    e = _error({"keypoints2d": np.zeros((5, 17, 2), np.float32), "width": 64, "height": 48, "fps": 30.0})
    assert e.field == "inputs.keypoints2d"                       # the schema: last axis must be 3
    e = _error({"keypoints2d": np.zeros((5, 17, 3), np.float32), "fps": 30.0})
    assert e.field == "inputs.width"
    e = _error({"frames": np.zeros((2, 8, 8, 3), np.uint8), "fps": 30.0}, {"start": 5, "end": 2})
    assert e.code == "invalid_params"
    # A moving camera's path: one camera per frame (tests/pipelines/test_motion_camera_path.py).
    e = _error({"frames": np.zeros((2, 8, 8, 3), np.uint8), "fps": 30.0,
                "camera": {"world_from_camera": np.tile(np.eye(4, dtype=np.float32), (3, 1, 1))}})
    assert e.field == "inputs.camera.world_from_camera" and "3 cameras for 2 frames" in e.message


def test_no_person_found(make_job):
    frames = np.full((4, 96, 128, 3), 120, np.uint8)
    job = make_job()
    e = _error({"frames": frames, "fps": 24.0}, run=True, job=job)
    assert (e.code, e.field) == ("invalid_input", "inputs.frames") and "no person found" in e.message
    assert [p[0] for p in job.progress_log] == ["detect"] * 4     # every frame was looked at


def test_missing_smpl_file_names_it(make_job, tmp_path):
    missing = tmp_path / "SMPL_NEUTRAL.pkl"
    kp = np.zeros((3, 17, 3), np.float32)
    kp[..., 2] = 1.0
    kp[..., 0] = np.arange(17) * 5.0
    kp[..., 1] = np.arange(17) * 9.0
    e = _error({"keypoints2d": kp, "width": 200, "height": 200, "fps": 30.0}, {"body": str(missing)},
               run=True, job=make_job())
    # The registry names the file the request asked for (invalid_params: the request chose it).
    assert e.code == "invalid_params" and str(missing) in e.message and e.field == "params.body"


def test_keypoint_formats_map_into_the_common_set():
    rng = np.random.default_rng(0)
    for fmt, (count, mapping) in FORMATS.items():
        kp = rng.random((2, count, 3)).astype(np.float32)
        common = to_common(kp, fmt)
        assert common.shape == (2, len(COMMON), 3)
        for dst, src in mapping.items():
            np.testing.assert_array_equal(common[:, dst], kp[:, src])
        missing = sorted(set(range(len(COMMON))) - set(mapping))
        assert (common[:, missing] == 0).all()
    # Spot checks against the formats' published orders.
    assert FORMATS["openpose25"][1][COMMON.index("left_shoulder")] == 5
    assert FORMATS["openpose25"][1][COMMON.index("right_hip")] == 9
    assert FORMATS["mediapipe33"][1][COMMON.index("left_heel")] == 29
    assert FORMATS["halpe26"][1][COMMON.index("right_heel")] == 25


@pytest.fixture(scope="module")
def walk_keypoints():
    anny = REGISTRY.load(recover.MODELS[0], "anny", "cpu")
    clip = make_clip(anny, "walk", frames=16, noise_px=1.0, drop=0.05, seed=4)
    return clip


def test_cancel_within_a_second(make_job, walk_keypoints):
    clip = walk_keypoints
    inputs = {"keypoints2d": clip.observations.keypoints2d[:, :17].copy(), "width": clip.width,
              "height": clip.height, "fps": clip.fps}
    job = make_job(cancel_after=30)
    with pytest.raises(Cancelled):
        _run(inputs, _submit_checks(inputs), job)
    assert job.cancelled_at is not None
    assert time.monotonic() - job.cancelled_at < 1.0
    assert job.progress_log and job.progress_log[-1][0] == "fit"


def test_run_from_client_keypoints_gives_the_motion_map(make_job, walk_keypoints):
    clip = walk_keypoints
    # The same points in OpenPose's BODY_25 order (from the common set).
    op = np.zeros((len(clip.observations.keypoints2d), 25, 3), np.float32)
    for dst, src in FORMATS["openpose25"][1].items():
        op[:, src] = clip.observations.keypoints2d[:, dst]
    inputs = {"keypoints2d": op, "width": clip.width, "height": clip.height, "fps": clip.fps}
    job = make_job()
    out = _run(inputs, _submit_checks(inputs, {"keypoint_format": "openpose25", "iterations": 150,
                                             "ground_iterations": 50}), job)
    check_inputs(recover.OUTPUTS, out)
    t, j = 16, len(out["skeleton"]["names"])
    assert out["rotations"].shape == (t, j, 4) and out["joints"].shape == (t, j, 3)
    np.testing.assert_allclose(np.linalg.norm(out["rotations"], axis=-1), 1.0, atol=1e-5)
    assert out["keypoints3d"].shape == (t, 17, 3) and out["contacts"].shape == (t, 4)
    assert out["skeleton"]["parents"][0] == -1
    assert all(p < i for i, p in enumerate(out["skeleton"]["parents"]))
    assert abs(out["skeleton"]["rest"][:, 2].min()) < 0.15            # rest stands near Z = 0
    np.testing.assert_allclose(out["joints"][:, 0], out["root_translation"], atol=1e-5)
    assert out["mesh"]["vertices"].shape[0] == out["mesh"]["skin_index"].shape[0] == 13718
    assert out["body"]["model"] == "anny" and out["body"]["phenotype"].shape == (6,)
    cam = out["camera"]
    assert cam["world_from_camera"].shape == (t, 4, 4) and cam["width"] == clip.width
    # The camera stands above the ground, looking roughly level, towards the body.
    assert 0.5 < cam["world_from_camera"][0, 2, 3] < 3.0
    look = -cam["world_from_camera"][0, :3, 2]                          # Blender cameras look down -Z
    to_body = out["root_translation"].mean(0) - cam["world_from_camera"][0, :3, 3]
    assert look @ to_body / np.linalg.norm(to_body) > 0.9
    assert out["keypoints2d"].shape == (t, 25, 3)
    # The contract's forward kinematics, in plain numpy from the quaternions: the joints follow
    # from skeleton.rest, rotations (local, root's in the world) and root_translation.
    q = out["rotations"].astype(np.float64)
    w, x, y, z = np.moveaxis(q, -1, 0)
    local = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                      2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                      2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(t, j, 3, 3)
    rest, parents = out["skeleton"]["rest"], out["skeleton"]["parents"]
    world_rot = np.empty_like(local)
    joints = np.empty((t, j, 3))
    for k, p in enumerate(parents):
        if p < 0:
            world_rot[:, k], joints[:, k] = local[:, k], out["root_translation"]
        else:
            world_rot[:, k] = world_rot[:, p] @ local[:, k]
            joints[:, k] = joints[:, p] + world_rot[:, p] @ (rest[k] - rest[p])
    np.testing.assert_allclose(joints, out["joints"], atol=2e-4)
    stages = [p[0] for p in job.progress_log]
    assert "fit" in stages and stages[-1] == "ground"
