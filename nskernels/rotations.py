"""Rotation conversions in torch: axis-angle, matrices, quaternions (w, x, y, z).

All functions are batched over any leading dimensions and differentiable. Quaternions follow
the wire's order (w, x, y, z) (PROTOCOL.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["axis_angle_to_matrix", "matrix_to_quaternion", "matrix_to_axis_angle",
           "quaternion_to_matrix", "rotation_x", "rotation_z"]


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula, smooth at the zero rotation.

    Args:
        axis_angle: rotation vectors (axis times angle, radians). [..., 3]

    Returns:
        Rotation matrices. [..., 3, 3]
    """
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    theta = torch.sqrt(theta2 + 1e-12)
    small = theta2 < 1e-8
    # Taylor expansions near zero keep the gradient finite where sin(t)/t is 0/0.
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta2 + 1e-12))
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a * k + b * (k @ k)


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """Rotation matrices to unit quaternions (w, x, y, z) with w >= 0.

    Args:
        matrix: rotation matrices. [..., 3, 3]

    Returns:
        Quaternions (w, x, y, z). [..., 4]
    """
    m = matrix
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    candidates = torch.stack([
        torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], -2)  # [..., 4, 4]: row i is 4 q_i q (numerically best where q_i is largest)
    diag = torch.stack([1 + trace, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    best = diag.argmax(-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(quaternion: Tensor) -> Tensor:
    """Quaternions (w, x, y, z), not necessarily normalised, to rotation matrices. [..., 4] -> [..., 3, 3]"""
    q = quaternion / quaternion.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """Rotation matrices to rotation vectors (angle in [0, pi]). [..., 3, 3] -> [..., 3]"""
    q = matrix_to_quaternion(matrix)
    norm = q[..., 1:].norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(norm, q[..., :1])
    scale = torch.where(norm > 1e-8, angle / norm.clamp_min(1e-12), 2.0 / q[..., :1].clamp_min(1e-12))
    return q[..., 1:] * scale


def rotation_x(angle: Tensor) -> Tensor:
    """Rotations about +X by ``angle`` radians. [...] -> [..., 3, 3]"""
    c, s, one, zero = torch.cos(angle), torch.sin(angle), torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([one, zero, zero, zero, c, -s, zero, s, c], -1).reshape(*angle.shape, 3, 3)


def rotation_z(angle: Tensor) -> Tensor:
    """Rotations about +Z by ``angle`` radians. [...] -> [..., 3, 3]"""
    c, s, one, zero = torch.cos(angle), torch.sin(angle), torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], -1).reshape(*angle.shape, 3, 3)
