"""Pure-torch tile compositing: the fallback when numba is not importable (and on CUDA tensors).

Tiles are processed in chunks of similar length so no [pixels x N] tensor is built: a chunk
holds at most `budget` (tile pixel, Gaussian) pairs. Autograd differentiates it.
Same compositing rule as `_tile_numba` (see there).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._binning import TileBins
from .conventions import ALPHA_MAX, ALPHA_MIN, T_MIN
from .output import front_index_from_weights
from .projection import PeakInputs, peak_depth


def composite_torch(
    means2d: Tensor,
    conics: Tensor,
    colours: Tensor,
    opacities: Tensor,
    depths: Tensor,
    peaks: PeakInputs,
    bins: TileBins,
    width: int,
    height: int,
    budget: int = 1 << 22,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Same contract as `_composite.composite` (rgb, alpha, depth sum, front depth); `budget`
    bounds the pairs per chunk."""
    C, N = opacities.shape
    device = means2d.device
    ts, tiles_x, tiles_y = bins.tile_size, bins.tiles_x, bins.tiles_y
    n_tiles = C * tiles_x * tiles_y
    P = ts * ts
    # Per flat Gaussian: mean x, mean y, conic a, b, c, opacity, r, g, b, depth.
    feats = torch.cat(
        [
            means2d.reshape(C * N, 2),
            conics.reshape(C * N, 3),
            opacities.reshape(C * N, 1),
            colours.reshape(C * N, 3),
            depths.reshape(C * N, 1),
        ],
        dim=-1,
    )
    offsets = bins.tile_offsets
    counts = offsets[1:] - offsets[:-1]
    local = torch.arange(P, device=device)
    lx, ly = (local % ts).to(feats.dtype), torch.div(local, ts, rounding_mode="floor").to(feats.dtype)

    busy = torch.nonzero(counts > 0).flatten()
    busy = busy[torch.argsort(counts[busy])]
    busy_counts = counts[busy].tolist()
    done_tiles, done_values = [], []
    i = 0
    while i < len(busy_counts):
        # Grow the chunk while its padded size (tiles x pixels x longest list) fits the budget;
        # tiles are sorted by length so the padding stays small.
        j = i + 1
        while j < len(busy_counts) and (j + 1 - i) * P * busy_counts[j] <= budget:
            j += 1
        tiles = busy[i:j]
        done_tiles.append(tiles)
        done_values.append(_composite_chunk(feats, peaks, bins, tiles, lx, ly, tiles_x, tiles_y))
        i = j

    values = torch.zeros(n_tiles, P, 6, dtype=feats.dtype, device=device)
    values[..., 5] = float("inf")  # depth_front of empty tiles
    if done_tiles:
        values = values.index_copy(0, torch.cat(done_tiles), torch.cat(done_values))
    image = (
        values.reshape(C, tiles_y, tiles_x, ts, ts, 6)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(C, tiles_y * ts, tiles_x * ts, 6)[:, :height, :width]
    )
    return image[..., 0:3], image[..., 3], image[..., 4], image[..., 5].detach()


def _composite_chunk(
    feats: Tensor, peaks: PeakInputs, bins: TileBins, tiles: Tensor, lx: Tensor, ly: Tensor,
    tiles_x: int, tiles_y: int,
) -> Tensor:
    """Composite a chunk of tiles -> [Tc, P, 6] (r, g, b, alpha, depth sum, front depth) per tile pixel."""
    starts = bins.tile_offsets[tiles]
    lengths = bins.tile_offsets[tiles + 1] - starts
    L = int(lengths.max())
    slot = torch.arange(L, device=feats.device)
    in_list = slot[None, :] < lengths[:, None]  # [Tc, L]
    idx = torch.where(in_list, starts[:, None] + slot[None, :], torch.zeros_like(in_list, dtype=starts.dtype))
    gid = bins.gaussian_ids[idx].long()
    f = feats[gid]  # [Tc, L, 10]

    t = tiles % (tiles_x * tiles_y)
    ox = ((t % tiles_x) * bins.tile_size).to(feats.dtype)
    oy = (torch.div(t, tiles_x, rounding_mode="floor") * bins.tile_size).to(feats.dtype)
    px = (ox[:, None] + lx[None, :] + 0.5)[:, :, None]  # [Tc, P, 1]
    py = (oy[:, None] + ly[None, :] + 0.5)[:, :, None]
    dx = f[:, None, :, 0] - px  # [Tc, P, L]
    dy = f[:, None, :, 1] - py
    sigma = 0.5 * (f[:, None, :, 2] * dx * dx + f[:, None, :, 4] * dy * dy) + f[:, None, :, 3] * dx * dy
    alpha = torch.clamp(f[:, None, :, 5] * torch.exp(-sigma), max=ALPHA_MAX)
    alpha = torch.where(in_list[:, None, :] & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    # Stop rule: a contribution whose T * (1 - alpha) would be <= 1e-4 and everything after it
    # are left out. Skipped ones (alpha = 0) do not change the running product.
    alpha = torch.where(torch.cumprod(1.0 - alpha, -1) > T_MIN, alpha, torch.zeros_like(alpha))
    trans = torch.cumprod(1.0 - alpha, -1)
    T = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], -1)
    w = alpha * T
    rgb = torch.einsum("tpl,tlc->tpc", w, f[..., 6:9])
    depth_sum = torch.einsum("tpl,tl->tp", w, f[..., 9])
    front = _front_depth(alpha, gid, f[..., 9], peaks, tiles, px, py, tiles_x * tiles_y)
    return torch.cat([rgb, (1.0 - trans[..., -1])[..., None], depth_sum[..., None], front[..., None]], -1)


def _front_depth(alpha: Tensor, gid: Tensor, depths: Tensor, peaks: PeakInputs, tiles: Tensor, px: Tensor, py: Tensor,
                 tiles_per_camera: int) -> Tensor:
    """Front depth of a chunk's pixels: the chosen contribution's peak along the pixel's ray.

    Args:
        alpha: the pixels' contributions, front to back. [Tc, P, L]
        gid: flat (camera * N + Gaussian) ids of the tiles' lists. [Tc, L]
        depths: their centre depths. [Tc, L]
        peaks: the 3D Gaussians and cameras.
        tiles: the chunk's tile ids (camera * tiles_per_camera + tile). [Tc]
        px, py: pixel centres. [Tc, P, 1]

    Returns:
        Front depth, inf where alpha < 1/255, dtype of ``alpha``. [Tc, P]
    """
    with torch.no_grad():
        idx, covered = front_index_from_weights(alpha.detach().double())  # [Tc, P]
        chosen = torch.gather(gid, 1, idx)  # [Tc, P]
        n = peaks.means.shape[0]
        cam = torch.div(tiles, tiles_per_camera, rounding_mode="floor")[:, None].expand_as(chosen)
        g = chosen - cam * n
        fx, fy, cx, cy = peaks.intrinsics.to(alpha.device)[cam].unbind(-1)
        u = (px[..., 0].double() - cx) / fx
        v = (py[..., 0].double() - cy) / fy
        front = peak_depth(peaks.means[g], peaks.quats[g], peaks.scales[g],
                           peaks.camera_from_world.to(alpha.device)[cam], u, v, torch.gather(depths.detach(), 1, idx))
        return torch.where(covered, front, torch.full_like(front, float("inf"))).to(alpha.dtype)
