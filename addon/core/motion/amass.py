"""AMASS-style .npz motions (SMPL / SMPL-H parameters, optionally stored joints) as a Motion.

AMASS files hold ``poses (T, 3 * n)`` axis-angle in SMPL joint order (22 body joints first;
SMPL-H adds hands), ``trans (T, 3)``, ``betas``, ``gender`` and ``mocap_framerate``; AMASS's
world is Z up. SMPL's own body frame is Y up, facing +Z, +X the body's left; ours (PROTOCOL.md)
is Z up, facing -Y: ``C`` (+90 degrees about X) maps one to the other, so a local rotation
becomes ``C R C^T`` and the root's world rotation ``G C^T``.

Without the user's SMPL model (shape-dependent rest joints), the rest skeleton comes from the
file's stored ``joints`` (T, >=22, 3) when present (median bone lengths on the template's
directions), else from the template (`synthetic.template_rest`); the root then sits at
``trans + G @ PELVIS_OFFSET`` (the mean SMPL pelvis in its own frame). Through the server with
the user's SMPL file, ``motion.recover``/the body model gives exact joints instead.
"""

from __future__ import annotations

import numpy as np

from . import rotations as rot
from .bone_maps import CANONICAL, CANONICAL_PARENTS
from .motion import Motion, make_motion
from .synthetic import template_rest

#: SMPL frame (Y up, +Z front) -> body frame (Z up, -Y front).
C = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
#: Mean SMPL pelvis joint in SMPL's model frame, metres (neutral shape, approximate).
PELVIS_OFFSET = np.array([0.0, -0.22, 0.028])
BODY_JOINTS = 22


def _rest_from_joints(joints: np.ndarray) -> np.ndarray:
    """A T-pose rest skeleton with the template's directions and the stored joints' bone lengths."""
    template = template_rest().astype(np.float64)
    rest = template.copy()
    for j, p in enumerate(CANONICAL_PARENTS):
        if p < 0:
            continue
        if j < joints.shape[1]:
            length = float(np.median(np.linalg.norm(joints[:, j] - joints[:, p], axis=-1)))
        else:
            length = float(np.linalg.norm(template[j] - template[p]))
        d = template[j] - template[p]
        rest[j] = rest[p] + d / np.linalg.norm(d) * length
    rest[:, 2] -= rest[:, 2].min() - template[:, 2].min()
    return rest


def from_amass(data) -> Motion:
    """A Motion from an AMASS-style npz (a mapping of arrays, e.g. ``np.load(path)``).

    Raises:
        ValueError: ``poses``/``trans`` missing or of the wrong shape (naming the key).
    """
    if "poses" not in data or "trans" not in data:
        raise ValueError(f"AMASS npz: needs 'poses' and 'trans'; found {sorted(data.keys())}")
    poses = np.asarray(data["poses"], dtype=np.float64)
    trans = np.asarray(data["trans"], dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] < 3 * BODY_JOINTS or poses.shape[1] % 3:
        raise ValueError(f"AMASS npz: 'poses' must be (T, 3n) with n >= {BODY_JOINTS}, got {poses.shape}")
    if trans.shape != (len(poses), 3):
        raise ValueError(f"AMASS npz: 'trans' must be ({len(poses)}, 3), got {trans.shape}")
    fps = float(np.asarray(data.get("mocap_framerate", data.get("mocap_frame_rate", 30.0))))
    t = len(poses)
    aa = poses[:, :3 * BODY_JOINTS].reshape(t, BODY_JOINTS, 3)
    local = np.broadcast_to(np.eye(3), (t, len(CANONICAL), 3, 3)).copy()
    local[:, :BODY_JOINTS] = C @ rot.axis_angle_to_matrix(aa) @ C.T
    # The root's world rotation: G_smpl C^T = C (C^T G_smpl C^T) ... with local[0] = C G C^T,
    # world = local[0] C (the body frame's extra turn relative to SMPL's) = C G.
    g_root = rot.axis_angle_to_matrix(aa[:, 0])
    local[:, 0] = g_root @ C.T
    stored = data.get("joints") if hasattr(data, "get") else None
    if stored is not None:
        joints = np.asarray(stored, dtype=np.float64)
        rest = _rest_from_joints(joints)
        root = joints[:, 0]
    else:
        rest = template_rest().astype(np.float64)
        root = trans + g_root @ PELVIS_OFFSET
    return make_motion(CANONICAL, CANONICAL_PARENTS, rest, rot.matrix_to_quat(local), root, fps=fps,
                       body={"model": "smpl", "betas": np.asarray(data.get("betas", np.zeros(10)), np.float32),
                             "global_orient": aa[:, 0].astype(np.float32),
                             "body_pose": poses[:, 3:3 * BODY_JOINTS].astype(np.float32),
                             "transl": trans.astype(np.float32)})


