"""Tile binning: which Gaussians touch which 16x16 tile, sorted front to back per tile."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TILE_SIZE = 16
# Boxes grow by this much before binning so float rounding at the ellipse's edge can never drop
# a pixel whose alpha is >= 1/255 from its tile (the extra pixels are skipped by the alpha test).
_MARGIN_REL = 1e-3
_MARGIN_PX = 1e-2


@dataclass
class TileBins:
    """Per-tile lists of Gaussians in front-to-back order, for all cameras.

    Attributes:
        gaussian_ids: flat ids c * N + n of the (camera, Gaussian) pairs, sorted by
            (camera, tile, depth, n). [M] int32
        tile_offsets: tile k = (c * tiles_y + ty) * tiles_x + tx holds
            gaussian_ids[tile_offsets[k]:tile_offsets[k + 1]]. [C * tiles_y * tiles_x + 1] int64
        tiles_x: tiles per image row.
        tiles_y: tiles per image column.
        tile_size: tile side, pixels.
    """

    gaussian_ids: Tensor
    tile_offsets: Tensor
    tiles_x: int
    tiles_y: int
    tile_size: int = TILE_SIZE


@torch.no_grad()
def bin_gaussians(
    means2d: Tensor,
    depths: Tensor,
    extents: Tensor,
    visible: Tensor,
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
) -> TileBins:
    """Assign each visible Gaussian to every tile its alpha >= 1/255 box overlaps.

    Args:
        means2d: projected centres, pixels. [C, N, 2]
        depths: camera depths, metres (sort key). [C, N]
        extents: half sizes of the alpha >= 1/255 box, pixels. [C, N, 2]
        visible: which (camera, Gaussian) pairs to bin. [C, N]
        width: image width, pixels.
        height: image height, pixels.
        tile_size: tile side, pixels.

    Returns:
        The bins.
    """
    C, N = visible.shape
    device = means2d.device
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    n_tiles = C * tiles_x * tiles_y

    mx, my = means2d.detach().reshape(-1, 2).unbind(-1)
    ext = extents.reshape(-1, 2) * (1.0 + _MARGIN_REL) + _MARGIN_PX
    # Tile t holds pixel centres t*ts + 0.5 .. t*ts + ts - 0.5; floor() of the box ends is a
    # (slightly) conservative cover.
    x0 = torch.floor((mx - ext[:, 0]) / tile_size).clamp(0, tiles_x).long()
    x1 = (torch.floor((mx + ext[:, 0]) / tile_size) + 1).clamp(0, tiles_x).long()
    y0 = torch.floor((my - ext[:, 1]) / tile_size).clamp(0, tiles_y).long()
    y1 = (torch.floor((my + ext[:, 1]) / tile_size) + 1).clamp(0, tiles_y).long()
    w = (x1 - x0).clamp_min(0)
    counts = torch.where(visible.reshape(-1), w * (y1 - y0).clamp_min(0), torch.zeros_like(w))

    flat_ids = torch.repeat_interleave(torch.arange(C * N, device=device), counts)  # [M]
    M = flat_ids.numel()
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(M, device=device) - starts[flat_ids]
    w_sel = w[flat_ids]
    tx = x0[flat_ids] + local % w_sel
    ty = y0[flat_ids] + torch.div(local, w_sel, rounding_mode="floor")
    tile = (flat_ids // N) * (tiles_x * tiles_y) + ty * tiles_x + tx

    # Depth rank with ties broken by index (stable), the order the dense reference uses.
    order = torch.sort(depths.detach().reshape(-1), stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(C * N, device=device)
    keys = tile * (C * N) + rank[flat_ids]
    perm = torch.sort(keys).indices
    gaussian_ids = flat_ids[perm].to(torch.int32)

    tile_counts = torch.bincount(tile, minlength=n_tiles)
    tile_offsets = torch.zeros(n_tiles + 1, dtype=torch.int64, device=device)
    torch.cumsum(tile_counts, 0, out=tile_offsets[1:])
    return TileBins(gaussian_ids.contiguous(), tile_offsets, tiles_x, tiles_y, tile_size)
