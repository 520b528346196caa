"""The Motion map of PROTOCOL.md as a validated numpy record, and forward kinematics.

A Motion's skeleton has axis-aligned rest frames (the BVH/SMPL convention): joint j's world
rotation at frame t is ``G[t, j] = G[t, parent] @ R[t, j]`` with ``R`` the local rotation, and its
position ``p[t, j] = p[t, parent] + G[t, parent] @ (rest[j] - rest[parent])``; the root sits at
``root_translation[t]``. World: Blender's, Z up, metres, ground at Z = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ...wire import contracts
from ...wire.schema import PipelineError
from . import rotations as rot


class MotionError(ValueError):
    """A Motion map that does not follow PROTOCOL.md; the message names the field."""

    def __init__(self, message: str, field_name: str = "motion"):
        super().__init__(message)
        self.field = field_name


@dataclass
class Motion:
    """A decoded Motion map (PROTOCOL.md "Motion").

    Attributes:
        fps: frames per second.
        names: joint names. [J]
        parents: parent index, -1 for the root, parents before children. [J] int32
        rest: rest joint positions, body frame, metres. [J, 3] float32
        rotations: local rotations (w, x, y, z). [T, J, 4] float32
        root_translation: root world position, metres. [T, 3] float32
        joints: posed world joint positions. [T, J, 3] float32
        keypoints3d: COCO-17 world keypoints (zeros when the source had none). [T, 17, 3]
        contacts: left heel, left toe, right heel, right toe in [0, 1]. [T, 4]
        confidence: per frame. [T]
        camera: the cameras map (``world_from_camera`` [T, 4, 4], intrinsics) or None.
        body: the body model map or None.
        mesh: the skinned rest mesh map or None.
        extra: other keys of the map (e.g. ``keypoints2d``), untouched.
    """

    fps: float
    names: list
    parents: np.ndarray
    rest: np.ndarray
    rotations: np.ndarray
    root_translation: np.ndarray
    joints: np.ndarray
    keypoints3d: np.ndarray
    contacts: np.ndarray
    confidence: np.ndarray
    camera: Optional[dict] = None
    body: Optional[dict] = None
    mesh: Optional[dict] = None
    extra: dict = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return int(self.rotations.shape[0])

    @property
    def joint_count(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def children(self) -> list[list[int]]:
        """Children of each joint. [J] lists"""
        out: list[list[int]] = [[] for _ in self.names]
        for j, p in enumerate(self.parents):
            if p >= 0:
                out[int(p)].append(j)
        return out

    def to_map(self) -> dict:
        """The PROTOCOL.md Motion map (float32 arrays), ready for the wire or `decode_motion`."""
        out = {
            "fps": float(self.fps),
            "skeleton": {"names": list(self.names), "parents": np.asarray(self.parents, np.int32),
                         "rest": np.asarray(self.rest, np.float32)},
            "rotations": np.asarray(self.rotations, np.float32),
            "root_translation": np.asarray(self.root_translation, np.float32),
            "joints": np.asarray(self.joints, np.float32),
            "keypoints3d": np.asarray(self.keypoints3d, np.float32),
            "contacts": np.asarray(self.contacts, np.float32),
            "confidence": np.asarray(self.confidence, np.float32),
        }
        for key in ("camera", "body", "mesh"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(self.extra)
        return out


def forward_kinematics(parents: np.ndarray, rest: np.ndarray, rotations: np.ndarray,
                       root_translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World rotations and positions of every joint.

    Args:
        parents: parent index, -1 for roots, parents first. [J]
        rest: rest joint positions. [J, 3]
        rotations: local rotations (w, x, y, z). [T, J, 4]
        root_translation: world position of the root(s). [T, 3]

    Returns:
        (world rotations [T, J, 3, 3], world positions [T, J, 3]), float64.
    """
    local = rot.quat_to_matrix(rotations)
    t, j = local.shape[:2]
    world = np.empty_like(local)
    pos = np.empty((t, j, 3))
    rest = np.asarray(rest, dtype=np.float64)
    for k, p in enumerate(parents):
        if p < 0:
            world[:, k] = local[:, k]
            pos[:, k] = root_translation
        else:
            world[:, k] = world[:, p] @ local[:, k]
            pos[:, k] = pos[:, p] + world[:, p] @ (rest[k] - rest[p])
    return world, pos


def _fail(error: PipelineError) -> MotionError:
    name = (error.field or "motion").replace("inputs.", "", 1)
    return MotionError(error.message.replace("inputs.", "", 1), name)


