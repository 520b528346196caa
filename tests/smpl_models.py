"""Tiny SMPL-format model files with the official topology's vertex count, built for tests.

The real SMPL / SMPL-H files sit behind a licence form. These have SMPL's 6890 vertices (so
smplx's official vertex ids, nose to heels, exist), the official pickle's keys (some arrays stored
as chumpy objects, J_regressor a scipy sparse matrix, no posedirs: the loader fills zeros), a
T-pose skeleton in SMPL's frame (Y up, facing +Z), random shape directions and rigid one-joint
skinning. SMPL-H adds the 30 finger joints of AMASS's model. Also: a synthetic AMASS clip.
"""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np

SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
BODY = np.array([
    (0, .95, 0), (.09, .88, 0), (-.09, .88, 0), (0, 1.05, 0), (.1, .5, 0), (-.1, .5, 0),
    (0, 1.18, 0), (.1, .1, 0), (-.1, .1, 0), (0, 1.25, 0), (.1, .03, .1), (-.1, .03, .1),
    (0, 1.45, 0), (.07, 1.38, 0), (-.07, 1.38, 0), (0, 1.6, 0), (.18, 1.4, 0), (-.18, 1.4, 0),
    (.45, 1.4, 0), (-.45, 1.4, 0), (.7, 1.4, 0), (-.7, 1.4, 0)])
SMPL_HANDS = np.array([(.78, 1.4, 0), (-.78, 1.4, 0)])
VERTICES = 6890


def _fingers():
    """SMPL-H's 30 finger joints (index, middle, pinky, ring, thumb; 3 each; left then right)."""
    joints, parents = [], []
    for side, wrist in ((1, 20), (-1, 21)):
        for f, spread in enumerate((0.02, 0.0, -0.04, -0.02, 0.05)):
            for k in range(3):
                joints.append((side * (0.75 + 0.03 * k), 1.4, spread))
                parents.append(wrist if k == 0 else 22 + len(parents) - 1)
    return np.array(joints), parents


class Ch:
    """Pickled as chumpy.ch.Ch, as the official SMPL files store some arrays."""

    def __init__(self, x):
        self.x = x


def tiny_model_arrays(kind: str = "smpl", seed: int = 0, posedirs: bool = False) -> dict:
    """The arrays of a tiny SMPL ("smpl", 24 joints) or SMPL-H ("smplh", 52 joints) model;
    ``posedirs``: random pose correctives on the named vertices (zero elsewhere), else none."""
    from smplx.vertex_ids import vertex_ids

    rng = np.random.default_rng(seed)
    if kind == "smpl":
        joints, parents = np.concatenate([BODY, SMPL_HANDS]), SMPL_PARENTS
    else:
        fingers, finger_parents = _fingers()
        joints, parents = np.concatenate([BODY, fingers]), SMPL_PARENTS[:22] + finger_parents
    count = len(joints)
    # Every vertex rides on one joint, a few cm around it; the named vertices (nose, eyes, ears,
    # toes, heels) sit where those are on a person.
    owner = np.arange(VERTICES) % count
    v = joints[owner] + rng.normal(0, 0.02, (VERTICES, 3))
    v[:count] = joints
    named = {"nose": ((0, 1.62, .1), 15), "reye": ((-.03, 1.65, .08), 15), "leye": ((.03, 1.65, .08), 15),
             "rear": ((-.07, 1.62, 0), 15), "lear": ((.07, 1.62, 0), 15),
             "LBigToe": ((.1, 0, .18), 10), "LSmallToe": ((.14, 0, .15), 10), "LHeel": ((.1, 0, -.05), 7),
             "RBigToe": ((-.1, 0, .18), 11), "RSmallToe": ((-.14, 0, .15), 11), "RHeel": ((-.1, 0, -.05), 8)}
    for name, (position, joint) in named.items():
        index = vertex_ids["smplh"][name]
        v[index], owner[index] = position, joint
    weights = np.zeros((VERTICES, count))
    weights[np.arange(VERTICES), owner] = 1.0
    regressor = np.zeros((count, VERTICES))
    regressor[np.arange(count), np.arange(count)] = 1.0
    faces = rng.integers(0, VERTICES, (200, 3)).astype(np.uint32)
    kintree = np.array([[4294967295] + list(parents[1:]), list(range(count))], np.int64)
    betas = 10 if kind == "smpl" else 16
    extra = {}
    if posedirs:
        extra["posedirs"] = np.zeros((VERTICES, 3, 9 * (count - 1)))
        for name in named:
            extra["posedirs"][vertex_ids["smplh"][name]] = rng.normal(0, 0.02, (3, 9 * (count - 1)))
    return {**extra, "v_template": v, "shapedirs": rng.normal(0, 0.01, (VERTICES, 3, betas)),
            "J_regressor": regressor, "weights": weights, "f": faces, "kintree_table": kintree,
            "J": joints, "bs_type": "lrotmin", "bs_style": "lbs"}


