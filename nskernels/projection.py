"""EWA projection of 3D Gaussians into C pinhole cameras (PROTOCOL.md "Projection").

Vectorised torch over [C, N] so autograd carries gradients from the 2D quantities back to
means, quaternions and log scales. Culled Gaussians keep finite (meaningless) values computed
with a safe depth, so no NaN/inf reaches autograd; `visible` says which ones count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .camera import Cameras
from .conventions import ALPHA_MIN, EPS2D, JACOBIAN_CLAMP, PEAK_SUPPORT_SIGMA
from .gaussians import quat_to_rotmat, scaled_rotations

#: Upper bound of the opacity-aware extent in standard deviations. sqrt(2 ln 255) = 3.3290 < 3.33,
#: so the bound never cuts a contribution with alpha >= 1/255 (opacities are < 1).
MAX_EXTENT_SIGMA = 3.33


@dataclass
class Projection:
    """Per-camera 2D Gaussians.

    Attributes:
        means2d: projected centres, pixels (x right, y down). [C, N, 2]
        conics: inverse 2D covariance (a, b, c): the Gaussian's exponent at offset (dx, dy) is
            -(0.5 * (a dx^2 + c dy^2) + b dx dy). [C, N, 3]
        depths: camera-space depth z (along the camera's -Z in Blender terms), metres. [C, N]
        opacities: sigmoid of the opacity logits, per camera. [C, N]
        extents: half sizes (x, y) of the box outside which alpha < 1/255, pixels; 0 where not
            visible; no gradient. [C, N, 2]
        visible: not culled (depth in (near, far), valid covariance, opacity >= 1/255, box
            overlapping the image). [C, N]
        radii: gsplat-style integer radii, ceil(extents), 0 where not visible. [C, N, 2] int32
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    opacities: Tensor
    extents: Tensor
    visible: Tensor
    radii: Tensor


def project_gaussians(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, cameras: Cameras
) -> Projection:
    """Project Gaussians with the EWA approximation.

    Args:
        means: Gaussian centres, world frame, metres. [N, 3]
        quats: rotations (w, x, y, z), unnormalised. [N, 4]
        scales: log standard deviations, log metres. [N, 3]
        opacities: opacity logits. [N]
        cameras: C cameras.

    Returns:
        The projection; differentiable in means2d, conics, depths and opacities.
    """
    W, H = cameras.width, cameras.height
    camera_from_world = cameras.camera_from_world()  # [C, 4, 4] OpenCV
    R = camera_from_world[:, :3, :3]  # [C, 3, 3]
    t = camera_from_world[:, :3, 3]  # [C, 3]

    # World -> camera for the centres.
    p = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    x, y, z = p.unbind(-1)
    in_range = (z > cameras.near) & (z < cameras.far)
    zs = torch.where(in_range, z, torch.ones_like(z))

    fx, fy = cameras.fx[:, None], cameras.fy[:, None]  # [C, 1]
    cx, cy = cameras.cx[:, None], cameras.cy[:, None]

    # Jacobian of the perspective map at the mean's direction, clamped to the image plus
    # 0.3 x half field of view: far outside the frustum the linearisation explodes.
    tan_x, tan_y = 0.5 * W / fx, 0.5 * H / fy
    u = torch.clamp(x / zs, -(cx / fx + JACOBIAN_CLAMP * tan_x), (W - cx) / fx + JACOBIAN_CLAMP * tan_x)
    v = torch.clamp(y / zs, -(cy / fy + JACOBIAN_CLAMP * tan_y), (H - cy) / fy + JACOBIAN_CLAMP * tan_y)
    j00, j02 = (fx / zs)[..., None], (-fx * u / zs)[..., None]  # [C, N, 1]
    j11, j12 = (fy / zs)[..., None], (-fy * v / zs)[..., None]

    # J W Sigma W^T J^T = B B^T with B = J W R S (2 x 3), J = [[j00, 0, j02], [0, j11, j12]]:
    # fewer ops than 3x3 products (projection autograd is a large share of a training step)
    # and positive semi-definite by construction.
    Rc = R[:, None]  # [C, 1, 3, 3]
    jw0 = j00 * Rc[..., 0, :] + j02 * Rc[..., 2, :]  # rows of J W [C, N, 3]
    jw1 = j11 * Rc[..., 1, :] + j12 * Rc[..., 2, :]
    M = scaled_rotations(quats, scales)  # R S [N, 3, 3]
    b0 = jw0[..., 0:1] * M[:, 0, :] + jw0[..., 1:2] * M[:, 1, :] + jw0[..., 2:3] * M[:, 2, :]
    b1 = jw1[..., 0:1] * M[:, 0, :] + jw1[..., 1:2] * M[:, 1, :] + jw1[..., 2:3] * M[:, 2, :]
    cxx = (b0 * b0).sum(-1) + EPS2D  # + the 0.3 px^2 dilation
    cxy = (b0 * b1).sum(-1)
    cyy = (b1 * b1).sum(-1) + EPS2D
    det = cxx * cyy - cxy * cxy
    valid = in_range & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([cyy / det_safe, -cxy / det_safe, cxx / det_safe], dim=-1)

    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)
    opac = torch.sigmoid(opacities)[None].expand(len(cameras), -1)

    with torch.no_grad():
        extents, visible = _extents(means2d, cxx, cyy, opac, valid, W, H)
        radii = torch.where(
            visible[..., None], torch.ceil(extents).clamp_min(1.0), torch.zeros_like(extents)
        ).to(torch.int32)
    return Projection(means2d, conics, z, opac, extents, visible, radii)


