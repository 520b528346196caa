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



#: Columns of `peak_depth_terms`: the camera-frame precision matrix P = Sigma^-1 (upper
#: triangle), P mu, and how far the depth may leave the centre's (PEAK_SUPPORT_SIGMA times
#: the largest standard deviation, metres), per Gaussian.
PEAK_TERMS = ("p00", "p01", "p02", "p11", "p12", "p22", "b0", "b1", "b2", "reach")


def peak_depth_terms(means: Tensor, quats: Tensor, scales: Tensor, cameras: Cameras) -> Tensor:
    """What the depth at which a Gaussian peaks along a pixel's ray needs, per camera (no gradient).

    The ray through pixel (px, py) is x(t) = t r, r = ((px - cx) / fx, (py - cy) / fy, 1) in the
    OpenCV camera frame, so t is the camera depth. The Gaussian's exponent
    -(x - mu)^T P (x - mu) / 2 (P = Sigma^-1 = R S^-2 R^T, camera frame) peaks along the ray at

        t* = r^T P mu / r^T P r

    (`peak_depth`). For a flat Gaussian (one tiny scale) this is where the ray meets its plane,
    for a round one the point of the ray nearest its centre: a per-pixel depth where the
    rasterizer's per-Gaussian depth is the centre's, which for a large flat Gaussian seen at a
    grazing angle lies up to a few standard deviations off the surface (a floor of Gaussians in
    front of or behind a mesh standing on it; docs/protocol-notes.md `depth_front`). This is the
    ray-Gaussian intersection of Gaussian Opacity Fields (Yu et al. 2024) / 3D Gaussian ray
    tracing (Moenne-Loccoz et al. 2024).

    t* is kept within `conventions.PEAK_SUPPORT_SIGMA` largest standard deviations of the centre's
    depth (`peak_depth`). float64: trained Gaussians can be 1e-7 m thin at metres from the camera.

    Args:
        means: Gaussian centres, world frame, metres. [N, 3]
        quats: rotations (w, x, y, z), unnormalised. [N, 4]
        scales: log standard deviations, log metres. [N, 3]
        cameras: C cameras.

    Returns:
        (P00, P01, P02, P11, P12, P22, (P mu)_0, (P mu)_1, (P mu)_2, reach), float64, on the
        Gaussians' device. [C, N, 10]
    """
    with torch.no_grad():
        f64 = torch.float64
        camera_from_world = cameras.camera_from_world(f64)
        Rc, t = camera_from_world[:, :3, :3], camera_from_world[:, :3, 3]
        # Sigma^-1 = Q Q^T with Q = Rc R S^-1 (camera frame): no matrix inverse.
        q_local = quat_to_rotmat(quats.to(f64)) * torch.exp(-scales.to(f64))[:, None, :]  # [N, 3, 3]
        Q = torch.einsum("cij,njk->cnik", Rc, q_local)  # [C, N, 3, 3]
        P = Q @ Q.transpose(-1, -2)
        mu = torch.einsum("cij,nj->cni", Rc, means.to(f64)) + t[:, None, :]  # [C, N, 3]
        b = (P @ mu[..., None])[..., 0]
        reach = PEAK_SUPPORT_SIGMA * torch.exp(scales.to(f64).amax(-1))  # [N]
        return torch.cat([P[..., 0, :], P[..., 1, 1:], P[..., 2, 2:], b, reach[None, :, None].expand(len(Rc), -1, 1)],
                         -1).contiguous()


def camera_rays(cameras: Cameras) -> Tensor:
    """Per camera (fx, fy, cx, cy) in float64: what maps a pixel centre to its ray r (`peak_depth_terms`). [C, 4]"""
    return torch.stack([cameras.fx, cameras.fy, cameras.cx, cameras.cy], -1).to(torch.float64).cpu().contiguous()


def peak_depth(terms: Tensor, u: Tensor, v: Tensor, centre_depth: Tensor) -> Tensor:
    """t* = r^T P mu / r^T P r for rays r = (u, v, 1) (torch twin of the numba kernel's `_peak_depth`).

    Args:
        terms: `peak_depth_terms` rows, broadcast against u and v. [..., 10]
        u, v: the rays' x / z and y / z, OpenCV camera frame. [...]
        centre_depth: the Gaussians' centre depths: t* is kept within the terms' reach of it (and
            >= 0), and is the answer where t* is not a finite number. [...]

    Returns:
        Camera depth of the peak, metres. [...]
    """
    p00, p01, p02, p11, p12, p22, b0, b1, b2, reach = terms.unbind(-1)
    num = u * b0 + v * b1 + b2
    den = p00 * u * u + p11 * v * v + p22 + 2.0 * (p01 * u * v + p02 * u + p12 * v)
    t = num / torch.where(den > 0, den, torch.ones_like(den))
    t = torch.minimum(torch.maximum(t, centre_depth - reach), centre_depth + reach).clamp_min(0.0)
    return torch.where((den > 0) & torch.isfinite(t), t, centre_depth)
