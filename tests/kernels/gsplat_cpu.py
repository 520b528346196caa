"""gsplat 1.5.3's `rasterization()` on the CPU, for checking our gsplat backend without a GPU.

`rasterization()` itself (gsplat/rendering.py: argument checks, SH layout and degree, camera
centres from `viewmats`, the depth channel of "RGB+D"/"RGB+ED", backgrounds, `meta`) runs
unchanged; only the five CUDA ops it calls are swapped, through `patch(monkeypatch)`, for CPU
twins:

- `spherical_harmonics`, `isect_tiles`, `isect_offset_encode`: gsplat's own pure-torch twins
  (gsplat/cuda/_torch_impl.py; its SH is Sloan's formulation, independent of ours);
- `fully_fused_projection`: gsplat's torch `_world_to_cam` + `_persp_proj` (clamped Jacobian,
  EWA), then the culling and opacity-aware radii of ProjectionEWA3DGSFused.cu line by line
  (the torch twin culls differently and ignores opacities, which would change `radii`);
- `rasterize_to_pixels`: a transcription of RasterizeToPixels3DGSFwd.cu (gsplat's torch twin
  needs a CUDA op and nerfacc): per tile, front to back in its sorted intersection list,
  alpha = min(0.999, opacity * exp(-sigma)), skipped where sigma < 0 or alpha < 1/255, the pixel
  stops before a contribution that would take T to 1e-4 or below, alpha = 1 - T, colour +
  T * background. Autograd differentiates it.

Only what our backend uses is supported (no batch dims, packed=False, pinhole, classic).
"""

from __future__ import annotations

import torch
from gsplat.cuda import _torch_impl as ti
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat/cuda/include/Common.h
ALPHA_CAP = 0.999  # RasterizeToPixels3DGSFwd.cu
EXTEND_MAX = 3.33  # ProjectionEWA3DGSFused.cu


def fully_fused_projection(means, covars, quats, scales, viewmats, Ks, width, height, eps2d=0.3,
                           packed=False, near_plane=0.01, far_plane=1e10, radius_clip=0.0,
                           sparse_grad=False, calc_compensations=False, camera_model="pinhole",
                           opacities=None):
    """gsplat.cuda._wrapper.fully_fused_projection (packed=False): radii [C, N, 2] int32,
    means2d [C, N, 2], depths [C, N], conics [C, N, 3], compensations None."""
    assert covars is None and not packed and not calc_compensations and camera_model == "pinhole"
    covars, _ = ti._quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    means_c, covars_c = ti._world_to_cam(means, covars, viewmats)  # [C, N, 3], [C, N, 3, 3]
    means2d, cov2d = ti._persp_proj(means_c, covars_c, Ks, width, height)
    depths = means_c[..., 2]
    # add_blur(), then `if (det <= 0.f) cull` and glm::inverse.
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype)
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    valid = (depths >= near_plane) & (depths <= far_plane) & (det > 0)  # culls z < near, z > far
    opac = torch.broadcast_to(opacities[None, :], depths.shape).detach()
    valid &= opac >= ALPHA_THRESHOLD
    extend = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(EXTEND_MAX)
    with torch.no_grad():
        rx = torch.ceil(extend * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.clamp_min(0)))
        valid &= ~((rx <= radius_clip) & (ry <= radius_clip))
        mx, my = means2d.unbind(-1)
        valid &= ~((mx + rx <= 0) | (mx - rx >= width) | (my + ry <= 0) | (my - ry >= height))
        radii = torch.where(valid[..., None], torch.stack([rx, ry], -1), torch.zeros_like(means2d)).int()
    return radii, means2d, depths, conics, None


def spherical_harmonics(degrees_to_use, dirs, coeffs, masks=None):
    """gsplat.cuda._wrapper.spherical_harmonics: zeros where masks is False. [..., 3]"""
    colours = ti._spherical_harmonics(degrees_to_use, dirs, coeffs)
    if masks is not None:
        colours = torch.where(masks[..., None], colours, torch.zeros_like(colours))
    return colours


def isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, segmented=False,
                packed=False, n_images=None, image_ids=None, gaussian_ids=None):
    """gsplat.cuda._wrapper.isect_tiles (packed=False): tiles_per_gauss, isect_ids, flatten_ids."""
    assert not packed
    return ti._isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort=True)


def isect_offset_encode(isect_ids, n_images, tile_width, tile_height):
    """gsplat.cuda._wrapper.isect_offset_encode: first intersection of each tile. [I, th, tw]"""
    return ti._isect_offset_encode(isect_ids, n_images, tile_width, tile_height)


def rasterize_to_pixels(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor,
                        image_width: int, image_height: int, tile_size: int, isect_offsets: Tensor,
                        flatten_ids: Tensor, backgrounds=None, masks=None, packed=False, absgrad=False):
    """gsplat.cuda._wrapper.rasterize_to_pixels (packed=False, no batch dims): colours
    [C, H, W, D] and alphas [C, H, W, 1]."""
    assert not packed and masks is None and means2d.dim() == 3
    C, N, D = colors.shape
    th, tw = isect_offsets.shape[-2:]
    xy = means2d.reshape(C * N, 2)
    con = conics.reshape(C * N, 3)
    opac = opacities.reshape(C * N)
    col = colors.reshape(C * N, D)
    starts = isect_offsets.reshape(-1).long()
    ends = torch.cat([starts[1:], torch.tensor([len(flatten_ids)])])
    render = torch.zeros(C, image_height, image_width, D, dtype=colors.dtype)
    alphas = torch.zeros(C, image_height, image_width, 1, dtype=colors.dtype)
    for tile in range(C * th * tw):
        c, ty, tx = tile // (th * tw), (tile // tw) % th, tile % tw
        y0, x0 = ty * tile_size, tx * tile_size
        y1, x1 = min(y0 + tile_size, image_height), min(x0 + tile_size, image_width)
        rows, cols = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
        px, py = cols.reshape(-1, 1) + 0.5, rows.reshape(-1, 1) + 0.5  # [P, 1]
        ids = flatten_ids[starts[tile]:ends[tile]].long()  # front to back
        T_final = torch.ones(px.shape[0], dtype=colors.dtype)
        pix = torch.zeros(px.shape[0], D, dtype=colors.dtype)
        if len(ids):
            dx, dy = xy[ids, 0] - px, xy[ids, 1] - py  # [P, M]
            k = con[ids]
            sigma = 0.5 * (k[:, 0] * dx * dx + k[:, 2] * dy * dy) + k[:, 1] * dx * dy
            alpha = torch.clamp_max(opac[ids] * torch.exp(-sigma), ALPHA_CAP)
            alpha = torch.where((sigma < 0) | (alpha < ALPHA_THRESHOLD), torch.zeros_like(alpha), alpha)
            # `if (next_T <= 1e-4f) { done = true; break; }`: that one and all behind are out.
            alpha = torch.where(torch.cumprod(1 - alpha, dim=1) > 1e-4, alpha, torch.zeros_like(alpha))
            T = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
            pix = (alpha * T) @ col[ids]
            T_final = torch.prod(1 - alpha, dim=1)
        if backgrounds is not None:
            pix = pix + T_final[:, None] * backgrounds[c]
        render[c, y0:y1, x0:x1] = pix.reshape(y1 - y0, x1 - x0, D)
        alphas[c, y0:y1, x0:x1, 0] = (1 - T_final).reshape(y1 - y0, x1 - x0)
    return render, alphas


def patch(monkeypatch) -> None:
    """Make `gsplat.rasterization` run on the CPU (for the rest of the test)."""
    import gsplat.rendering as rendering

    for fn in (fully_fused_projection, spherical_harmonics, isect_tiles, isect_offset_encode,
               rasterize_to_pixels):
        monkeypatch.setattr(rendering, fn.__name__, fn)

