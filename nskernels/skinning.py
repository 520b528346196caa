"""Forward kinematics and linear blend skinning over a tree of joints (torch).

Convention (the BVH/SMPL one, PROTOCOL.md Motion): joint frames at rest are aligned with the
body's axes, so a joint's local rotation is relative to that axis-aligned rest frame, and the
rest pose is the identity for every joint. A joint's world transform maps a rest-pose point x
to ``G_j (x - rest_j) + P_j`` (G_j its world rotation, P_j its posed position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Kinematics", "forward_kinematics", "kinematic_levels", "skin_points", "anchor_points"]


@dataclass
class Kinematics:
    """Posed joints.

    Attributes:
        rotations: world rotation of each joint. [T, J, 3, 3]
        positions: world position of each joint. [T, J, 3]
    """

    rotations: Tensor
    positions: Tensor


def kinematic_levels(parents: list[int]) -> list[Tensor]:
    """Group joints by depth in the tree so that FK runs one batched step per level.

    Args:
        parents: parent index per joint, -1 for the root, a parent before its children. [J]

    Returns:
        Joint indices per level, root level first.
    """
    depth = []
    for j, p in enumerate(parents):
        if p >= j:
            raise ValueError(f"parents[{j}] = {p}: a parent must come before its children")
        depth.append(0 if p < 0 else depth[p] + 1)
    levels = [[] for _ in range(max(depth) + 1)]
    for j, d in enumerate(depth):
        levels[d].append(j)
    return [torch.tensor(level, dtype=torch.long) for level in levels]


def forward_kinematics(local_rotations: Tensor, root_position: Tensor, rest: Tensor,
                       parents: Tensor, levels: list[Tensor]) -> Kinematics:
    """Pose a skeleton.

    Args:
        local_rotations: each joint's rotation relative to its parent. [T, J, 3, 3]
        root_position: the root joint's posed position. [T, 3]
        rest: rest joint positions in the body frame. [J, 3] or [T, J, 3]
        parents: parent index per joint (-1 for roots). [J]
        levels: from :func:`kinematic_levels`.

    Returns:
        World rotations and positions of every joint.
    """
    t, j = local_rotations.shape[:2]
    rest = rest.expand(t, j, 3)
    offsets = rest - rest[:, parents.clamp_min(0)]  # bone vectors at rest [T, J, 3]
    root = levels[0]
    g = local_rotations[:, root]
    rot = torch.empty_like(local_rotations)
    pos = torch.empty_like(rest)
    rot = rot.index_copy(1, root, g)
    pos = pos.index_copy(1, root, root_position[:, None].expand(t, len(root), 3))
    for level in levels[1:]:
        par = parents[level]
        g_parent = rot[:, par]
        rot = rot.index_copy(1, level, g_parent @ local_rotations[:, level])
        pos = pos.index_copy(1, level, pos[:, par] + (g_parent @ offsets[:, level, :, None])[..., 0])
    return Kinematics(rot, pos)


def skin_points(kin: Kinematics, rest: Tensor, points: Tensor, bone_index: Tensor,
                bone_weight: Tensor) -> Tensor:
    """Linear blend skinning of rest-pose points.

    Args:
        kin: posed joints. rotations [T, J, 3, 3], positions [T, J, 3]
        rest: rest joint positions. [J, 3]
        points: rest-pose points. [V, 3]
        bone_index: influencing joints per point. [V, I]
        bone_weight: their weights, summing to 1. [V, I]

    Returns:
        Posed points. [T, V, 3]
    """
    rel = points[:, None, :] - rest[bone_index]                      # [V, I, 3]
    g = kin.rotations[:, bone_index]                                 # [T, V, I, 3, 3]
    moved = (g @ rel[None, ..., None])[..., 0] + kin.positions[:, bone_index]
    return (moved * bone_weight[None, ..., None]).sum(-2)


def anchor_points(kin: Kinematics, anchor_weight: Tensor, anchor_offset: Tensor) -> Tensor:
    """Points that are fixed blends of joint frames (regressed keypoints), exact under LBS.

    A keypoint regressed as a weighted mean of skinned vertices is, by linearity of LBS,
    ``sum_b a_kb (G_b d_kb + P_b)``, where a_kb is its total weight on joint b and d_kb the
    weighted mean rest offset from joint b. Precomputing (a, d) skips skinning the mesh.

    Args:
        kin: posed joints. rotations [T, J, 3, 3], positions [T, J, 3]
        anchor_weight: a_kb. [K, J]
        anchor_offset: d_kb, rest frame, metres. [K, J, 3]

    Returns:
        Posed keypoints. [T, K, 3]
    """
    moved = torch.einsum("tjab,kjb->tkja", kin.rotations, anchor_offset)
    moved = moved + kin.positions[:, None]
    return (moved * anchor_weight[None, ..., None]).sum(-2)
