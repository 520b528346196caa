"""SMPL through the ``smplx`` package from a model file read without chumpy.

The model is a tiny SMPL-format file written by the test (24 joints, 45 vertices, the official
pickle's keys, some arrays stored as chumpy objects and J_regressor as a scipy sparse matrix),
since the real files sit behind a licence form.
"""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch

from addon.wire.schema import PipelineError
from pipelines.motion import body as bodies
from pipelines.motion import recover
from pipelines.motion.fit import _Model
from pipelines.motion.keypoints import COMMON

PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
JOINTS = np.array([
    (0, .95, 0), (.09, .88, 0), (-.09, .88, 0), (0, 1.05, 0), (.1, .5, 0), (-.1, .5, 0),
    (0, 1.18, 0), (.1, .1, 0), (-.1, .1, 0), (0, 1.25, 0), (.1, .03, .1), (-.1, .03, .1),
    (0, 1.45, 0), (.07, 1.38, 0), (-.07, 1.38, 0), (0, 1.6, 0), (.18, 1.4, 0), (-.18, 1.4, 0),
    (.45, 1.4, 0), (-.45, 1.4, 0), (.7, 1.4, 0), (-.7, 1.4, 0), (.78, 1.4, 0), (-.78, 1.4, 0)])
# Named vertices (SMPL faces +Z, Y up): name -> (position, joint that carries it)
EXTRA = {"nose": ((0, 1.62, .1), 15), "reye": ((-.03, 1.65, .08), 15), "leye": ((.03, 1.65, .08), 15),
         "rear": ((-.07, 1.62, 0), 15), "lear": ((.07, 1.62, 0), 15),
         "LBigToe": ((.1, 0, .18), 10), "LSmallToe": ((.14, 0, .15), 10), "LHeel": ((.1, 0, -.05), 7),
         "RBigToe": ((-.1, 0, .18), 11), "RSmallToe": ((-.14, 0, .15), 11), "RHeel": ((-.1, 0, -.05), 8),
         # smplx's vertex selector also wants the fingertips.
         **{f"{side}{tip}": ((sign * .85, 1.4, .01 * i), hand) for side, sign, hand in (("l", 1, 22), ("r", -1, 23))
            for i, tip in enumerate(("thumb", "index", "middle", "ring", "pinky"))}}
VERTEX_IDS = {name: 24 + i for i, name in enumerate(EXTRA)}


class Ch:
    """Pickled as chumpy.ch.Ch, as the official SMPL files store some arrays."""

    def __init__(self, x):
        self.x = x


