"""Brute-force dense reference renderer: every pixel x every Gaussian, plain torch, autograd.

`rasterize_dense` has the signature of `nskernels.rasterize.rasterize` (minus `backend`) and
implements PROTOCOL.md's "Gaussian rendering conventions" as literally as possible, with its
own projection (matrix form J W Sigma W^T J^T, `torch.linalg.inv` for the conic) and its own
compositing (sort, cumulative products). It costs H*W*N work; beyond 2^24 pixel x Gaussian
pairs per camera it runs in pixel chunks under gradient checkpointing to bound memory. For
tests and benchmarks.

Compositing rule (the same in every backend): front to back by camera depth; alpha_i =
min(0.99, opacity_i * G_i(pixel centre)); contributions with alpha_i < 1/255 are skipped; a
contribution with T_i * (1 - alpha_i) <= 1e-4 ends the pixel and is left out together with
everything behind it; rgb = sum c_i alpha_i T_i (+ (1 - alpha) background), alpha =
1 - prod(1 - alpha_i), depth = sum z_i alpha_i T_i / sum alpha_i T_i (inf where alpha < 1/255).
A Gaussian whose 2D covariance has det <= 0 (float breakdown) is culled, like in gsplat.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch.utils.checkpoint import checkpoint

from .camera import Cameras
from .conventions import ALPHA_MAX, ALPHA_MIN, EPS2D, JACOBIAN_CLAMP, PEAK_SUPPORT_SIGMA, T_MIN
from .gaussians import covariances
from .output import RenderOutput, front_depth_from_weights
from .sh import degree_from_rest, view_colours

# Pixel x Gaussian pairs per chunk beyond which the pixels are processed in chunks.
_PAIRS_PER_CHUNK = 1 << 24


def rasterize_dense(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    sh0: Tensor,
    shN: Tensor,
    cameras: Cameras,
    sh_degree: int | None = None,
    background: Tensor | None = None,
) -> RenderOutput:
    """Render every pixel against every Gaussian (see the module docstring for the rules).

    Args:
        means: Gaussian centres, world frame, metres. [N, 3]
        quats: rotations (w, x, y, z), unnormalised. [N, 4]
        scales: log standard deviations, log metres. [N, 3]
        opacities: opacity logits. [N]
        sh0: degree-0 SH coefficients. [N, 3]
        shN: higher SH coefficients. [N, K, 3]
        cameras: C cameras.
        sh_degree: SH degree; None = all the Gaussians have.
        background: [3] or [C, 3]; None = premultiplied.

    Returns:
        rgb [C, H, W, 3], alpha [C, H, W], depth [C, H, W]; meta holds "means2d", "depths"
        and "valid" (not culled by depth or covariance) per camera.
    """
    degree = degree_from_rest(shN.shape[1]) if sh_degree is None else sh_degree
    W, H = cameras.width, cameras.height
    colours = view_colours(means, sh0, shN, cameras.centers(), degree)  # [C, N, 3]
    sigma3d = covariances(quats, scales)  # [N, 3, 3]
    opacity = torch.sigmoid(opacities)  # [N]
    camera_from_world = cameras.camera_from_world()
    Ks = cameras.Ks()

    rows, cols = torch.meshgrid(
        torch.arange(H, dtype=means.dtype), torch.arange(W, dtype=means.dtype), indexing="ij"
    )
    pixels = torch.stack([cols.reshape(-1) + 0.5, rows.reshape(-1) + 0.5], dim=-1).to(means.device)

    rgbs, alphas, depths, means2ds, zs, valids, fronts = [], [], [], [], [], [], []
    for c in range(len(cameras)):
        Wc = camera_from_world[c, :3, :3]
        p = means @ Wc.T + camera_from_world[c, :3, 3]  # [N, 3] camera frame
        z = p[:, 2]
        in_range = (z > cameras.near) & (z < cameras.far)
        z_safe = torch.where(in_range, z, torch.ones_like(z))
        fx, fy, cx, cy = Ks[c, 0, 0], Ks[c, 1, 1], Ks[c, 0, 2], Ks[c, 1, 2]

        # Jacobian at the mean's direction clamped to the image +- 0.3 half-FoV, in the
        # 3DGS paper's 3x3 form with a zero last row.
        tan_x, tan_y = W / (2 * fx), H / (2 * fy)
        u = torch.minimum(torch.maximum(p[:, 0] / z_safe, -(cx / fx + JACOBIAN_CLAMP * tan_x)),
                          (W - cx) / fx + JACOBIAN_CLAMP * tan_x)
        v = torch.minimum(torch.maximum(p[:, 1] / z_safe, -(cy / fy + JACOBIAN_CLAMP * tan_y)),
                          (H - cy) / fy + JACOBIAN_CLAMP * tan_y)
        zero = torch.zeros_like(z)
        J = torch.stack(
            [
                torch.stack([fx / z_safe, zero, -fx * u / z_safe], -1),
                torch.stack([zero, fy / z_safe, -fy * v / z_safe], -1),
                torch.stack([zero, zero, zero], -1),
            ],
            dim=1,
        )  # [N, 3, 3]
        JW = J @ Wc
        cov2d = (JW @ sigma3d @ JW.transpose(1, 2))[:, :2, :2] + EPS2D * torch.eye(2, dtype=means.dtype)
        det = torch.linalg.det(cov2d)
        valid = in_range & (det > 0)
        cov2d = torch.where(valid[:, None, None], cov2d, torch.eye(2, dtype=means.dtype))
        conic = torch.linalg.inv(cov2d)  # [N, 2, 2]
        mean2d = torch.stack([fx * p[:, 0] / z_safe + cx, fy * p[:, 1] / z_safe + cy], -1)

        # Every pixel against every Gaussian, front to back. Big images go through in pixel
        # chunks whose graphs are recomputed in the backward (checkpoint): same numbers,
        # bounded memory.
        # For depth_front: the inverse covariance in the camera frame by matrix inversion (the
        # tile rasterizer builds it from R S^-2 R^T), float64.
        cam64 = cameras.camera_from_world(torch.float64)[c]
        sigma_cam = cam64[:3, :3] @ sigma3d.detach().double() @ cam64[:3, :3].T
        precision = torch.linalg.inv(sigma_cam)  # [N, 3, 3]
        mean_cam = means.detach().double() @ cam64[:3, :3].T + cam64[:3, 3]
        pixel_rays = torch.stack([(pixels[:, 0].double() - float(cx)) / float(fx),
                                  (pixels[:, 1].double() - float(cy)) / float(fy),
                                  torch.ones(len(pixels), dtype=torch.float64, device=pixels.device)], -1)
        order = torch.sort(z, stable=True).indices
        args = (mean2d[order], conic[order], opacity[order], valid[order], colours[c][order], z[order],
                precision[order], mean_cam[order], PEAK_SUPPORT_SIGMA * torch.exp(scales.detach().double().amax(-1))[order])
        chunk = max(1, _PAIRS_PER_CHUNK // max(1, means.shape[0]))
        if pixels.shape[0] <= chunk:
            rgb, a, wsum, wz, front = _shade(pixels, pixel_rays, *args)
        else:
            parts = [
                checkpoint(_shade, pixels[i : i + chunk], pixel_rays[i : i + chunk], *args, use_reentrant=False)
                for i in range(0, pixels.shape[0], chunk)
            ]
            rgb, a, wsum, wz, front = (torch.cat(x) for x in zip(*parts))
        covered = a >= ALPHA_MIN
        depth = torch.where(
            covered,
            wz / torch.where(covered, wsum, torch.ones_like(wsum)),
            torch.full_like(wsum, float("inf")),
        )
        if background is not None:
            bg = background.expand(len(cameras), 3)[c]
            rgb = rgb + (1 - a)[:, None] * bg
        rgbs.append(rgb.reshape(H, W, 3))
        alphas.append(a.reshape(H, W))
        depths.append(depth.reshape(H, W))
        fronts.append(front.reshape(H, W))
        means2ds.append(mean2d)
        zs.append(z)
        valids.append(valid)

    meta = {"means2d": torch.stack(means2ds), "depths": torch.stack(zs), "valid": torch.stack(valids)}
    return RenderOutput(torch.stack(rgbs), torch.stack(alphas), torch.stack(depths), meta, torch.stack(fronts))


def _shade(
    pixels: Tensor, rays: Tensor, mean2d: Tensor, conic: Tensor, opacity: Tensor, valid: Tensor, colours: Tensor,
    z: Tensor, precision: Tensor, mean_cam: Tensor, reach: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Composite depth-sorted Gaussians at pixel centres.

    Args:
        pixels: pixel centres (x, y). [P, 2]
        rays: their rays (x / z, y / z, 1), OpenCV camera frame, float64. [P, 3]
        mean2d, conic, opacity, valid, colours, z: per Gaussian, front to back. [N, ...]
        precision: inverse 3D covariances, camera frame, float64. [N, 3, 3]
        mean_cam: centres, camera frame, float64. [N, 3]
        reach: PEAK_SUPPORT_SIGMA x the largest standard deviation, metres, float64. [N]

    Returns:
        rgb sum c_i w_i [P, 3], alpha [P], sum w_i [P], sum z_i w_i [P] (w_i = alpha_i T_i),
        front-surface depth [P] (`RenderOutput.depth_front`: the depth of the chosen Gaussian's
        peak along the ray, r^T P mu / r^T P r, kept within ``reach`` of its centre's).
    """
    dx = pixels[:, 0:1] - mean2d[None, :, 0]  # [P, N]
    dy = pixels[:, 1:2] - mean2d[None, :, 1]
    # 0.5 d^T conic d
    power = 0.5 * (conic[:, 0, 0] * dx * dx + (conic[:, 0, 1] + conic[:, 1, 0]) * dx * dy + conic[:, 1, 1] * dy * dy)
    alpha = torch.clamp(opacity[None, :] * torch.exp(-power), max=ALPHA_MAX)
    alpha = torch.where(valid[None, :] & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    # A contribution survives only while the transmittance after it stays above 1e-4.
    alpha = torch.where(torch.cumprod(1 - alpha, dim=1) > T_MIN, alpha, torch.zeros_like(alpha))
    T = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=1), dim=1)
    weight = alpha * T  # [P, N]
    a = 1 - torch.prod(1 - alpha, dim=1)
    with torch.no_grad():
        # r^T P mu and r^T P r as [P, N] products (no [P, N, 3] intermediate); kept within the
        # Gaussian's support's bounding sphere around its centre depth.
        p_mu = (precision @ mean_cam[:, :, None])[:, :, 0]  # [N, 3]
        num = rays @ p_mu.T
        outer = (rays[:, :, None] * rays[:, None, :]).reshape(-1, 9)
        den = outer @ precision.reshape(-1, 9).T
        t_peak = num / den
        centre = z.detach().double()[None, :]
        bound = reach[None, :]
        t_peak = torch.where(torch.isfinite(t_peak) & (den > 0), t_peak, centre)
        t_peak = torch.clamp(t_peak, min=centre - bound, max=centre + bound).clamp_min(0.0)
        front = front_depth_from_weights(alpha.detach().double(), t_peak).to(z.dtype)
    return weight @ colours, a, weight.sum(dim=1), weight @ z, front


