"""A moving camera (`inputs.camera.world_from_camera`): its path, given in another similarity
frame of unknown scale, made metric and Z-up from the body (pipelines/motion/camera_path.py).

Ground truth comes from elsewhere than the estimate: a scripted Anny walk posed by forward
kinematics, seen by a camera that dollies alongside it (`synthetic.camera_path`), its path then
handed over scaled by 0.37, turned by a random rotation and moved, as a camera solver would.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zmq

from addon.wire.schema import PipelineError, check_inputs, parse_params
from pipelines.motion import camera_path, recover
from pipelines.motion.fit import FEET, Fit, rest_keypoints
from pipelines.motion.keypoints import FORMATS
from pipelines.motion.synthetic import make_clip, metrics, procrustes
from blender_support import LoopbackServer
from server_harness import Client

SCALE = 0.37          # metres per unit of the path handed over


@pytest.fixture(scope="module")
def anny():
    return recover.load_body(recover.ModelSource("anny", None, "wheel"), "cpu")


def similarity_frame(path_cv: np.ndarray, seed: int = 3) -> np.ndarray:
    """The true path (OpenCV cameras [T, 4, 4], metres) as a solver would give it: Blender's
    camera convention, in a frame turned by a random rotation, moved, and scaled by 1 / SCALE."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    given = path_cv @ camera_path.BLENDER_FROM_CV
    out = np.einsum("ij,tjk->tik", np.block([[q, np.zeros((3, 1))], [np.zeros((1, 3)), 1.0]]), given)
    out[:, :3, 3] = out[:, :3, 3] / SCALE + rng.normal(size=3) * 3
    return out.astype(np.float32)


def truth_fit(anny, clip) -> Fit:
    """The true motion in each frame's camera (what a perfect camera-frame fit would give)."""
    camera_from_world = np.linalg.inv(clip.cameras_cv())
    rot, off = camera_from_world[:, :3, :3], camera_from_world[:, :3, 3]

    def cam(x):
        return torch.tensor(np.einsum("tij,tkj->tki", rot, x) + off[:, None], dtype=torch.float32)

    local = clip.local_rotations.copy()
    local[:, 0] = rot @ local[:, 0]
    return Fit(torch.tensor(clip.shape), torch.tensor(local, dtype=torch.float32),
               cam(clip.root_position[:, None])[:, 0], cam(clip.joints), cam(clip.keypoints),
               anny.rest(torch.tensor(clip.shape)), {})


@pytest.mark.parametrize("motion", ["track", "arc"])
def test_scale_and_ground_from_the_true_body(anny, motion):
    """With the body exact in every camera, the path's scale, the ground and the world come
    back exactly (up to the world's yaw and horizontal origin)."""
    clip = make_clip(anny, "walk", frames=30, seed=1, camera_motion=motion)
    given = similarity_frame(clip.cameras_cv())
    world, state, alignment = camera_path.place(truth_fit(anny, clip), given, clip.fps)
    assert alignment.observable and abs(alignment.scale / SCALE - 1) < 0.02, alignment
    kp = world.keypoints.numpy()
    lift = rest_keypoints(world.rest)[FEET, 2].numpy()
    assert abs(np.median((kp[:, FEET, 2] - lift).min(1))) < 0.01       # feet on Z = 0
    # Rigidly aligned (no scale), body and cameras land on the truth.
    _, centres = state.corrected()
    both = np.concatenate([kp.reshape(-1, 3), centres])
    true = np.concatenate([clip.keypoints.reshape(-1, 3), clip.cameras_cv()[:, :3, 3]])
    assert np.linalg.norm(procrustes(both, true, scale=False) - true, axis=-1).max() < 0.02


def test_a_pan_on_a_tripod_keeps_the_camera_in_one_place(anny):
    """A camera that only turns: its scale cannot be measured and does not matter."""
    clip = make_clip(anny, "walk", frames=30, seed=1, camera_motion="pan")
    given = similarity_frame(clip.cameras_cv())
    world, state, alignment = camera_path.place(truth_fit(anny, clip), given, clip.fps)
    assert not alignment.observable
    _, centres = state.corrected()
    assert np.ptp(centres, axis=0).max() < 0.05
    height = clip.cameras_cv()[0, 2, 3]
    assert abs(centres[0, 2] - height) < 0.05, (centres[0], height)
    # A solve whose tripod jitters by 1 mm-ish units: the camera still stays put.
    given[:, :3, 3] += np.random.default_rng(0).normal(0, 3e-3, (len(given), 3))
    _, state, _ = camera_path.place(truth_fit(anny, clip), given, clip.fps, clip.observations.keypoints2d,
                                    clip.intrinsics)
    assert np.ptp(state.corrected()[1], axis=0).max() < 0.05