def write_tiny_smpl(path):
    rng = np.random.default_rng(0)
    v = np.concatenate([JOINTS, np.array([p for p, _ in EXTRA.values()])]).astype(np.float64)
    count = len(v)
    weights = np.zeros((count, 24))
    weights[np.arange(24), np.arange(24)] = 1.0
    for i, (_, joint) in enumerate(EXTRA.values()):
        weights[24 + i, joint] = 1.0
    regressor = np.zeros((24, count))
    regressor[np.arange(24), np.arange(24)] = 1.0
    data = {
        "v_template": Ch(v), "shapedirs": Ch(rng.normal(0, 0.01, (count, 3, 10))),
        "posedirs": np.zeros((count, 3, 207)), "J_regressor": scipy.sparse.csc_matrix(regressor),
        "weights": Ch(weights), "f": np.array([[24, 25, 26], [27, 28, 29], [30, 31, 32]], np.uint32),
        "kintree_table": np.array([[4294967295] + PARENTS[1:], list(range(24))], np.int64),
        "J": JOINTS, "bs_type": "lrotmin", "bs_style": "lbs",
    }
    chumpy, ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    ch.Ch = Ch
    Ch.__module__ = "chumpy.ch"
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch
    try:
        with open(path, "wb") as handle:
            pickle.dump(data, handle, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
        Ch.__module__ = __name__


@pytest.fixture
def tiny_smpl(tmp_path):
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    write_tiny_smpl(path)
    return path


def test_loader_reads_the_official_pickle_layout_without_chumpy(tiny_smpl):
    assert "chumpy" not in sys.modules
    data = bodies.load_smpl_file(tiny_smpl)
    assert "chumpy" not in sys.modules
    assert isinstance(data["v_template"], np.ndarray) and data["v_template"].shape == (45, 3)
    assert data["shapedirs"].shape == (45, 3, 10)
    np.testing.assert_array_equal(data["J_regressor"].toarray()[:, :24], np.eye(24))


def test_smpl_body_rest_and_parameters_agree_with_smplx(tiny_smpl):
    import smplx
    from smplx.utils import Struct

    body = bodies.load_smpl(tiny_smpl, "smpl", vertex_ids=VERTEX_IDS)
    assert body.parents == PARENTS and len(body.names) == 24
    betas = torch.linspace(-1, 1, 10)
    rest = body.rest(betas)
    assert abs(float(rest.vertices[:, 2].min())) < 1e-6          # feet on Z = 0
    # Body frame = SMPL's turned +90 degrees about X: SMPL's +Y (up) is +Z, +Z (front) is -Y.
    assert rest.joints[15, 2] > rest.joints[0, 2] > rest.joints[7, 2]
    assert rest.vertices[24, 1] < rest.joints[15, 1]               # the nose is towards -Y

    # Pose the body our way, convert to SMPL parameters, run smplx, compare the joints.
    g = torch.Generator().manual_seed(3)
    model = _Model(body)
    t = 4
    root = torch.randn(t, 3, generator=g) * 0.5
    pose = torch.randn(t, len(body.free) - 1, 3, generator=g) * 0.3
    position = torch.randn(t, 3, generator=g)
    with torch.no_grad():
        rotations, kin, keypoints = model.pose(rest, root, pose, position)
        params = body.to_body_params(rotations, position, betas)
    data = bodies.load_smpl_file(tiny_smpl)
    data["J_regressor"] = data["J_regressor"].toarray()
    layer = smplx.SMPL(model_path=str(tiny_smpl), data_struct=Struct(**data), vertex_ids=VERTEX_IDS,
                       num_betas=10, batch_size=t)
    out = layer(betas=torch.tensor(params["betas"])[None].expand(t, 10),
                global_orient=torch.tensor(params["global_orient"]),
                body_pose=torch.tensor(params["body_pose"]), transl=torch.tensor(params["transl"]))
    smpl_world = out.joints[:, :24].detach().numpy() @ params["world_from_body"][:3, :3].T
    # Our rest is shifted so the feet touch Z = 0; SMPL's is not: compare up to that shift.
    ours = kin.positions.numpy()
    np.testing.assert_allclose(smpl_world - smpl_world[:, :1], ours - ours[:, :1], atol=1e-5)
    np.testing.assert_allclose(smpl_world[:, 0], position.numpy(), atol=1e-5)
    # The named vertices (nose, toes, heels) become the common keypoints, as smplx selects them.
    nose = out.joints[:, 24].detach().numpy() @ params["world_from_body"][:3, :3].T
    np.testing.assert_allclose(nose, keypoints[:, 0].numpy(), atol=1e-5)
    assert params["body_pose"].shape == (t, 69) and params["global_orient"].shape == (t, 3)


def test_loader_refuses_other_classes(tmp_path):
    path = tmp_path / "SMPL_EVIL.pkl"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("true",))

    path.write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    with pytest.raises(PipelineError) as error:
        bodies.load_smpl_file(path)
    assert error.value.code == "unavailable" and "refusing" in error.value.message


def test_missing_smpl_file_names_the_file(tmp_path):
    missing = tmp_path / "models" / "SMPL_NEUTRAL.pkl"
    with pytest.raises(PipelineError) as error:
        recover.load_body(recover.ModelSource("smpl", missing, "file"), "cpu")
    assert error.value.code == "unavailable" and str(missing) in error.value.message
    with pytest.raises(PipelineError) as error:
        recover.load_body(recover.ModelSource("smpl", None, "models-dir"), "cpu")
    assert "SMPL_NEUTRAL.pkl" in error.value.message


