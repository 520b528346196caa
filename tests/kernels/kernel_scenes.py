"""Seeded test scenes: Gaussians in front of Blender-convention cameras."""

from __future__ import annotations

import math

import torch

from kernels.camera import Cameras


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """Blender camera matrix_world at `eye` looking at `target` (camera -Z toward target). [4, 4]"""
    eye = torch.tensor(eye, dtype=torch.float64)
    fwd = torch.tensor(target, dtype=torch.float64) - eye
    fwd = fwd / fwd.norm()
    right = torch.linalg.cross(fwd, torch.tensor(up, dtype=torch.float64))
    right = right / right.norm()
    cam_up = torch.linalg.cross(right, fwd)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, cam_up, -fwd, eye
    return m.float()


def make_cameras(n: int, width: int, height: int, seed: int = 0, off_centre: bool = False) -> Cameras:
    """n cameras on a ring around the origin, looking at it, ~50 degree horizontal FoV."""
    g = torch.Generator().manual_seed(seed)
    mats, cxs, cys = [], [], []
    for i in range(n):
        angle = 2 * math.pi * i / max(n, 1) + 0.3 * float(torch.rand(1, generator=g))
        eye = (4.0 * math.cos(angle), 4.0 * math.sin(angle), 0.8 + 0.5 * float(torch.rand(1, generator=g)))
        mats.append(look_at(eye, (0.0, 0.0, 0.0)))
        cxs.append(width * (0.35 + 0.3 * float(torch.rand(1, generator=g))) if off_centre else width / 2)
        cys.append(height * (0.35 + 0.3 * float(torch.rand(1, generator=g))) if off_centre else height / 2)
    f = 1.1 * width
    return Cameras(
        world_from_camera=torch.stack(mats),
        fx=torch.full((n,), f),
        fy=torch.full((n,), f * 1.05),
        cx=torch.tensor(cxs),
        cy=torch.tensor(cys),
        width=width,
        height=height,
    )


def make_gaussians(
    n: int,
    sh_degree: int = 3,
    seed: int = 0,
    extent: float = 1.0,
    log_scale: tuple[float, float] = (-3.5, -1.5),
    opacity_logit: tuple[float, float] = (-1.0, 3.0),
    requires_grad: bool = True,
) -> dict[str, torch.Tensor]:
    """n random Gaussians in a cube of half-size `extent` around the origin."""
    g = torch.Generator().manual_seed(seed)
    K = (sh_degree + 1) ** 2 - 1
    lo, hi = log_scale
    olo, ohi = opacity_logit
    params = {
        "means": (torch.rand(n, 3, generator=g) * 2 - 1) * extent,
        "quats": torch.randn(n, 4, generator=g),
        "scales": lo + (hi - lo) * torch.rand(n, 3, generator=g),
        "opacities": olo + (ohi - olo) * torch.rand(n, generator=g),
        "sh0": torch.randn(n, 3, generator=g),
        "shN": 0.3 * torch.randn(n, K, 3, generator=g),
    }
    for t in params.values():
        t.requires_grad_(requires_grad)
    return params
