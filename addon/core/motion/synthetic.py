"""A template SMPL-like skeleton and procedural motions (walk cycles) for demos, tests and benchmarks.

The template is a 1.7 m body in the PROTOCOL.md body frame (Z up, facing -Y, +X the body's
left) in a T-pose, with SMPL's 24 joint names and hierarchy (`bone_maps.CANONICAL`). The walk
is a sum of sinusoids per joint angle, with the root advancing along -Y, so every quantity is
known exactly.
"""

from __future__ import annotations

import numpy as np

from . import rotations as rot
from .bone_maps import CANONICAL, CANONICAL_PARENTS
from .motion import Motion, forward_kinematics, make_motion

#: Rest joint positions of the template, metres (left side; the right is mirrored in X).
_LEFT_REST = {
    "pelvis": (0.0, 0.0, 0.95), "left_hip": (0.09, 0.0, 0.88), "spine1": (0.0, 0.01, 1.06),
    "left_knee": (0.10, 0.0, 0.50), "spine2": (0.0, 0.0, 1.18), "left_ankle": (0.10, 0.02, 0.09),
    "spine3": (0.0, 0.0, 1.26), "left_foot": (0.11, -0.11, 0.02), "neck": (0.0, 0.01, 1.49),
    "left_collar": (0.07, 0.0, 1.41), "head": (0.0, -0.01, 1.58), "left_shoulder": (0.18, 0.0, 1.42),
    "left_elbow": (0.45, 0.0, 1.42), "left_wrist": (0.70, 0.0, 1.42), "left_hand": (0.79, 0.0, 1.42),
}


def template_rest() -> np.ndarray:
    """Rest joint positions of the template, `CANONICAL` order. [24, 3] float32"""
    out = []
    for name in CANONICAL:
        if name.startswith("right_"):
            x, y, z = _LEFT_REST[name.replace("right_", "left_")]
            out.append((-x, y, z))
        else:
            out.append(_LEFT_REST[name])
    return np.asarray(out, np.float32)


def _axis_rot(axis: str, angle: np.ndarray) -> np.ndarray:
    v = np.zeros(np.shape(angle) + (3,))
    v[..., "xyz".index(axis)] = angle
    return rot.axis_angle_to_matrix(v)


def walk(frames: int = 120, fps: float = 30.0, speed_m_s: float = 1.2, cadence_hz: float = 0.9,
         turn_deg: float = 0.0, seed: int = 0) -> Motion:
    """A procedural walk on the template skeleton.

    Args:
        frames: T.
        fps: frames per second.
        speed_m_s: unused (kept for callers); the stance foot stays planted, so the gait sets the speed.
        cadence_hz: gait cycles per second.
        turn_deg: total turn about Z over the clip (a curved path).
        seed: seeds small per-joint noise so motions differ.

    Returns:
        A `Motion` with contacts estimated from the feet.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / fps
    phase = 2 * np.pi * cadence_hz * t
    j = len(CANONICAL)
    local = np.broadcast_to(np.eye(3), (frames, j, 3, 3)).copy()
    idx = {n: i for i, n in enumerate(CANONICAL)}

    def set_(name, m):
        local[:, idx[name]] = m @ local[:, idx[name]]

    # Body frame: +X left, -Y front. A leg swings forward with a negative rotation about +X? The
    # thigh points down (-Z); rotating it about +X by +a moves the foot towards +Y (back), so a
    # forward swing is a negative angle.
    for s, sign in (("left", 1.0), ("right", -1.0)):
        swing = 0.45 * np.sin(phase) * sign
        set_(f"{s}_hip", _axis_rot("x", -swing))
        knee = 0.55 * np.clip(np.sin(phase + sign * 0.0 - np.pi / 2 * sign), 0, None) + 0.05
        set_(f"{s}_knee", _axis_rot("x", knee))
        set_(f"{s}_ankle", _axis_rot("x", -0.15 * np.sin(phase) * sign))
        # Arms down from the T-pose (about Y), swinging opposite to the legs.
        set_(f"{s}_shoulder", _axis_rot("y", sign * 1.2) @ _axis_rot("x", 0.35 * np.sin(phase) * sign))
        set_(f"{s}_elbow", _axis_rot("z", sign * (0.3 + 0.15 * np.sin(phase + 0.5))))
    set_("spine1", _axis_rot("x", 0.05 + 0.03 * np.sin(2 * phase)))  # a slight forward lean
    set_("spine3", _axis_rot("z", 0.08 * np.sin(phase)))
    set_("neck", _axis_rot("x", 0.04 * np.sin(2 * phase + 0.3)))
    set_("head", _axis_rot("z", -0.06 * np.sin(phase)))
    noise = rng.normal(scale=0.02, size=(j, 3))
    for k in range(1, j):
        local[:, k] = local[:, k] @ rot.axis_angle_to_matrix(noise[k])
    heading = np.radians(turn_deg) * t / max(t[-1], 1e-9) if frames > 1 else np.zeros(frames)
    local[:, 0] = _axis_rot("z", heading) @ _axis_rot("z", 0.05 * np.sin(phase))
    # The root moves so the stance foot stays planted: it travels opposite to the stance ankle's
    # motion relative to the root, and rises and falls to keep that ankle at its rest height.
    rest = template_rest()
    quats = rot.matrix_to_quat(local)
    _, rel = forward_kinematics(np.asarray(CANONICAL_PARENTS), rest, quats, np.zeros((frames, 3)))
    stance_left = np.cos(phase) < 0
    ankle = np.where(stance_left[:, None], rel[:, idx["left_ankle"]], rel[:, idx["right_ankle"]])
    step = np.zeros((frames, 3))
    step[1:, :2] = -(ankle[1:, :2] - ankle[:-1, :2])
    # Where the stance side switches, the new stance foot's own motion carries on.
    switch = np.flatnonzero(stance_left[1:] != stance_left[:-1]) + 1
    prev = np.where(stance_left[:, None], rel[:, idx["left_ankle"]], rel[:, idx["right_ankle"]])
    for f in switch:
        step[f, :2] = -(prev[f, :2] - np.where(stance_left[f], rel[f - 1, idx["left_ankle"]],
                                              rel[f - 1, idx["right_ankle"]])[:2])
    root = np.cumsum(step, axis=0)
    root[:, 2] = rest[idx["left_ankle"], 2] - ankle[:, 2]
    del speed_m_s  # the gait sets the speed
    # Stance while a leg swings backwards (its swing angle decreasing), heel and toe together.
    left = (np.cos(phase) < -0.2).astype(np.float32)
    right = (np.cos(phase) > 0.2).astype(np.float32)
    contacts = np.stack([left, left, right, right], axis=1)
    return make_motion(CANONICAL, CANONICAL_PARENTS, rest, quats, root, fps=fps, contacts=contacts)


def random_motion(frames: int, seed: int = 0, fps: float = 30.0) -> Motion:
    """Random smooth rotations on the template (for import round trips and benchmarks)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / fps
    j = len(CANONICAL)
    freq = rng.uniform(0.2, 1.5, size=(j, 3))
    amp = rng.uniform(0.1, 0.6, size=(j, 3))
    vec = amp[None] * np.sin(2 * np.pi * freq[None] * t[:, None, None] + rng.uniform(0, 6, (j, 3)))
    quats = rot.matrix_to_quat(rot.axis_angle_to_matrix(vec))
    root = template_rest()[0] + np.stack([0.3 * np.sin(t), -0.5 * t, 0.03 * np.sin(3 * t)], axis=1)
    return make_motion(CANONICAL, CANONICAL_PARENTS, template_rest(), quats, root, fps=fps)
