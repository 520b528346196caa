"""Foot pinning on contact frames: contact segments and an analytic two-bone IK (numpy).

On every frame where a foot is in contact, its ankle (the head of the bone mapped to the
ankle) is held at one point per contact segment: the mean of where the retarget put it over
the segment, so a target whose proportions differ from the source's does not skate. Thigh and
shin rotate in the plane of hip, knee and target (the knee keeps its bending side); the foot
keeps its world orientation. Pinning fades in and out over ``blend_frames`` around a segment.
"""

from __future__ import annotations

import numpy as np

from . import rotations as rot


def contact_segments(active: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame ranges where ``active`` is true. [T] bool"""
    a = np.concatenate([[False], np.asarray(active, bool), [False]])
    edges = np.flatnonzero(a[1:] != a[:-1])
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def two_bone_ik(hip: np.ndarray, knee: np.ndarray, ankle: np.ndarray, goal: np.ndarray,
                pole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotations that bring a two-bone chain's end onto ``goal``, knee in the (hip, goal, pole) plane.

    Args:
        hip, knee, ankle: current joint positions. [N, 3]
        goal: wanted ankle positions (clamped to the chain's reach). [N, 3]
        pole: a direction the knee should bend towards, perpendicular-ish to hip->goal. [N, 3]

    Returns:
        (rotation applied to the upper bone about the hip [N, 3, 3],
         rotation applied to the lower bone's current world orientation [N, 3, 3]); the lower
        bone's new orientation is ``r_lower @ r_upper @ W_lower``.
    """
    l1 = np.linalg.norm(knee - hip, axis=-1)
    l2 = np.linalg.norm(ankle - knee, axis=-1)
    to_goal = goal - hip
    dist = np.linalg.norm(to_goal, axis=-1)
    dist_c = np.clip(dist, np.abs(l1 - l2) + 1e-6, l1 + l2 - 1e-6)
    axis = to_goal / np.maximum(dist, 1e-9)[:, None]
    # Pole component perpendicular to the hip->goal axis.
    bend = pole - np.sum(pole * axis, axis=-1, keepdims=True) * axis
    bend /= np.maximum(np.linalg.norm(bend, axis=-1, keepdims=True), 1e-9)
    # Law of cosines: distance of the knee along the axis and off it.
    along = (l1 ** 2 - l2 ** 2 + dist_c ** 2) / (2 * dist_c)
    off = np.sqrt(np.maximum(l1 ** 2 - along ** 2, 0.0))
    new_knee = hip + axis * along[:, None] + bend * off[:, None]
    new_ankle = hip + axis * dist_c[:, None]
    r_upper = rot.rotation_between(knee - hip, new_knee - hip)
    lower_now = np.einsum("nij,nj->ni", r_upper, ankle - knee)
    r_lower = rot.rotation_between(lower_now, new_ankle - new_knee)
    return r_upper, r_lower


def _reach_drop(hip: np.ndarray, goal: np.ndarray, reach: float) -> np.ndarray:
    """How far the hip must come down (along Z) for ``goal`` to be within ``reach``. [T]"""
    d = goal - hip
    h2 = d[:, 0] ** 2 + d[:, 1] ** 2
    v = np.sqrt(np.maximum(reach ** 2 - h2, 0.0))
    return np.maximum(-d[:, 2] - v, 0.0)


def pin_feet(rig, world_rot, mats, tgt_canon, contacts, root_rot, settings, repose):
    """Pin the ankles on contact frames; returns (new matrices, {side: [T] bool pinned}).

    A pin a leg cannot reach (a target whose legs are straighter than the source's) lowers the
    root just enough, smoothed over the blend window so the body does not pop.

    Args:
        rig: `retarget.TargetRig`.
        world_rot: keyed bone -> armature-space orientation [T, 3, 3] (updated in place).
        mats: {bone: [T, 4, 4]} posed matrices from `retarget.pose_matrices`.
        tgt_canon: {canonical: target bone index}.
        contacts: the Motion's contacts. [T, 4]
        root_rot: the source root's world rotation, for a fallback knee direction. [T, 3, 3]
        settings: `retarget.RetargetSettings`.
        repose: ``repose(world_rot, root_offset [T, 3]) -> mats``, the rig's forward kinematics
            (`retarget.pose_matrices` with the root moved by ``root_offset``).
    """
    t = len(contacts)
    pinned = {"left": np.zeros(t, bool), "right": np.zeros(t, bool)}
    arm_rot = np.asarray(rig.world_from_armature, dtype=np.float64)[:3, :3]
    heads = rig.heads
    plans = []
    # 1. Where each foot must stay: one point per contact segment, faded in and out.
    for col, s in ((0, "left"), (2, "right")):
        keys = (f"{s}_hip", f"{s}_knee", f"{s}_ankle")
        if not all(k in tgt_canon for k in keys):
            continue
        hb, kb, ab = (tgt_canon[k] for k in keys)
        if hb not in world_rot or kb not in world_rot or ab not in mats:
            continue
        active = np.max(np.asarray(contacts)[:, col:col + 2], axis=1) > settings.contact_threshold
        segments = contact_segments(active)
        if not segments:
            continue
        ankle = mats[ab][:, :3, 3]
        goal = ankle.copy()
        weight = np.zeros(t)
        for a, b in segments:
            pin = ankle[a:b].mean(axis=0)
            goal[a:b] = pin
            weight[a:b] = 1.0
            pinned[s][a:b] = True
            n = settings.blend_frames
            for k in range(1, n + 1):
                w = 1.0 - k / (n + 1)
                for f in (a - k, b - 1 + k):
                    if 0 <= f < t and w > weight[f]:
                        weight[f] = w
                        goal[f] = (1 - w) * ankle[f] + w * pin
        reach = np.linalg.norm(heads[kb] - heads[hb]) + np.linalg.norm(heads[ab] - heads[kb])
        plans.append((hb, kb, ab, np.flatnonzero(weight > 0), goal, 0.998 * reach))
    if not plans:
        return mats, pinned
    # 2. Lower the root where a pin is out of reach (the larger need of the two legs), spread
    # over the blend window (a moving maximum, then a moving average) so it eases in and out.
    drop = np.zeros(t)
    for hb, _, _, frames, goal, reach in plans:
        need = np.zeros(t)
        need[frames] = _reach_drop(mats[hb][frames, :3, 3], goal[frames], reach)
        drop = np.maximum(drop, need)
    offset = None
    if drop.max() > 0:
        n = max(settings.blend_frames, 1)
        padded = np.pad(drop, n, mode="edge")
        widened = np.max(np.stack([padded[i:i + t] for i in range(2 * n + 1)]), axis=0)
        padded = np.pad(widened, n, mode="edge")
        smooth = np.mean(np.stack([padded[i:i + t] for i in range(2 * n + 1)]), axis=0)
        offset = np.zeros((t, 3))
        offset[:, 2] = -np.maximum(smooth, drop)
        mats = repose(world_rot, offset)
    # 3. Two-bone IK of thigh and shin onto the goals.
    for hb, kb, ab, frames, goal, _ in plans:
        hip = mats[hb][frames, :3, 3]
        knee = mats[kb][frames, :3, 3]
        ank = mats[ab][frames, :3, 3]
        # The knee bends towards where it is now; for a straight leg, towards the front.
        line = ank - hip
        line /= np.maximum(np.linalg.norm(line, axis=-1, keepdims=True), 1e-9)
        bent = (knee - hip) - np.sum((knee - hip) * line, axis=-1, keepdims=True) * line
        front = (arm_rot.T @ (root_rot[frames] @ np.array([0.0, -1.0, 0.0])).T).T
        straight = np.linalg.norm(bent, axis=-1) < 1e-3
        pole = np.where(straight[:, None], front, bent)
        r_up, r_low = two_bone_ik(hip, knee, ank, goal[frames], pole)
        world_rot[hb][frames] = r_up @ world_rot[hb][frames]
        world_rot[kb][frames] = r_low @ r_up @ world_rot[kb][frames]
    return repose(world_rot, offset), pinned