def decode_motion(value: Any, check_fk: bool = False, tolerance_m: float = 1e-3) -> Motion:
    """Validate a Motion map against the PROTOCOL.md contract and return a `Motion`.

    Args:
        value: the decoded map (a job result's outputs, or a .npz turned into a map).
        check_fk: also check that ``joints`` is the forward kinematics of the rotations.
        tolerance_m: allowed FK mismatch, metres.

    Raises:
        MotionError: naming the field, e.g. ``motion.skeleton.parents: joint 3 has parent 7,
            which does not come before it``.
    """
    try:
        contracts.MOTION.check(value, "motion", {})
    except PipelineError as error:
        raise _fail(error) from None
    sk = value["skeleton"]
    names = sk["names"]
    parents = np.asarray(sk["parents"], dtype=np.int32)
    j = len(parents)
    if len(names) != j or not all(isinstance(n, str) and n for n in names):
        raise MotionError(f"motion.skeleton.names: expected {j} non-empty strings (one per parent entry), "
                          f"got {len(names)}", "motion.skeleton.names")
    if len(set(names)) != j:
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise MotionError(f"motion.skeleton.names: duplicate names {dupes}", "motion.skeleton.names")
    for k, p in enumerate(parents):
        if p >= k or p < -1:
            raise MotionError(f"motion.skeleton.parents: joint {k} ({names[k]}) has parent {p}, which does not "
                              "come before it", "motion.skeleton.parents")
    if parents[0] != -1:
        raise MotionError("motion.skeleton.parents: joint 0 must be the root (-1)", "motion.skeleton.parents")
    for key in ("rotations", "root_translation", "joints", "contacts", "confidence", "keypoints3d"):
        if not np.all(np.isfinite(value[key])):
            raise MotionError(f"motion.{key}: holds NaN or infinite values", f"motion.{key}")
    if not np.all(np.isfinite(sk["rest"])):
        raise MotionError("motion.skeleton.rest: holds NaN or infinite values", "motion.skeleton.rest")
    norms = np.linalg.norm(value["rotations"], axis=-1)
    if np.any(norms < 1e-6):
        raise MotionError("motion.rotations: holds zero quaternions", "motion.rotations")
    known = {"fps", "skeleton", "rotations", "root_translation", "joints", "keypoints3d", "contacts",
             "confidence", "camera", "body", "mesh"}
    motion = Motion(
        fps=float(value["fps"]), names=list(names), parents=parents,
        rest=np.asarray(sk["rest"], np.float32), rotations=np.asarray(value["rotations"], np.float32),
        root_translation=np.asarray(value["root_translation"], np.float32),
        joints=np.asarray(value["joints"], np.float32), keypoints3d=np.asarray(value["keypoints3d"], np.float32),
        contacts=np.asarray(value["contacts"], np.float32), confidence=np.asarray(value["confidence"], np.float32),
        camera=value.get("camera"), body=value.get("body"), mesh=value.get("mesh"),
        extra={k: v for k, v in value.items() if k not in known})
    if motion.fps <= 0:
        raise MotionError(f"motion.fps: must be positive, got {motion.fps}", "motion.fps")
    if motion.mesh is not None:
        index = np.asarray(motion.mesh["skin_index"])
        if index.size and (index.min() < 0 or index.max() >= j):
            raise MotionError(f"motion.mesh.skin_index: joint indices must be in [0, {j}), got "
                              f"[{index.min()}, {index.max()}]", "motion.mesh.skin_index")
    if check_fk:
        _, pos = forward_kinematics(parents, motion.rest, motion.rotations, motion.root_translation)
        err = float(np.max(np.linalg.norm(pos - motion.joints, axis=-1))) if motion.frames else 0.0
        if err > tolerance_m:
            raise MotionError(f"motion.joints: differ from the forward kinematics of rotations by up to "
                              f"{err * 1000:.1f} mm", "motion.joints")
    return motion


def make_motion(names, parents, rest, rotations, root_translation, fps: float = 30.0,
                contacts: Optional[np.ndarray] = None, keypoints3d: Optional[np.ndarray] = None,
                confidence: Optional[np.ndarray] = None, **optional) -> Motion:
    """A complete `Motion` from a skeleton and its animation (joints by forward kinematics).

    Missing ``contacts`` are estimated from the feet (`estimate_contacts`), missing
    ``keypoints3d`` are zeros and ``confidence`` ones.
    """
    rotations = rot.quat_normalize(np.asarray(rotations)).astype(np.float32)
    root_translation = np.asarray(root_translation, np.float32)
    _, pos = forward_kinematics(np.asarray(parents), rest, rotations, root_translation)
    t = len(rotations)
    motion = Motion(fps=float(fps), names=list(names), parents=np.asarray(parents, np.int32),
                    rest=np.asarray(rest, np.float32), rotations=rotations, root_translation=root_translation,
                    joints=pos.astype(np.float32),
                    keypoints3d=np.zeros((t, 17, 3), np.float32) if keypoints3d is None else keypoints3d,
                    contacts=np.zeros((t, 4), np.float32), confidence=np.ones(t, np.float32) if confidence is None
                    else confidence, **optional)
    motion.contacts = estimate_contacts(motion) if contacts is None else np.asarray(contacts, np.float32)
    return motion