def rasterize_mesh_dense(vertices: Tensor, faces: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Brute-force twin of `nskernels.mesh_raster.rasterize_mesh`: every pixel x every triangle.

    Literal definition, float64: a pixel centre is covered by a triangle when its three screen
    barycentrics are >= 0; the surface depth there is the plane's camera z along the ray
    through the centre; the nearest triangle wins (ties: the lower id). Triangles with a
    corner at depth <= near are culled. Costs H*W*F; for tests.

    Args:
        vertices: world frame, metres. [V, 3]
        faces: vertex indices. [F, 3]
        cameras: one camera.

    Returns:
        `(triangle [H, W] int64 (-1 empty), depth [H, W] float64 (inf empty))`.
    """
    cam = cameras.camera_from_world()[0].double()
    pc = vertices.double() @ cam[:3, :3].T + cam[:3, 3]
    tri = pc[faces.long()]  # [F, 3, 3] OpenCV camera frame
    H, W = cameras.height, cameras.width
    fx, fy = float(cameras.fx[0]), float(cameras.fy[0])
    cx, cy = float(cameras.cx[0]), float(cameras.cy[0])
    rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float64),
                                torch.arange(W, dtype=torch.float64), indexing="ij")
    # The ray through each pixel centre, z = 1.
    ray = torch.stack([(cols + 0.5 - cx) / fx, (rows + 0.5 - cy) / fy, torch.ones_like(rows)], -1)
    ray = ray.reshape(-1, 3)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    # Inside test by the signs of the ray's triple products with the triangle's edges (the
    # same as screen barycentrics >= 0, computed without projecting).
    e0 = torch.linalg.cross(b, c, dim=-1)
    e1 = torch.linalg.cross(c, a, dim=-1)
    e2 = torch.linalg.cross(a, b, dim=-1)
    vol = (a * e0).sum(-1)  # [F]
    l0 = ray @ e0.T
    l1 = ray @ e1.T
    l2 = ray @ e2.T
    s = torch.sign(vol)[None]
    inside = (l0 * s >= 0) & (l1 * s >= 0) & (l2 * s >= 0) & (vol.abs() > 1e-18)[None]
    culled = (tri[:, :, 2] <= cameras.near).any(1) | (tri[:, :, 2] >= cameras.far).any(1)
    inside &= ~culled[None]
    normal = torch.linalg.cross(b - a, c - a, dim=-1)
    # Plane n . p = n . a; along the ray p = t ray, depth t = n.a / n.ray (ray z = 1).
    t = (normal * a).sum(-1)[None] / (ray @ normal.T)
    depth = torch.where(inside, t, torch.full_like(t, float("inf")))
    best, idx = depth.min(dim=1)
    triangle = torch.where(torch.isfinite(best), idx, torch.full_like(idx, -1))
    return triangle.view(H, W), best.view(H, W)
