"""Gaussian parameters -> geometry: quaternion rotations and 3D covariances.

Quaternions are (w, x, y, z) and normalised here; scales are LOG scales (PROTOCOL.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from quaternions.

    Args:
        quats: quaternions (w, x, y, z), any non-zero length (normalised here). [N, 4]

    Returns:
        Rotation matrices (column j is the rotated local axis j). [N, 3, 3]
    """
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))


def scaled_rotations(quats: Tensor, scales: Tensor) -> Tensor:
    """R S with S = diag(exp(scales)): the covariance's square root (Sigma = (R S)(R S)^T).

    Args:
        quats: rotations (w, x, y, z), unnormalised. [N, 4]
        scales: log standard deviations along the local axes, log metres. [N, 3]

    Returns:
        R S (column j is local axis j times its standard deviation), metres. [N, 3, 3]
    """
    return quat_to_rotmat(quats) * torch.exp(scales)[..., None, :]


def covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariances R S S^T R^T with S = diag(exp(scales)).

    Args:
        quats: rotations (w, x, y, z), unnormalised. [N, 4]
        scales: log standard deviations along the local axes, log metres. [N, 3]

    Returns:
        Covariances, world frame, square metres. [N, 3, 3]
    """
    M = scaled_rotations(quats, scales)
    return M @ M.transpose(-1, -2)