# ---------------------------------------------------------------------------------------------
# SMPL-X: a tiny model in the smplx package's .npz layout (55 joints: SMPL's first 22, jaw,
# eyes, 2 x 15 finger joints), written by the test.
# ---------------------------------------------------------------------------------------------

X_PARENTS = PARENTS[:22] + [15, 15, 15] + [p for side in (20, 21) for f in range(5)
                                           for p in (side, 25 + 15 * (side - 20) + 3 * f, 26 + 15 * (side - 20) + 3 * f)]
X_EXTRA = {name: (position, {22: 20, 23: 21}.get(joint, joint)) for name, (position, joint) in EXTRA.items()}


def _x_joints():
    joints = [tuple(j) for j in JOINTS[:22]] + [(0, 1.55, .05), (.03, 1.65, .06), (-.03, 1.65, .06)]
    for sign in (1, -1):
        for f in range(5):
            for k in range(3):
                joints.append((sign * (.74 + .03 * k), 1.4, .02 * (f - 2)))
    return np.array(joints)


X_VERTEX_IDS = {name: 55 + i for i, name in enumerate(X_EXTRA)}


def write_tiny_smplx(path):
    """SMPLX_NEUTRAL.npz with the official file's keys (incl. a pickled ``joint2num`` dict,
    which the loader must skip without unpickling)."""
    rng = np.random.default_rng(1)
    joints = _x_joints()
    v = np.concatenate([joints, np.array([p for p, _ in X_EXTRA.values()])])
    count = len(v)
    weights = np.zeros((count, 55))
    weights[np.arange(55), np.arange(55)] = 1.0
    for i, (_, joint) in enumerate(X_EXTRA.values()):
        weights[55 + i, joint] = 1.0
    regressor = np.zeros((55, count))
    regressor[np.arange(55), np.arange(55)] = 1.0
    np.savez(path, v_template=v, shapedirs=rng.normal(0, 0.01, (count, 3, 20)),
             posedirs=np.zeros((count, 3, 486)), J_regressor=regressor, weights=weights,
             kintree_table=np.array([[-1] + X_PARENTS[1:], list(range(55))], np.int64),
             f=np.array([[55, 56, 57], [58, 59, 60]], np.int64),
             hands_componentsl=np.eye(45), hands_componentsr=np.eye(45),
             hands_meanl=np.zeros(45), hands_meanr=np.zeros(45),
             lmk_faces_idx=np.array([0, 1], np.int64), lmk_bary_coords=np.full((2, 3), 1 / 3),
             joint2num=np.array({"pelvis": 0}, dtype=object))


@pytest.fixture
def tiny_smplx(tmp_path):
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    write_tiny_smplx(path)
    return path


def test_smplx_body_parameters_agree_with_smplx(tiny_smplx):
    import smplx
    from smplx.vertex_joint_selector import VertexJointSelector

    body = bodies.load_smpl(tiny_smplx, "smplx", vertex_ids=X_VERTEX_IDS)
    assert body.model == "smplx" and body.parents == X_PARENTS and len(body.names) == 55
    betas = torch.linspace(-1, 1, 10)
    rest = body.rest(betas)
    g = torch.Generator().manual_seed(5)
    t = 3
    root = torch.randn(t, 3, generator=g) * 0.5
    pose = torch.randn(t, len(body.free) - 1, 3, generator=g) * 0.3
    position = torch.randn(t, 3, generator=g)
    with torch.no_grad():
        rotations, kin, keypoints = _Model(body).pose(rest, root, pose, position)
        params = body.to_body_params(rotations, position, betas)
    assert params["model"] == "smplx" and params["body_pose"].shape == (t, 63)
    layer = smplx.SMPLX(model_path=str(tiny_smplx), num_betas=10, ext="npz", use_pca=False, batch_size=t)
    layer.vertex_joint_selector = VertexJointSelector(vertex_ids=X_VERTEX_IDS)
    out = layer(betas=torch.tensor(params["betas"])[None].expand(t, 10),
                global_orient=torch.tensor(params["global_orient"]),
                body_pose=torch.tensor(params["body_pose"]), transl=torch.tensor(params["transl"]))
    turn = params["world_from_body"][:3, :3].T
    smplx_world = out.joints[:, :22].detach().numpy() @ turn
    ours = kin.positions.numpy()[:, :22]
    np.testing.assert_allclose(smplx_world - smplx_world[:, :1], ours - ours[:, :1], atol=1e-5)
    np.testing.assert_allclose(smplx_world[:, 0], position.numpy(), atol=1e-5)
    heel = out.vertices[:, X_VERTEX_IDS["LHeel"]].detach().numpy() @ turn
    left_heel = COMMON.index("left_heel")
    np.testing.assert_allclose(heel - smplx_world[:, 0], keypoints[:, left_heel].numpy() - ours[:, 0], atol=1e-5)


