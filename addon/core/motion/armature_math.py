"""Blender's bone conventions in numpy: rest matrices from head, tail and roll.

`bone_matrix` reimplements Blender's ``vec_roll_to_mat3_normalized`` (armature.cc): the bone's
Y axis points from head to tail; with roll 0 the X and Z axes come from the smallest rotation
taking +Y onto that direction; roll then turns them about Y (right-handed).
"""

from __future__ import annotations

import numpy as np

from . import rotations as rot


def bone_matrix(head: np.ndarray, tail: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Rest matrices (``Bone.matrix_local``) of bones. [..., 3], [..., 3], [...] -> [..., 4, 4]"""
    head = np.asarray(head, dtype=np.float64)
    nor = np.asarray(tail, dtype=np.float64) - head
    nor = nor / np.maximum(np.linalg.norm(nor, axis=-1, keepdims=True), 1e-12)
    x, y, z = np.moveaxis(nor, -1, 0)
    theta = 1.0 + y
    close = theta <= 1e-5
    theta_alt = x * x + z * z
    theta = np.where(close, theta_alt / 2 + theta_alt ** 2 / 8, theta)
    neg_y = close & (theta_alt <= 1e-18)
    theta = np.where(neg_y, 1.0, theta)
    b = np.empty(x.shape + (3, 3))
    b[..., 0, 0] = 1 - x * x / theta
    b[..., 1, 0] = -x
    b[..., 2, 0] = -x * z / theta
    b[..., 0, 1] = x
    b[..., 1, 1] = y
    b[..., 2, 1] = z
    b[..., 0, 2] = -x * z / theta
    b[..., 1, 2] = -z
    b[..., 2, 2] = 1 - z * z / theta
    b = np.where(neg_y[..., None, None], np.diag([-1.0, -1.0, 1.0]), b)
    r = rot.axis_angle_to_matrix(nor * np.asarray(roll, dtype=np.float64)[..., None])
    out = np.zeros(x.shape + (4, 4))
    out[..., :3, :3] = r @ b
    out[..., :3, 3] = head
    out[..., 3, 3] = 1.0
    return out
