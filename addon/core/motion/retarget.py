"""Rest-pose aligned retargeting of a Motion onto a target rig, computed in numpy.

Method (per frame, all frames at once):

1. Source forward kinematics: world rotation ``G[t, j]`` of every source joint (axis-aligned
   rest frames, so ``G`` is also the rotation from the source's rest pose).
2. Rest alignment: for a target bone b mapped to source joint j, ``Q_b`` is the smallest
   rotation taking b's rest direction onto the source bone's rest direction (j towards its
   main child). b's rest direction runs from its head to the head of the bone mapped to j's
   main child (its Y axis where that child is unmapped or shares its head): a control's Y
   axis need not lie along what it moves (Rigify's chest). Then b's posed world orientation is ``W_b = G[t, j] Q_b B_b``
   (``B_b`` its rest orientation): its direction follows the source bone exactly, whatever
   the target's rest pose (A-pose vs T-pose), bone lengths and rolls. The root bone keeps
   ``Q = I`` (both rigs stand upright facing -Y). A leaf joint (no child) borrows the
   alignment of its nearest mapped ancestor.
3. Root motion: the midpoint of the target's hip bones moves as the source's hip midpoint,
   scaled by the ratio of leg lengths (thigh + shin); the root bone's head follows rigidly.
4. Bases: posed armature-space matrices of every bone needed, parents first
   (``M_b = M_parent Rest_parent^-1 Rest_b Basis_b``, Blender's rule), and the bases of the
   keyed bones from their desired orientation. ``TargetRig.parents`` may name an *effective*
   parent (a rig whose bones follow others through constraints, as Rigify's, says which bone
   each control really moves with).
5. Optional foot pinning (`footpin`): on contact frames the ankles stay put through a two-bone
   IK of thigh and shin.

Frames: "world" is Blender's world; the rig's rest matrices are in armature space and the
armature object's matrix (rigid) maps them to the world.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import rotations as rot
from .bone_maps import MAIN_CHILD, canonical_names
from .motion import Motion, forward_kinematics

log = logging.getLogger(__name__)


@dataclass
class TargetRig:
    """A target armature's rest pose.

    Attributes:
        names: bone names. [B]
        parents: (effective) parent index per bone, -1 for none; parents before children. [B]
        rest: bone rest matrices in armature space (Blender's ``Bone.matrix_local``; Y along the
            bone, head at the origin). [B, 4, 4]
        lengths: bone lengths, metres. [B]
        world_from_armature: the armature object's matrix (rigid). [4, 4]
    """

    names: list
    parents: np.ndarray
    rest: np.ndarray
    lengths: np.ndarray
    world_from_armature: np.ndarray = field(default_factory=lambda: np.eye(4))

    def index(self, name: str) -> int:
        return self.names.index(name)

    @property
    def heads(self) -> np.ndarray:
        """Rest heads, armature space. [B, 3]"""
        return np.asarray(self.rest)[:, :3, 3]

    @property
    def tails(self) -> np.ndarray:
        """Rest tails, armature space. [B, 3]"""
        return self.heads + np.asarray(self.rest)[:, :3, 1] * np.asarray(self.lengths)[:, None]


@dataclass
class RetargetSettings:
    """Options of `retarget`.

    Attributes:
        scale_root: scale root motion by the leg-length ratio (else 1:1 metres).
        pin_feet: pin the ankles on contact frames (two-bone IK of thigh and shin).
        contact_threshold: a foot is in contact where max(heel, toe) exceeds this.
        blend_frames: frames over which pinning fades in and out around a contact.
    """

    scale_root: bool = True
    pin_feet: bool = True
    contact_threshold: float = 0.5
    blend_frames: int = 3


@dataclass
class RetargetResult:
    """What `retarget` computed.

    Attributes:
        bones: names of the keyed target bones. [K]
        quaternions: their pose-basis rotations (w, x, y, z), continuous in time. [T, K, 4] float32
        root_bone: the keyed bone that also gets location keys.
        root_location: its pose-basis location, metres. [T, 3] float32
        matrices: posed armature-space matrices of the bones evaluated (keyed bones and their
            effective ancestors), by name. {name: [T, 4, 4]}
        scale: root-motion scale (target leg length / source leg length).
        pairs: the (source joint, target bone) pairs used.
        pinned: frames pinned per side, {"left": [T] bool, "right": [T] bool}.
    """

    bones: list
    quaternions: np.ndarray
    root_bone: str
    root_location: np.ndarray
    matrices: dict
    scale: float
    pairs: list
    pinned: dict


def main_children(motion: Motion) -> dict:
    """Source joint index -> the child joint index its bone points to (missing for leaves)."""
    canon = canonical_names(motion.names, motion.parents, motion.rest)
    by_name = {v: k for k, v in canon.items()}
    children = motion.children()
    out = {}
    for j in range(motion.joint_count):
        kids = children[j]
        if not kids:
            continue
        label = by_name.get(motion.names[j])
        want = canon.get(MAIN_CHILD.get(label, ""), None)
        if want is not None and motion.names.index(want) in kids:
            out[j] = motion.names.index(want)
        elif len(kids) == 1:
            out[j] = kids[0]
        else:
            # The child with the deepest subtree (the spine over the legs at a pelvis).
            def depth(k):
                return 1 + max((depth(c) for c in children[k]), default=0)
            out[j] = max(kids, key=depth)
    return out


def source_directions(motion: Motion) -> tuple[dict, np.ndarray]:
    """World bone directions of the source per frame.

    Returns:
        (main child per joint index, unit directions [T, J, 3] (zeros for leaves)).
    """
    g, _ = forward_kinematics(motion.parents, motion.rest, motion.rotations, motion.root_translation)
    mains = main_children(motion)
    rest = motion.rest.astype(np.float64)
    d = np.zeros((motion.frames, motion.joint_count, 3))
    for j, c in mains.items():
        v = rest[c] - rest[j]
        d[:, j] = g[:, j] @ (v / max(np.linalg.norm(v), 1e-12))
    return mains, d


def leg_length(points: dict) -> Optional[float]:
    """Mean over sides of |hip - knee| + |knee - ankle| from {canonical: position}."""
    sums = []
    for s in ("left", "right"):
        keys = (f"{s}_hip", f"{s}_knee", f"{s}_ankle")
        if all(k in points for k in keys):
            a, b, c = (np.asarray(points[k], dtype=np.float64) for k in keys)
            sums.append(np.linalg.norm(b - a) + np.linalg.norm(c - b))
    return float(np.mean(sums)) if sums else None


def needed_bones(rig: TargetRig, keyed: list[int]) -> list[int]:
    """The keyed bones and all their (effective) ancestors, parents first."""
    need = set()
    for b in keyed:
        while b >= 0 and b not in need:
            need.add(b)
            b = int(rig.parents[b])
    return sorted(need)


def pose_matrices(rig: TargetRig, bones: list[int], world_rot: dict, root: int, root_head: np.ndarray,
                  frames: int) -> dict:
    """Posed armature-space matrices of ``bones`` (parents first).

    Args:
        rig: the target.
        bones: bone indices to evaluate, every parent before its child.
        world_rot: keyed bone index -> desired armature-space orientation. [T, 3, 3]
        root: the bone whose head is placed at ``root_head``.
        root_head: its armature-space head per frame. [T, 3]
        frames: T.

    Returns:
        {bone index: [T, 4, 4]}; unkeyed bones keep their rest pose relative to their parent.
    """
    rest = np.asarray(rig.rest, dtype=np.float64)
    out = {}
    for b in bones:
        p = int(rig.parents[b])
        if p >= 0:
            m = out[p] @ (np.linalg.inv(rest[p]) @ rest[b])
        else:
            m = np.broadcast_to(rest[b], (frames, 4, 4)).copy()
        if b in world_rot:
            m[:, :3, :3] = world_rot[b]
        if b == root:
            m[:, :3, 3] = root_head
        out[b] = m
    return out


def rigid_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms (rotation + translation): ``[R^T, -R^T t]``. [..., 4, 4]

    Posed bone matrices have no scale here; this is ~20x faster than a general batched inverse.
    """
    out = np.zeros_like(m)
    rt_ = np.swapaxes(m[..., :3, :3], -1, -2)
    out[..., :3, :3] = rt_
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rt_, m[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def bases_from_matrices(rig: TargetRig, keyed: list[int], mats: dict) -> np.ndarray:
    """Pose-basis matrices of the keyed bones: ``Rest_b^-1 Rest_p M_p^-1 M_b``. [T, K, 4, 4]"""
    rest = np.asarray(rig.rest, dtype=np.float64)
    out = []
    for b in keyed:
        p = int(rig.parents[b])
        if p >= 0:
            local = (np.linalg.inv(rest[b]) @ rest[p]) @ rigid_inverse(mats[p]) @ mats[b]
        else:
            local = np.linalg.inv(rest[b]) @ mats[b]
        out.append(local)
    return np.stack(out, axis=1)


def retarget(motion: Motion, rig: TargetRig, pairs: list[tuple[str, str]],
             settings: Optional[RetargetSettings] = None) -> RetargetResult:
    """Retarget ``motion`` onto ``rig`` through the (source joint, target bone) ``pairs``.

    Raises:
        ValueError: a pair names a joint or bone that does not exist, a bone is mapped twice,
            or the source root is not mapped (naming it).
    """
    settings = settings or RetargetSettings()
    for src, dst in pairs:
        if src not in motion.names:
            raise ValueError(f"bone map: source joint {src!r} is not in the motion's skeleton")
        if dst not in rig.names:
            raise ValueError(f"bone map: target bone {dst!r} is not in the armature")
    targets = [dst for _, dst in pairs]
    if len(set(targets)) != len(targets):
        raise ValueError(f"bone map: target bones mapped twice: {sorted({t for t in targets if targets.count(t) > 1})}")
    src_of = {dst: motion.index(src) for src, dst in pairs}
    root_joint = int(np.flatnonzero(motion.parents < 0)[0])
    root_name = next((dst for src, dst in pairs if motion.index(src) == root_joint), None)
    if root_name is None:
        raise ValueError(f"bone map: the source root joint {motion.names[root_joint]!r} must be mapped")
    t = motion.frames

    # 1. Source world rotations and bone directions.
    g, src_pos = forward_kinematics(motion.parents, motion.rest, motion.rotations, motion.root_translation)
    mains = main_children(motion)
    world_from_arm = np.asarray(rig.world_from_armature, dtype=np.float64)
    arm_rot = world_from_arm[:3, :3]
    arm_from_world = np.linalg.inv(world_from_arm)
    rest = np.asarray(rig.rest, dtype=np.float64)

    # Keyed bones in hierarchy order (the effective parents come first by construction).
    keyed = sorted(rig.index(dst) for dst in targets)
    # 2. Rest alignment per keyed bone (world frame).
    # The target's direction of a bone is from its head to the head of the bone mapped to the
    # source joint's main child, where there is one: a control bone's own Y axis need not run
    # along the limb it drives (Rigify's chest control points backwards, horizontally, while
    # the spine it turns points up; aligning that Y axis with the source's spine tipped the
    # whole upper body over by 90 degrees). Its Y axis otherwise (leaves, unmapped children).
    tgt_of = {motion.index(src): rig.index(dst) for src, dst in pairs}
    align = {}
    for b in keyed:
        j = src_of[rig.names[b]]
        if j == root_joint or j not in mains:
            continue
        d_src = motion.rest[mains[j]].astype(np.float64) - motion.rest[j]
        d_tgt = arm_rot @ rest[b, :3, 1]
        child = tgt_of.get(mains[j])
        if child is not None:
            span = arm_rot @ (rest[child, :3, 3] - rest[b, :3, 3])
            if np.linalg.norm(span) > 0.02:
                d_tgt = span
        align[b] = rot.rotation_between(d_tgt, d_src)
    for b in keyed:
        if b in align:
            continue
        j = src_of[rig.names[b]]
        q = np.eye(3)
        if j != root_joint:
            a = int(motion.parents[j])
            while a >= 0:
                hit = next((bb for bb in keyed if src_of[rig.names[bb]] == a and bb in align), None)
                if hit is not None:
                    q = align[hit]
                    break
                a = int(motion.parents[a])
        align[b] = q
    world_rot = {}
    for b in keyed:
        j = src_of[rig.names[b]]
        w = g[:, j] @ (align[b] @ (arm_rot @ rest[b, :3, :3]))
        world_rot[b] = arm_rot.T @ w  # armature space

    # 3. Root motion, scaled by leg length, through the hip midpoint.
    root = rig.index(root_name)
    src_canon = canonical_names(motion.names, motion.parents, motion.rest)
    src_points = {k: motion.rest[motion.index(v)] for k, v in src_canon.items()}
    tgt_canon = {}
    for src, dst in pairs:
        for k, v in src_canon.items():
            if v == src:
                tgt_canon[k] = rig.index(dst)
    heads_w = (world_from_arm[:3, :3] @ rig.heads.T).T + world_from_arm[:3, 3]
    tgt_points = {k: heads_w[b] for k, b in tgt_canon.items()}
    src_leg, tgt_leg = leg_length(src_points), leg_length(tgt_points)
    scale = float(tgt_leg / src_leg) if (settings.scale_root and src_leg and tgt_leg) else 1.0
    hips = [k for k in ("left_hip", "right_hip") if k in src_canon and k in tgt_canon]
    if len(hips) == 2:
        src_anchor = np.mean([src_pos[:, motion.index(src_canon[k])] for k in hips], axis=0)
        src_anchor_rest = np.mean([src_points[k] for k in hips], axis=0)
        tgt_anchor_rest = np.mean([tgt_points[k] for k in hips], axis=0)
    else:
        src_anchor, src_anchor_rest = src_pos[:, root_joint], motion.rest[root_joint]
        tgt_anchor_rest = heads_w[root]
    tgt_anchor = tgt_anchor_rest + scale * (src_anchor - src_anchor_rest)
    # The root bone's head follows the anchor rigidly: rotated by the root joint's rotation.
    root_head_w = tgt_anchor + g[:, root_joint] @ (heads_w[root] - tgt_anchor_rest)
    root_head = root_head_w @ arm_from_world[:3, :3].T + arm_from_world[:3, 3]

    # 4. Posed matrices of every bone involved.
    bones = needed_bones(rig, keyed)
    mats = pose_matrices(rig, bones, world_rot, root, root_head, t)

    # 5. Foot pinning.
    pinned = {"left": np.zeros(t, bool), "right": np.zeros(t, bool)}
    if settings.pin_feet:
        from . import footpin

        mats, pinned = footpin.pin_feet(
            rig, world_rot, mats, tgt_canon, motion.contacts, g[:, root_joint], settings,
            lambda rots, offset=None: pose_matrices(rig, bones, rots, root,
                                                    root_head if offset is None else root_head + offset, t))

    basis = bases_from_matrices(rig, keyed, mats)
    quats = rot.quat_continuous(rot.matrix_to_quat(basis[..., :3, :3]), axis=0)
    root_k = keyed.index(root)
    return RetargetResult(
        bones=[rig.names[b] for b in keyed], quaternions=quats.astype(np.float32), root_bone=root_name,
        root_location=basis[:, root_k, :3, 3].astype(np.float32),
        matrices={rig.names[b]: m for b, m in mats.items()}, scale=scale, pairs=list(pairs), pinned=pinned)
