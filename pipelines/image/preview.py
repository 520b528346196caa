"""A cheap latent -> RGB preview: one linear map per model, fitted from its own VAE.

The well-known SD "latent RGB factors" are a least-squares fit of colours against latents; we
make the same fit per loaded model, so that every family (4-channel SD/SDXL latents, 16-channel
SD3/FLUX latents) and every fine-tune gets its own map without extra weights or tables: encode
a grid of random colour patches once, then solve ``[latent, 1] @ M ~= rgb`` for ``M (C+1, 3)``.
A preview then costs one (h*w, C) x (C, 3) product per step.
"""

from __future__ import annotations

import numpy as np

_GRID = 8  # colour patches per side of the calibration image


def fit_latent_rgb(vae, device, dtype) -> np.ndarray:
    """Fit the map for ``vae``.

    Returns:
        ``M (C+1, 3) float32``: ``rgb in [0,1] ~= latent (C,) @ M[:C] + M[C]`` where the
        latent is what the denoiser sees: ``(z - shift_factor) * scaling_factor``.
    """
    import torch

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    patch = 2 * factor  # 2x2 latent pixels per patch, so most see one colour only
    colours = torch.rand(_GRID, _GRID, 3, generator=torch.Generator().manual_seed(0))
    image = colours.permute(2, 0, 1).repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    with torch.no_grad():
        z = vae.encode((image * 2 - 1)[None].to(device, dtype)).latent_dist.mean
    shift = vae.config.get("shift_factor") or 0.0
    scale = vae.config.get("scaling_factor") or 1.0
    z = ((z.float() - shift) * scale)[0].cpu()                     # (C, h, w)
    target = image[:, ::factor, ::factor]                           # (3, h, w) colour per latent
    lat = z.permute(1, 2, 0).reshape(-1, z.shape[0]).double()
    design = torch.cat([lat, torch.ones(len(lat), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, target.permute(1, 2, 0).reshape(-1, 3).double())
    return solution.solution.float().numpy()


def latents_to_rgb(latents, rgb_map: np.ndarray) -> np.ndarray:
    """The first image of a latent batch as a preview.

    Args:
        latents: torch (B, C, h, w) in the denoiser's space.
        rgb_map: from :func:`fit_latent_rgb`.

    Returns:
        uint8 (h, w, 3) sRGB-ish preview (the VAE's output space, which is sRGB for these models).
    """
    lat = latents[0].detach().float().cpu().permute(1, 2, 0).numpy()   # (h, w, C)
    rgb = lat @ rgb_map[:-1] + rgb_map[-1]
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
