"""Initial Gaussians for 3DGS training (METHODS.md 2.A.1, `create_from_pcd`).

From points: means = points, sh0 = RGB2SH(colour) = (colour - 0.5) / C0, shN = 0, isotropic
scales = log(sqrt(mean squared distance to the 3 nearest neighbours)) (clamped at 1e-7, as the
paper's simple-knn), identity rotations, opacity = logit(0.1).
Without points: the same from random points in the volume every camera sees (the paper notes
random initialisation works "but may lose final quality").
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from nskernels.sh import SH_C0

INIT_OPACITY = 0.1


def knn_log_scales(points: np.ndarray, k: int = 3) -> np.ndarray:
    """log(sqrt(mean squared distance to the k nearest other points)), per point. [P]"""
    from scipy.spatial import cKDTree

    n = len(points)
    if n < 2:
        return np.full(n, math.log(0.01), dtype=np.float64)
    kk = min(k, n - 1)
    dist, _ = cKDTree(points).query(points, k=kk + 1)
    d2 = np.mean(dist[:, 1:] ** 2, axis=1)
    return 0.5 * np.log(np.maximum(d2, 1e-7))


def scene_extent(centres: np.ndarray) -> float:
    """Scene scale as the 3DGS code computes it: 1.1 x the largest camera-centre distance from their mean."""
    c = np.asarray(centres, dtype=np.float64)
    radius = float(np.max(np.linalg.norm(c - c.mean(axis=0), axis=1))) if len(c) > 1 else 0.0
    return 1.1 * max(radius, 1e-3) if radius > 0 else 1.0


def random_points_in_view(cameras, count: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform points in the volume that every camera sees (rejection sampled).

    The box to sample comes from the point nearest to all optical axes (where the cameras look)
    and the field of view at that distance; points outside any camera's frustum are rejected.

    Args:
        cameras: nskernels.camera.Cameras (C of them).
        count: points wanted P.
        rng: numpy Generator.

    Returns:
        Points, world frame, metres. [P, 3] (fewer if the cameras share almost no view)
    """
    c2w = cameras.world_from_camera.detach().cpu().double().numpy()
    centres = c2w[:, :3, 3]
    fwd = -c2w[:, :3, 2]
    # Least-squares point closest to all optical axes: sum (I - d d^T) x = sum (I - d d^T) c.
    proj = np.eye(3)[None] - fwd[:, :, None] * fwd[:, None, :]
    a = proj.sum(axis=0)
    b = np.einsum("cij,cj->i", proj, centres)
    focus = np.linalg.lstsq(a, b, rcond=None)[0]
    dist = np.linalg.norm(centres - focus, axis=1)
    fx = cameras.fx.cpu().double().numpy()
    half = float(np.median(dist * (max(cameras.width, cameras.height) / 2.0) / fx))
    w2c_cv = cameras.camera_from_world().detach().cpu().double().numpy()
    K = cameras.Ks().detach().cpu().double().numpy()
    out = []
    have = 0
    for _ in range(50):
        cand = focus + rng.uniform(-half, half, size=(count * 4, 3))
        cam = np.einsum("cij,pj->cpi", w2c_cv[:, :3, :3], cand) + w2c_cv[:, None, :3, 3]
        z = cam[..., 2]
        u = K[:, None, 0, 0] * cam[..., 0] / np.maximum(z, 1e-9) + K[:, None, 0, 2]
        v = K[:, None, 1, 1] * cam[..., 1] / np.maximum(z, 1e-9) + K[:, None, 1, 2]
        ok = (z > cameras.near) & (u >= 0) & (u < cameras.width) & (v >= 0) & (v < cameras.height)
        keep = cand[ok.all(axis=0)]
        out.append(keep)
        have += len(keep)
        if have >= count:
            break
    pts = np.concatenate(out)[:count]
    return pts


def gaussians_from_points(points: np.ndarray, colors: np.ndarray | None, sh_degree: int,
                          device) -> dict[str, Tensor]:
    """Initial Gaussian parameters from points.

    Args:
        points: world frame, metres. [P, 3]
        colors: colours in [0, 1] in the training images' space, or None for grey. [P, 3]
        sh_degree: the SH degree to allocate shN for (K = (d+1)^2 - 1).
        device: torch device.

    Returns:
        means [N,3], quats [N,4], scales [N,3], opacities [N], sh0 [N,3], shN [N,K,3] (float32).
    """
    pts = np.asarray(points, dtype=np.float64)
    n = len(pts)
    cols = np.full((n, 3), 0.5) if colors is None else np.clip(np.asarray(colors, dtype=np.float64), 0.0, 1.0)
    k = (sh_degree + 1) ** 2 - 1
    quats = np.zeros((n, 4))
    quats[:, 0] = 1.0
    params = {
        "means": pts,
        "quats": quats,
        "scales": np.repeat(knn_log_scales(pts)[:, None], 3, axis=1),
        "opacities": np.full(n, math.log(INIT_OPACITY / (1.0 - INIT_OPACITY))),
        "sh0": (cols - 0.5) / SH_C0,
        "shN": np.zeros((n, k, 3)),
    }
    return {name: torch.tensor(v, dtype=torch.float32, device=device) for name, v in params.items()}
