"""Batched rotation maths on numpy arrays (no bpy, no mathutils).

Conventions: quaternions are (w, x, y, z) (PROTOCOL.md), Hamilton product, rotating column
vectors (``v' = R @ v``). Every function takes any leading batch shape ``[...]``.
"""

from __future__ import annotations

import numpy as np

from ..formats.axes import quat_multiply  # noqa: F401  (the one Hamilton product, re-exported)

_EPS = 1e-12


def quat_normalize(q: np.ndarray) -> np.ndarray:
    """Unit quaternions. [..., 4]"""
    q = np.asarray(q, dtype=np.float64)
    return q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), _EPS)


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    """The inverse of unit quaternions. [..., 4]"""
    q = np.asarray(q)
    return np.concatenate([q[..., :1], -q[..., 1:]], axis=-1)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices of (not necessarily unit) quaternions. [..., 4] -> [..., 3, 3]"""
    w, x, y, z = np.moveaxis(quat_normalize(q), -1, 0)
    m = np.empty(w.shape + (3, 3))
    m[..., 0, 0] = 1 - 2 * (y * y + z * z)
    m[..., 0, 1] = 2 * (x * y - w * z)
    m[..., 0, 2] = 2 * (x * z + w * y)
    m[..., 1, 0] = 2 * (x * y + w * z)
    m[..., 1, 1] = 1 - 2 * (x * x + z * z)
    m[..., 1, 2] = 2 * (y * z - w * x)
    m[..., 2, 0] = 2 * (x * z - w * y)
    m[..., 2, 1] = 2 * (y * z + w * x)
    m[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return m


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Unit quaternions (w >= 0) of rotation matrices (Shepperd's method, branch per element).

    Args:
        m: rotation matrices. [..., 3, 3]

    Returns:
        [..., 4]
    """
    m = np.asarray(m, dtype=np.float64)
    batch = m.shape[:-2]
    m = m.reshape(-1, 3, 3)
    t = np.trace(m, axis1=1, axis2=2)
    d = np.stack([t, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    pick = np.argmax(d, axis=1)
    q = np.empty((len(m), 4))
    # Each case divides by the largest of 4w^2, 4x^2, 4y^2, 4z^2: numerically safe.
    c = pick == 0
    s = np.sqrt(np.maximum(1.0 + t[c], _EPS)) * 2
    q[c] = np.stack([0.25 * s, (m[c, 2, 1] - m[c, 1, 2]) / s, (m[c, 0, 2] - m[c, 2, 0]) / s,
                     (m[c, 1, 0] - m[c, 0, 1]) / s], axis=1)
    c = pick == 1
    s = np.sqrt(np.maximum(1.0 + m[c, 0, 0] - m[c, 1, 1] - m[c, 2, 2], _EPS)) * 2
    q[c] = np.stack([(m[c, 2, 1] - m[c, 1, 2]) / s, 0.25 * s, (m[c, 0, 1] + m[c, 1, 0]) / s,
                     (m[c, 0, 2] + m[c, 2, 0]) / s], axis=1)
    c = pick == 2
    s = np.sqrt(np.maximum(1.0 + m[c, 1, 1] - m[c, 0, 0] - m[c, 2, 2], _EPS)) * 2
    q[c] = np.stack([(m[c, 0, 2] - m[c, 2, 0]) / s, (m[c, 0, 1] + m[c, 1, 0]) / s, 0.25 * s,
                     (m[c, 1, 2] + m[c, 2, 1]) / s], axis=1)
    c = pick == 3
    s = np.sqrt(np.maximum(1.0 + m[c, 2, 2] - m[c, 0, 0] - m[c, 1, 1], _EPS)) * 2
    q[c] = np.stack([(m[c, 1, 0] - m[c, 0, 1]) / s, (m[c, 0, 2] + m[c, 2, 0]) / s,
                     (m[c, 1, 2] + m[c, 2, 1]) / s, 0.25 * s], axis=1)
    q = quat_normalize(q)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.reshape(batch + (4,))


def quat_continuous(q: np.ndarray, axis: int = 0) -> np.ndarray:
    """Flip signs along ``axis`` (time) so consecutive quaternions lie in one hemisphere.

    Interpolating fcurves channel by channel between q and -q (the same rotation) would swing
    through the identity; this keeps neighbours on the same side. [T, ..., 4]
    """
    q = np.moveaxis(np.array(q, dtype=np.float64), axis, 0)
    dots = np.sum(q[1:] * q[:-1], axis=-1)
    flips = np.cumprod(np.where(dots < 0, -1.0, 1.0), axis=0)
    q[1:] *= flips[..., None]
    return np.moveaxis(q, 0, axis)


def axis_angle_to_matrix(v: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vectors (axis * angle, radians) to matrices. [..., 3] -> [..., 3, 3]"""
    v = np.asarray(v, dtype=np.float64)
    angle = np.linalg.norm(v, axis=-1, keepdims=True)
    half = 0.5 * angle
    # sin(half)/angle -> 0.5 as angle -> 0.
    scale = np.where(angle > 1e-8, np.sin(half) / np.maximum(angle, 1e-12), 0.5)
    q = np.concatenate([np.cos(half), v * scale], axis=-1)
    return quat_to_matrix(q)


def matrix_to_axis_angle(m: np.ndarray) -> np.ndarray:
    """Rotation vectors (axis * angle) of rotation matrices. [..., 3, 3] -> [..., 3]"""
    q = matrix_to_quat(m)
    s = np.linalg.norm(q[..., 1:], axis=-1, keepdims=True)
    angle = 2 * np.arctan2(s, q[..., :1])
    return np.where(s > 1e-12, q[..., 1:] / np.maximum(s, 1e-12) * angle, 2 * q[..., 1:])


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking direction ``a`` onto direction ``b``.

    Args:
        a: from directions (any length > 0). [..., 3]
        b: to directions. [..., 3]

    Returns:
        rotation matrices with ``R @ a_hat = b_hat``. [..., 3, 3]
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), _EPS)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), _EPS)
    axis = np.cross(a, b)
    cos = np.sum(a * b, axis=-1, keepdims=True)
    # Opposite directions: any axis perpendicular to a, half a turn.
    opposite = cos[..., 0] < -1 + 1e-9
    if np.any(opposite):
        helper = np.where(np.abs(a[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
        perp = np.cross(a, helper)
        perp /= np.maximum(np.linalg.norm(perp, axis=-1, keepdims=True), _EPS)
        axis = np.where(opposite[..., None], perp, axis)
    q = np.concatenate([1.0 + cos, axis], axis=-1)
    q = np.where(opposite[..., None], np.concatenate([np.zeros_like(cos), axis], axis=-1), q)
    return quat_to_matrix(q)


def angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between directions, degrees (robust near 0 and 180). [..., 3] -> [...]"""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1)))