FORMAT = {"keypoint_format": "halpe26"}          # COCO's 17 points plus heels and toes


def _inputs(clip, path):
    common = clip.observations.keypoints2d
    halpe = np.zeros((len(common), 26, 3), np.float32)
    for dst, src in FORMATS["halpe26"][1].items():
        halpe[:, src] = common[:, dst]
    return {"keypoints2d": halpe, "width": clip.width, "height": clip.height, "fps": clip.fps,
            "camera": {"world_from_camera": path}}


def test_bad_paths_are_clear_errors(anny):
    clip = make_clip(anny, "walk", frames=6, seed=2, camera_motion="track")
    path = similarity_frame(clip.cameras_cv())

    def error(world_from_camera, params=None):
        inputs = _inputs(clip, world_from_camera)
        with pytest.raises(PipelineError) as caught:
            check_inputs(recover.INPUTS, inputs)
            recover._check(inputs, parse_params(recover.Params, {**FORMAT, **(params or {})}))
        assert caught.value.field == "inputs.camera.world_from_camera", caught.value
        return caught.value.message

    assert "5 cameras for 6 frames" in error(path[:5])
    assert "4 cameras for 4 frames" not in error(path[:5], {"start": 2})      # 5 is neither 4 nor 6
    scaled = path.copy()
    scaled[3, :3, :3] *= 2.0
    assert "frame 3 is not a rigid" in error(scaled)
    sheared = path.copy()
    sheared[1, 0, 1] += 0.3
    assert "frame 1 is not a rigid" in error(sheared)
    mirrored = path.copy()
    mirrored[0, :3, 0] *= -1
    assert "det" in error(mirrored)
    broken = path.copy()
    broken[2, 1, 3] = np.nan
    assert "NaN" in error(broken)
    with pytest.raises(PipelineError) as caught:                             # the schema: [T, 4, 4]
        check_inputs(recover.INPUTS, _inputs(clip, path[:, :3]))
    assert "world_from_camera" in caught.value.field
    # A path over the whole input is sliced by start/end: accepted.
    inputs = _inputs(clip, path)
    recover._check(inputs, parse_params(recover.Params, {**FORMAT, "start": 2, "end": 5}))
    frames = np.arange(10)
    assert list(camera_path.select(frames, 3, 2, 5, 10)) == [2, 3, 4]        # whole input
    assert list(camera_path.select(frames[2:5], 3, 2, 5, 10)) == [2, 3, 4]   # one per fitted frame
    assert list(camera_path.select(frames[2:8], 4, 2, 8, None)) == [2, 3, 4, 5]  # the video ended at 6


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = LoopbackServer(tmp_path_factory.mktemp("motion-camera")).start()
    try:
        yield server
    finally:
        server.stop()


def _aligned_figures(kp, centres, clip):
    """Figures after one rigid alignment of body keypoints [T, 17, 3] and camera centres [T, 3]
    together onto the truth (the world's yaw and horizontal origin are a gauge)."""
    true = clip.cameras_cv()
    truth = clip.keypoints[:, :17]
    t = len(kp)
    both = np.concatenate([kp.reshape(-1, 3), centres])
    aligned = procrustes(both, np.concatenate([truth.reshape(-1, 3), true[:, :3, 3]]), scale=False)
    body = aligned[:-t].reshape(kp.shape)
    figures = metrics(body, truth, clip.fps)
    figures["root"] = np.linalg.norm(body[:, 11:13].mean(1) - truth[:, 11:13].mean(1), axis=-1).mean()
    figures["camera"] = np.linalg.norm(aligned[-t:] - true[:, :3, 3], axis=-1).mean()
    return figures


