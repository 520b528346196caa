"""Image losses and quality metrics for splat training (torch).

SSIM follows Wang et al. 2004, "Image quality assessment: from error visibility to structural
similarity", as 3DGS uses it (METHODS.md 2.A.1): an 11x11 Gaussian window with sigma 1.5,
C1 = 0.01^2, C2 = 0.03^2 (for values in [0, 1]), averaged over pixels and channels; the window
is applied with zero padding, as the 3DGS training loss does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _gaussian_1d(size: int, sigma: float, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2.0
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Mean structural similarity of two image batches.

    The 2D Gaussian window is separable, so it is applied as an 11x1 then a 1x11 convolution
    (22 taps instead of 121), to all five local statistics in one call.

    Args:
        a: images, channels last. [B, H, W, C]
        b: images, channels last. [B, H, W, C]

    Returns:
        Mean SSIM over batch, pixels and channels (1 = identical). []
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim: shapes {tuple(a.shape)} and {tuple(b.shape)} must match as [B,H,W,C]")
    c = a.shape[-1]
    x = a.permute(0, 3, 1, 2)
    y = b.permute(0, 3, 1, 2)
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
    g = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA, x)
    pad = SSIM_WINDOW // 2
    k = stats.shape[1]
    stats = F.conv2d(stats, g.view(1, 1, -1, 1).expand(k, 1, -1, 1), padding=(pad, 0), groups=k)
    stats = F.conv2d(stats, g.view(1, 1, 1, -1).expand(k, 1, 1, -1), padding=(0, pad), groups=k)
    mu_x, mu_y, xx, yy, xy = torch.split(stats, c, dim=1)
    sxx = xx - mu_x * mu_x
    syy = yy - mu_y * mu_y
    sxy = xy - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + SSIM_C1) * (2.0 * sxy + SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (sxx + syy + SSIM_C2)
    return (num / den).mean()


def psnr(a: Tensor, b: Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements (images in [0, peak])."""
    mse = float(torch.mean((a.detach() - b.detach()) ** 2))
    return 10.0 * math.log10(peak * peak / max(mse, 1e-12))


def photometric_loss(render: Tensor, target: Tensor, lambda_dssim: float) -> Tensor:
    """The 3DGS loss (1 - lambda) * L1 + lambda * (1 - SSIM).

    Args:
        render: rendered images. [B, H, W, 3]
        target: ground truth. [B, H, W, 3]
        lambda_dssim: weight of the D-SSIM term (paper 0.2).
    """
    l1 = torch.abs(render - target).mean()
    if lambda_dssim == 0.0:
        return l1
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * (1.0 - ssim(render, target))
