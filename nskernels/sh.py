"""Real spherical harmonics (degrees 0-3) -> colours, with the 3DGS paper code's basis.

The basis and constants are those of the 3DGS reference code (METHODS.md 2.A.1); the colour
of a Gaussian is `clamp_min(eval_sh(dir) + 0.5, 0)` where `dir` is the unit vector from the
camera centre to the Gaussian's mean in WORLD coordinates (PROTOCOL.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)

#: Number of "rest" coefficients K in shN [N, K, 3] for each SH degree.
REST_COEFFS = {degree: (degree + 1) ** 2 - 1 for degree in range(4)}


def degree_from_rest(K: int) -> int:
    """SH degree whose rest-coefficient count is K (0, 3, 8 or 15).

    Raises:
        ValueError: K is not one of those.
    """
    for degree, k in REST_COEFFS.items():
        if k == K:
            return degree
    raise ValueError(f"shN must have K in {{0, 3, 8, 15}} coefficients, got K = {K}")


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis functions of the 3DGS code, in its coefficient order.

    Args:
        degree: SH degree, 0..3.
        dirs: unit directions. [..., 3]

    Returns:
        Basis values Y_0 .. Y_{(degree+1)^2 - 1}. [..., (degree + 1)^2]
    """
    if degree not in REST_COEFFS:
        raise ValueError(f"sh_degree must be 0, 1, 2 or 3, got {degree}")
    x, y, z = dirs.unbind(-1)
    basis = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        basis += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        basis += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        basis += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(basis, dim=-1)


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate the real SH expansion (no +0.5 offset, no clamp).

    Args:
        degree: SH degree, 0..3.
        coeffs: SH coefficients, coefficient 0 first, at least (degree + 1)^2 of them. [..., K, 3]
        dirs: unit view directions (not used for degree 0). [..., 3]

    Returns:
        The expansion per colour channel. [..., 3]
    """
    if degree == 0:
        return SH_C0 * coeffs[..., 0, :]
    n = (degree + 1) ** 2
    return (sh_basis(degree, dirs)[..., None] * coeffs[..., :n, :]).sum(-2)


def view_colours(
    means: Tensor, sh0: Tensor, shN: Tensor, camera_centres: Tensor, degree: int
) -> Tensor:
    """Colour of every Gaussian seen from every camera.

    Args:
        means: Gaussian centres, world frame, metres. [N, 3]
        sh0: degree-0 SH coefficients. [N, 3]
        shN: higher-degree SH coefficients. [N, K, 3]
        camera_centres: camera centres, world frame, metres. [C, 3]
        degree: SH degree to evaluate (<= the degree shN holds).

    Returns:
        clamp_min(SH(normalise(mean - centre)) + 0.5, 0). [C, N, 3]
    """
    C = camera_centres.shape[0]
    if degree == 0:
        colours = SH_C0 * sh0 + 0.5
        return colours.clamp_min(0.0)[None].expand(C, -1, -1)
    n_coeffs = (degree + 1) ** 2
    coeffs = torch.cat([sh0[:, None, :], shN[:, : n_coeffs - 1, :]], dim=1)  # [N, n_coeffs, 3]
    dirs = F.normalize(means[None, :, :] - camera_centres[:, None, :], dim=-1)  # [C, N, 3]
    # One contraction of the basis with the coefficients: far fewer autograd nodes than a
    # term-by-term sum.
    colours = torch.einsum("cnk,nkd->cnd", sh_basis(degree, dirs), coeffs)
    return (colours + 0.5).clamp_min(0.0)