def test_tracking_camera_recovered(anny):
    """A walk filmed by a camera dollying alongside, with the 3D landmarks MediaPipe gives on
    video: the path's scale, the body in the world and the path against the truth."""
    from pipelines.motion.fit import Fitter, FitSettings

    clip = make_clip(anny, "walk", frames=30, seed=1, camera_motion="track")
    fitter = Fitter(anny, FitSettings(iterations=250, ground_iterations=100))
    fit = fitter.fit_camera(clip.observations)
    world, state, alignment = camera_path.place(fit, similarity_frame(clip.cameras_cv()), clip.fps,
                                                clip.observations.keypoints2d, clip.intrinsics)
    world = fitter.fit_ground(clip.observations, world, state)
    scale = alignment.scale * state.scale_correction()
    rotations, centres = state.corrected()
    m = _aligned_figures(world.keypoints.numpy()[:, :17].astype(np.float64), centres, clip)
    print(f"tracking camera: scale {scale / SCALE:.3f} of the truth, "
          + ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
    assert abs(scale / SCALE - 1) < 0.05
    assert m["mpjpe"] < 80 and m["pa_mpjpe"] < 50, m               # millimetres
    assert m["root"] < 0.12 and m["camera"] < 0.12, m              # metres
    # The cameras' pitch (their look against the ground) as the truth's.
    look = rotations[:, 2, :]                                        # OpenCV +z in the world
    true_look = clip.cameras_cv()[:, :3, 2]
    assert np.degrees(np.abs(np.arcsin(look[:, 2]) - np.arcsin(true_look[:, 2]))).mean() < 3.0
    lift = rest_keypoints(world.rest)[FEET, 2].numpy()
    assert abs(np.median((world.keypoints.numpy()[:, FEET, 2] - lift).min(1))) < 0.05


def test_moving_camera_over_the_wire(anny, server):
    """2D keypoints and a solver's path over the wire: the Motion map's camera is the given path
    rescaled and turned (a similarity of it, so the footage lines up), the body stands on Z = 0;
    bad paths are clear errors and the server keeps serving."""
    clip = make_clip(anny, "walk", frames=20, seed=2, camera_motion="track")
    given = similarity_frame(clip.cameras_cv())
    client = Client(zmq.Context.instance(), server.endpoint)
    try:
        accepted = client.submit("motion.recover", params={**FORMAT, "iterations": 120, "ground_iterations": 40},
                                 inputs=_inputs(clip, given))
        assert accepted["type"] == "accepted", (accepted.get("message"), accepted.get("detail"))
        final = client.events(accepted["job"], timeout=240)[-1]
        assert final["type"] == "result", final
        out = final["outputs"]

        bad = client.submit("motion.recover", params=FORMAT, inputs=_inputs(clip, given[:-1]))
        if bad["type"] == "accepted":
            bad = client.events(bad["job"], timeout=30)[-1]
        assert bad["type"] == "error" and bad["code"] == "invalid_input"
        assert bad["detail"]["field"] == "inputs.camera.world_from_camera"
        assert "19 cameras for 20 frames" in bad["message"]
        skewed = given.copy()
        skewed[4, :3, :3] *= 1.5
        bad = client.submit("motion.recover", params=FORMAT, inputs=_inputs(clip, skewed))
        assert bad["type"] == "error" and "frame 4 is not a rigid" in bad["message"], bad
        assert client.request("ping")["type"] == "pong"
    finally:
        client.close()

    cams = out["camera"]["world_from_camera"].astype(np.float64)
    assert cams.shape == (20, 4, 4) and out["keypoints3d"].shape == (20, 17, 3)
    # The output path is a similarity of the given one: positions by one scale and rotation,
    # and every camera turned by that same rotation.
    src, dst = given[:, :3, 3].astype(np.float64), cams[:, :3, 3]
    mapped = procrustes(src, dst)
    assert np.abs(mapped - dst).max() < 1e-3 * max(1.0, np.ptp(dst, axis=0).max())
    turn = cams[:, :3, :3] @ np.transpose(given[:, :3, :3].astype(np.float64), (0, 2, 1))
    np.testing.assert_allclose(turn, np.repeat(turn[:1], 20, 0), atol=2e-3)
    np.testing.assert_allclose(turn[0] @ turn[0].T, np.eye(3), atol=1e-4)
    scale = np.linalg.norm(np.diff(dst, axis=0), axis=-1).sum() / np.linalg.norm(np.diff(src, axis=0), axis=-1).sum()
    print(f"over the wire (2D keypoints only, no 3D landmarks): scale {scale / SCALE:.3f} of the truth")
    assert abs(scale / SCALE - 1) < 0.1                   # metres, not the solver's units
    # Feet on the ground: the ankles' lowest a few centimetres above Z = 0; the camera above it.
    assert 0.0 < np.median(out["keypoints3d"][:, 15:17, 2].min(1)) < 0.15
    assert (cams[:, 2, 3] > 0.5).all()