def estimate_contacts(motion: Motion, height_m: float = 0.06, speed_m_s: float = 0.25) -> np.ndarray:
    """Foot contacts from joint heights and speeds (near the ground and nearly still).

    Uses the canonical ankle/foot joints found by `bone_maps.canonical_names` (the heel is the
    ankle, the toe the foot joint). Heights are relative to the lowest each joint gets.

    Returns:
        left heel, left toe, right heel, right toe in {0, 1}. [T, 4] float32
    """
    from .bone_maps import canonical_names

    canon = canonical_names(motion.names, motion.parents, motion.rest)
    out = np.zeros((motion.frames, 4), np.float32)
    for col, key in enumerate(("left_ankle", "left_foot", "right_ankle", "right_foot")):
        name = canon.get(key)
        if name is None or motion.frames < 2:
            continue
        p = motion.joints[:, motion.index(name)].astype(np.float64)
        speed = np.linalg.norm(np.gradient(p, axis=0), axis=-1) * motion.fps
        low = p[:, 2] - p[:, 2].min() < height_m
        out[:, col] = (low & (speed < speed_m_s)).astype(np.float32)
    return out


def pose_bases(motion: Motion, bone_rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pose-basis rotations and root location of an armature built on the Motion's skeleton.

    Bone j's rest orientation is ``B_j`` (Y along the bone, any roll); the Motion's local
    rotation ``R_j`` acts on axis-aligned frames, so the bone's basis is ``B_j^T R_j B_j`` (the
    same rotation seen in the bone's own axes) and the root's location is
    ``B_root^T (root_translation - rest_root)`` (pose locations are in the bone's rest axes).

    Args:
        motion: the motion.
        bone_rest: the armature's rest matrices (``Bone.matrix_local``), one per joint. [J, 4, 4]

    Returns:
        (quaternions (w, x, y, z), continuous in time [T, J, 4] float32,
         root location [T, 3] float32).
    """
    b = np.asarray(bone_rest, dtype=np.float64)[:, :3, :3]
    # In quaternions, B^T R B is conj(qB) qR qB: no matrices per frame.
    qb = rot.matrix_to_quat(b)[None]
    quats = rot.quat_multiply(rot.quat_multiply(rot.quat_conjugate(qb), rot.quat_normalize(motion.rotations)), qb)
    quats = rot.quat_continuous(quats, axis=0)
    root = int(np.flatnonzero(motion.parents < 0)[0])
    loc = (motion.root_translation.astype(np.float64) - motion.rest[root]) @ b[root]
    return quats.astype(np.float32), loc.astype(np.float32)


def motion_from_pose(names, parents, bone_rest: np.ndarray, quats: np.ndarray, root_location: np.ndarray,
                     fps: float, **optional) -> Motion:
    """The Motion of an armature's animation (the inverse of `pose_bases`, for any rig).

    Bone heads become joints; each bone's world rotation from rest, ``G = W B^T`` (``W`` its
    posed orientation), gives the local rotations on axis-aligned frames.

    Args:
        names, parents: the bones, parents first. [J]
        bone_rest: rest matrices, armature space. [J, 4, 4]
        quats: pose-basis rotations (w, x, y, z). [T, J, 4]
        root_location: the root bone's pose-basis location. [T, 3]
        fps: frames per second.
    """
    rest = np.asarray(bone_rest, dtype=np.float64)
    b = rest[:, :3, :3]
    basis = rot.quat_to_matrix(quats)
    t, j = basis.shape[:2]
    g = np.empty((t, j, 3, 3))
    for k, p in enumerate(parents):
        w_rest_rel = b[k] if p < 0 else b[p].T @ b[k]
        w = (w_rest_rel @ basis[:, k]) if p < 0 else g[:, p] @ b[p] @ w_rest_rel @ basis[:, k]
        g[:, k] = w @ b[k].T
    local = np.empty_like(g)
    for k, p in enumerate(parents):
        local[:, k] = g[:, k] if p < 0 else np.swapaxes(g[:, p], -1, -2) @ g[:, k]
    root = int(np.flatnonzero(np.asarray(parents) < 0)[0])
    root_t = rest[root, :3, 3] + np.asarray(root_location, dtype=np.float64) @ b[root].T
    return make_motion(names, parents, rest[:, :3, 3], rot.matrix_to_quat(local), root_t, fps=fps, **optional)