def write_tiny_model(path, kind: str = "smpl", seed: int = 0, posedirs: bool = False) -> dict:
    """Write a tiny model as the official pickle (.pkl, chumpy objects and a sparse
    J_regressor) or as AMASS's .npz (compressed); returns its arrays."""
    import scipy.sparse

    arrays = tiny_model_arrays(kind, seed, posedirs)
    path = str(path)
    if path.endswith(".npz"):
        np.savez_compressed(path, **arrays)
        return arrays
    data = dict(arrays, v_template=Ch(arrays["v_template"]), shapedirs=Ch(arrays["shapedirs"]),
                weights=Ch(arrays["weights"]), J_regressor=scipy.sparse.csc_matrix(arrays["J_regressor"]))
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
    return arrays


def synthetic_amass(frames: int = 20, joints: int = 52, seed: int = 1, gender: str = "male") -> dict:
    """An AMASS-style clip: random poses, the usual Z-up root turn with a yaw, a walk forward."""
    rng = np.random.default_rng(seed)
    poses = rng.normal(0, 0.25, (frames, 3 * joints))
    yaw = np.linspace(0, 0.8, frames)
    # AMASS's root: SMPL's Y up turned to Z up (+90 degrees about X), then a yaw about Z.
    for i, a in enumerate(yaw):
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
        poses[i, :3] = _axis_angle(rz @ rx)
    trans = np.stack([np.linspace(0, 1, frames), np.linspace(0, 0.3, frames), np.full(frames, 0.9)], 1)
    return {"poses": poses, "trans": trans, "betas": rng.normal(0, 1, 16), "gender": np.array(gender),
            "mocap_framerate": np.array(60.0)}


def _axis_angle(r: np.ndarray) -> np.ndarray:
    angle = np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return axis / (2 * np.sin(angle)) * angle


def smplx_joints(kind, arrays, poses, trans, betas, vertices=False):
    """smplx's own forward pass on the same arrays (float64): joints [T, J, 3] (and the
    vertices [T, V, 3] with ``vertices``)."""
    import smplx
    import torch
    from smplx.utils import Struct

    count = arrays["J_regressor"].shape[0]
    data = dict(arrays)
    data.setdefault("posedirs", np.zeros((VERTICES, 3, 9 * (count - 1))))
    t = len(poses)
    # smplx takes 10 betas from files with fewer than its 300 shape directions (AMASS's 16 too).
    b = torch.tensor(betas[:10])[None].expand(t, -1)
    p = torch.tensor(poses)
    if kind == "smpl":
        layer = smplx.SMPL(model_path="tiny", data_struct=Struct(**data), num_betas=b.shape[1],
                           dtype=torch.float64, batch_size=t)
        out = layer(betas=b, global_orient=p[:, :3], body_pose=p[:, 3:72], transl=torch.tensor(trans))
    else:
        data.update(hands_componentsl=np.eye(45), hands_componentsr=np.eye(45),
                    hands_meanl=np.zeros(45), hands_meanr=np.zeros(45))
        layer = smplx.SMPLH(model_path="tiny", data_struct=Struct(**data), num_betas=b.shape[1], use_pca=False,
                            flat_hand_mean=True, dtype=torch.float64, batch_size=t)
        out = layer(betas=b, global_orient=p[:, :3], body_pose=p[:, 3:66], left_hand_pose=p[:, 66:111],
                    right_hand_pose=p[:, 111:156], transl=torch.tensor(trans))
    joints = out.joints[:, :count].detach().numpy()
    return (joints, out.vertices.detach().numpy()) if vertices else joints