def to_amass(motion: Motion) -> dict:
    """The AMASS-style arrays of a Motion on the canonical skeleton (the inverse of `from_amass`)."""
    q = rot.quat_to_matrix(motion.rotations[:, :BODY_JOINTS])
    smpl = C.T @ q @ C
    smpl[:, 0] = q[:, 0] @ C  # G = local_root C
    aa = rot.matrix_to_axis_angle(smpl)
    poses = np.zeros((motion.frames, 156))
    poses[:, :3 * BODY_JOINTS] = aa.reshape(motion.frames, -1)
    root = motion.root_translation.astype(np.float64)
    trans = root - rot.axis_angle_to_matrix(aa[:, 0]) @ PELVIS_OFFSET
    return {"poses": poses, "trans": trans, "betas": np.zeros(16), "mocap_framerate": np.array(motion.fps),
            "gender": np.array("neutral"), "joints": motion.joints.astype(np.float64)}


#: Arrays of an AMASS-style file that `motion.from_params` evaluates (the SMPL-X split included).
PARAM_ARRAYS = ("poses", "root_orient", "pose_body", "pose_hand", "pose_jaw", "pose_eye", "trans", "betas")


def _text(value, default: str) -> str:
    if value is None:
        return default
    value = np.asarray(value)
    text = value.item() if value.shape == () else (value.reshape(-1)[0] if value.size else default)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text).strip().lower() or default


def family(data) -> str:
    """The parameters' SMPL family: "smplx" (AMASS SMPL-X files, or 55 joints), "smpl" (24 joints)
    or "smplh" (AMASS's SMPL+H, 52 joints, the default)."""
    declared = _text(data.get("surface_model_type"), "")
    if declared in ("smpl", "smplh", "smplx"):
        return declared
    if "poses" in data:
        joints = np.shape(data["poses"])[-1] // 3
        return {24: "smpl", 55: "smplx"}.get(joints, "smplh")
    return "smplx" if "pose_jaw" in data else "smplh"


def server_request(data, body: str = "") -> tuple[dict, dict] | None:
    """The `motion.from_params` (inputs, params) of an AMASS-style npz, or None without SMPL
    parameters (``trans`` and ``poses`` or ``root_orient`` + ``pose_body``).

    Args:
        data: a mapping of arrays (``np.load(path)``).
        body: the server's body model name or path ("" lets the server choose from the family
            and gender, e.g. "smplh-male").
    """
    has_pose = "poses" in data or ("root_orient" in data and "pose_body" in data)
    if not has_pose or "trans" not in data:
        return None
    inputs = {k: np.ascontiguousarray(np.asarray(data[k], np.float64)) for k in PARAM_ARRAYS if k in data}
    gender = _text(data.get("gender"), "neutral")
    params = {"gender": gender if gender in ("male", "female") else "neutral", "model": family(data),
              "fps": float(np.asarray(data.get("mocap_framerate", data.get("mocap_frame_rate", 30.0)))),
              "up": "z"}
    if body:
        params["body"] = body
    return inputs, params