def _extents(
    means2d: Tensor, cxx: Tensor, cyy: Tensor, opac: Tensor, valid: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """Axis-aligned half sizes of the ellipse where opacity * G >= 1/255, and visibility.

    The ellipse d^T cov^-1 d <= k^2, k^2 = 2 ln(255 opacity), has x half-width k sqrt(cov_xx):
    the exact bounding box, so no pixel with alpha >= 1/255 falls outside it.
    """
    k = torch.sqrt(2.0 * torch.log(opac.clamp_min(1e-30) / ALPHA_MIN).clamp_min(0.0))
    k = k.clamp_max(MAX_EXTENT_SIGMA)
    ext = torch.stack([k * torch.sqrt(cxx.clamp_min(0.0)), k * torch.sqrt(cyy.clamp_min(0.0))], -1)
    mx, my = means2d.detach().unbind(-1)
    on_image = (mx + ext[..., 0] > 0) & (mx - ext[..., 0] < width) & (my + ext[..., 1] > 0) & (
        my - ext[..., 1] < height
    )
    visible = valid & (opac >= ALPHA_MIN) & on_image & torch.isfinite(ext).all(-1)
    ext = torch.where(visible[..., None], ext, torch.zeros_like(ext))
    return ext.detach(), visible


@dataclass
class PeakInputs:
    """What `depth_front` needs to find where a Gaussian peaks along a pixel's ray (`peak_depth`);
    no gradient, nothing per (camera, Gaussian): the kernels evaluate it once per pixel, for the
    one Gaussian the pixel's front depth comes from.

    Attributes:
        means: Gaussian centres, world frame, metres. [N, 3]
        quats: rotations (w, x, y, z), unnormalised. [N, 4]
        scales: log standard deviations, log metres. [N, 3]
        camera_from_world: world -> OpenCV camera, float64. [C, 4, 4]
        intrinsics: (fx, fy, cx, cy) per camera, pixels, float64. [C, 4]
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    camera_from_world: Tensor
    intrinsics: Tensor


def peak_inputs(means: Tensor, quats: Tensor, scales: Tensor, cameras: Cameras) -> PeakInputs:
    """`PeakInputs` of a render (detached views; the cameras in float64)."""
    intrinsics = torch.stack([cameras.fx, cameras.fy, cameras.cx, cameras.cy], -1).to(torch.float64)
    return PeakInputs(means.detach(), quats.detach(), scales.detach(), cameras.camera_from_world(torch.float64),
                      intrinsics)


def peak_depth(means: Tensor, quats: Tensor, scales: Tensor, camera_from_world: Tensor, u: Tensor, v: Tensor,
               centre_depth: Tensor) -> Tensor:
    """Camera depth at which each Gaussian peaks along a ray (torch twin of the numba `_peak_depth`).

    The ray is x(t) = t r, r = (u, v, 1) in the OpenCV camera frame (u = (px - cx) / fx for pixel
    centre px), so t is the camera depth. The Gaussian's exponent -(x - mu)^T P (x - mu) / 2
    (P = Sigma^-1 = Q Q^T, Q = Rc R S^-1, camera frame) peaks along the ray at

        t* = r^T P mu / r^T P r = (Q^T r) . (Q^T mu) / |Q^T r|^2.

    For a flat Gaussian (one tiny scale) that is where the ray meets its plane, for a round one
    the point of the ray nearest its centre: the ray-Gaussian intersection of Gaussian Opacity
    Fields (Yu et al. 2024). The rasterizer's per-Gaussian depth is the centre's, which for a
    large flat Gaussian seen at a grazing angle lies up to a few standard deviations off the
    surface (a floor of Gaussians in front of or behind a mesh standing on it;
    docs/protocol-notes.md `depth_front`). t* is kept within `conventions.PEAK_SUPPORT_SIGMA`
    largest standard deviations of the centre's depth (and >= 0). S^-1 is scaled by the smallest
    scale (t* does not change), so Gaussians 1e-7 m thin stay in range; float64 throughout.

    Args:
        means: centres, world frame, metres. [..., 3]
        quats: rotations (w, x, y, z), unnormalised. [..., 4]
        scales: log standard deviations, log metres. [..., 3]
        camera_from_world: world -> OpenCV camera, float64. [..., 4, 4]
        u, v: the rays' x / z and y / z. [...]
        centre_depth: the centres' camera depths: the answer where t* is not a finite number. [...]

    Returns:
        Camera depth of each peak, metres, float64. [...]
    """
    f64 = torch.float64
    with torch.no_grad():
        Rc, t = camera_from_world[..., :3, :3].to(f64), camera_from_world[..., :3, 3].to(f64)
        s = scales.to(f64)
        Q = Rc @ (quat_to_rotmat(quats.to(f64)) * torch.exp(s.amin(-1, keepdim=True) - s)[..., None, :])
        mu = (Rc @ means.to(f64)[..., None])[..., 0] + t
        ray = torch.stack([u.to(f64), v.to(f64), torch.ones_like(u, dtype=f64)], -1)
        qr = (Q.transpose(-1, -2) @ ray[..., None])[..., 0]
        qm = (Q.transpose(-1, -2) @ mu[..., None])[..., 0]
        den = (qr * qr).sum(-1)
        depth = (qr * qm).sum(-1) / torch.where(den > 0, den, torch.ones_like(den))
        centre = centre_depth.to(f64)
        reach = PEAK_SUPPORT_SIGMA * torch.exp(s.amax(-1))
        depth = torch.minimum(torch.maximum(depth, centre - reach), centre + reach).clamp_min(0.0)
        return torch.where((den > 0) & torch.isfinite(depth), depth, centre)