def test_smplx_fit_through_the_registry(tiny_smplx, make_job, monkeypatch):
    """params.body names the SMPL-X file; the server's registry loads it and the fit returns
    SMPL-X's own parameters (body_pose [T, 63])."""
    from addon.wire.schema import check_inputs, parse_params
    from pipelines.motion.synthetic import make_clip
    from server.models import ModelRegistry

    # The official vertex ids of the named vertices (nose, toes, heels) do not exist in the tiny
    # model: the loader is given the tiny model's, as a user's own topology would be.
    monkeypatch.setitem(__import__("smplx").vertex_ids.vertex_ids, "smplx", X_VERTEX_IDS)
    registry = ModelRegistry(device="cpu")
    params = parse_params(recover.Params, {"body": str(tiny_smplx), "iterations": 60,
                                           "ground_iterations": 20})
    models = registry.acquire(recover.PIPELINE, params, "cpu")
    try:
        body = models["body"]
        assert body.model == "smplx"
        clip = make_clip(body, "walk", frames=8, seed=3)
        inputs = {"keypoints2d": clip.observations.keypoints2d[:, :17].copy(), "width": clip.width,
                  "height": clip.height, "fps": clip.fps}
        check_inputs(recover.INPUTS, inputs)
        out = recover.run(inputs, params, make_job(), models)
    finally:
        models.close()
    check_inputs(recover.OUTPUTS, out)
    assert out["body"]["model"] == "smplx"
    assert out["body"]["body_pose"].shape == (8, 63) and out["body"]["global_orient"].shape == (8, 3)
    assert out["body"]["betas"].shape == (10,) and np.isfinite(out["body"]["body_pose"]).all()
    assert out["joints"].shape == (8, 55, 3) and "mesh" not in out


def test_smplx_parameters_evaluate_like_smplx(tiny_smplx, monkeypatch):
    """motion.from_params on an SMPL-X file: its joints equal smplx's own forward pass (the
    layer is built without handing smplx a second vertex_ids, and without unpickling the file)."""
    import smplx
    from pipelines.motion import smpl_params

    monkeypatch.setitem(smplx.vertex_ids.vertex_ids, "smplx", X_VERTEX_IDS)
    model = smpl_params.load_model(tiny_smplx, vertex_ids=X_VERTEX_IDS)
    assert model.kind == "smplx" and model.joint_count == 55
    g = np.random.default_rng(4)
    t = 3
    arrays = {"root_orient": g.normal(0, 0.3, (t, 3)), "pose_body": g.normal(0, 0.3, (t, 63)),
              "trans": g.normal(0, 1, (t, 3)), "betas": g.normal(0, 1, 10)}
    params = smpl_params.parameters(arrays, model, fps=30.0)
    out = smpl_params.evaluate(model, params, np.eye(3))
    layer = smplx.SMPLX(model_path=str(tiny_smplx), num_betas=10, ext="npz", use_pca=False,
                        flat_hand_mean=True, batch_size=t)
    direct = layer(betas=torch.tensor(arrays["betas"], dtype=torch.float32)[None].expand(t, 10),
                   global_orient=torch.tensor(arrays["root_orient"], dtype=torch.float32),
                   body_pose=torch.tensor(arrays["pose_body"], dtype=torch.float32),
                   transl=torch.tensor(arrays["trans"], dtype=torch.float32))
    np.testing.assert_allclose(out["joints"][:, :22], direct.joints[:, :22].detach().numpy(), atol=1e-4)
