"""Project views onto a mesh's UV layout and blend them into one texture (torch).

For every texel the UV rasterizer gives the surface point it stands for. A view contributes to
a texel when the texel's point projects inside the view and the view's own depth map agrees
with the point's depth at all four pixels of the bilinear footprint (a relative tolerance plus
the depth change a slanted surface has across that footprint): so a
texel hidden behind an occluder, or sitting on the edge of one, never samples the occluder's
colour. The contributions are blended with the weight

    w = cos(angle between the surface normal and the direction to the camera)
        x min(1, distance to the view's nearest depth edge / falloff)

(the silhouette and occlusion edges, where renders mix foreground and background and where
neighbouring views disagree most; the falloff hides seams between views, the usual
"view-angle x border" weighting of projective texturing). Texels that no view saw keep alpha 0;
the islands are padded a few texels outwards with the average of their seen neighbours so
that mip-mapping and bilinear lookups at island borders do not pull in black.

All colours here are linear floats; sRGB encoding happens at the wire boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as tf
from torch import Tensor

from nskernels.camera import Cameras
from nskernels.mesh_raster import MeshFragments, UVFragments, rasterize_mesh, rasterize_uv


#: Largest surface slope (tan of the view angle, ~72 degrees) the visibility test allows for.
_MAX_SLOPE = 3.0


@dataclass
class BakeSettings:
    """Settings of the projection and blend.

    Attributes:
        depth_tolerance: relative depth difference under which a view's depth map and a texel's
            point count as the same surface (0.01 = 1 % of the distance to the camera).
        edge_falloff: distance to a depth edge, as a fraction of the view's larger side, over
            which the weight ramps from ~0 to 1.
        min_cos: views seeing a texel more obliquely than this cosine are ignored.
        padding: texels by which the islands are grown outwards.
    """

    depth_tolerance: float = 0.01
    edge_falloff: float = 0.02
    min_cos: float = 0.05
    padding: int = 4


@dataclass
class TexelSet:
    """The texels covered by the UV layout, flattened.

    Attributes:
        index: flat index (row * S + column) of each covered texel. [M] int64
        position: surface points, world frame, metres. [M, 3]
        normal: unit face normals, world frame. [M, 3]
        size: texture side S.
        normal_dot_position: N . P per texel (view-independent part of the facing test). [M]
        position_sq: |P|^2 per texel. [M]
    """

    index: Tensor
    position: Tensor
    normal: Tensor
    size: int
    normal_dot_position: Tensor
    position_sq: Tensor

    @classmethod
    def from_fragments(cls, frags: UVFragments) -> "TexelSet":
        S = frags.triangle.shape[0]
        inside = frags.triangle.reshape(-1) >= 0
        index = inside.nonzero().squeeze(1)
        P = frags.position.reshape(-1, 3)[index]
        N = frags.normal.reshape(-1, 3)[index]
        return cls(index=index, position=P, normal=N, size=S,
                   normal_dot_position=(N * P).sum(dim=1), position_sq=(P * P).sum(dim=1))


@dataclass
class Accumulator:
    """Running weighted sums over the covered texels.

    Attributes:
        colour: sum of w * colour, linear. [M, 3]
        weight: sum of w. [M]
    """

    colour: Tensor
    weight: Tensor

    @classmethod
    def zeros(cls, texels: TexelSet) -> "Accumulator":
        M = texels.index.shape[0]
        return cls(colour=torch.zeros(M, 3, dtype=torch.float32, device=texels.index.device),
                   weight=torch.zeros(M, dtype=torch.float32, device=texels.index.device))


def uv_texels(vertices: Tensor, faces: Tensor, uvs: Tensor, size: int,
              check: Callable[[], None] | None = None) -> TexelSet:
    """Rasterize the UV layout (see `nskernels.mesh_raster.rasterize_uv`) and keep the covered texels."""
    return TexelSet.from_fragments(rasterize_uv(vertices, faces, uvs, size, check))


def view_fragments(vertices: Tensor, faces: Tensor, camera: Cameras, uvs: Tensor | None = None,
                   check: Callable[[], None] | None = None) -> MeshFragments:
    """What one camera sees of the mesh (see `nskernels.mesh_raster.rasterize_mesh`)."""
    return rasterize_mesh(vertices, faces, camera, uvs, check)


def edge_weight_map(depth: Tensor, settings: BakeSettings) -> Tensor:
    """Per-pixel weight from the distance to the nearest depth edge.

    A pixel is an edge pixel when it is empty or one of its 8 neighbours is empty or lies at a
    relative depth difference above the tolerance (a silhouette or an occlusion boundary).

    Args:
        depth: metres along -Z, inf where empty. [H, W]
        settings: the falloff and tolerance.

    Returns:
        Weight in [0, 1], 0 on edge pixels, 1 beyond the falloff distance. [H, W]
    """
    H, W = depth.shape
    d = torch.where(torch.isfinite(depth), depth, torch.full_like(depth, -1.0))[None, None]
    near = -tf.max_pool2d(-torch.where(d > 0, d, torch.full_like(d, float("inf"))), 3, 1, 1)
    far = tf.max_pool2d(d, 3, 1, 1)
    # Some neighbour (or itself) is empty; beyond the image border counts as empty, since the
    # surface goes on where the view cannot see it.
    empty_nb = -tf.max_pool2d(-tf.pad(d, (1, 1, 1, 1), value=-1.0), 3, 1, 0) < 0
    jump = (far - near) > settings.depth_tolerance * near.clamp_min(1e-9)
    interior = (~(empty_nb | jump))[0, 0]
    # Chessboard distance to the nearest edge pixel by repeated 3x3 erosion, capped at `radius`.
    radius = max(2, int(round(settings.edge_falloff * max(H, W))))
    dist = torch.zeros(H, W, dtype=depth.dtype, device=depth.device)
    current = interior
    for _ in range(radius):
        dist += current
        current = _erode3(current)
        if not bool(current.any()):
            break
    return (dist / radius).clamp(max=1.0)


def _erode3(mask: Tensor) -> Tensor:
    """3x3 erosion of a boolean image (outside counts as set), as separable shifted ANDs. [H, W]"""
    h = mask.clone()
    h[:, 1:] &= mask[:, :-1]
    h[:, :-1] &= mask[:, 1:]
    v = h.clone()
    v[1:] &= h[:-1]
    v[:-1] &= h[1:]
    return v


def project_view(
    texels: TexelSet,
    camera: Cameras,
    frags: MeshFragments,
    image: Tensor,
    settings: BakeSettings,
    alpha: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One view's contribution to the texels.

    Args:
        texels: the covered texels.
        camera: the view (C = 1).
        frags: the view's fragments from `view_fragments` (its depth map is the visibility test).
        image: the view's linear colours. [H, W, 3]
        settings: tolerances and falloff.
        alpha: optional straight alpha of the view, multiplies the weight. [H, W]

    Returns:
        `(ids [m], colour [m, 3], weight [m])`: the positions in `texels` this view sees, the
        colour it gives them and the blend weight (> 0).
    """
    H, W = camera.height, camera.width
    P, N = texels.position, texels.normal
    # 1. Facing test: the view must see the texel's side of the surface reasonably squarely.
    # cos = N . (c - P) / |c - P|, expanded so that only two mat-vecs touch all M texels.
    centre = camera.centers()[0].to(P.dtype)
    dist_sq = (texels.position_sq - 2.0 * (P @ centre) + centre.dot(centre)).clamp_min(1e-24)
    cos = (N @ centre - texels.normal_dot_position) * dist_sq.rsqrt()

    # 2. Project every texel into the view (OpenCV camera frame, `nskernels.camera`); one
    # compaction afterwards keeps the facing texels that land inside the image (index_select:
    # far cheaper than advanced indexing on the CPU).
    cam = camera.camera_from_world()[0].to(P.dtype)
    pc = torch.addmm(cam[:3, 3][None], P, cam[:3, :3].T)
    z = pc[:, 2]
    zs = torch.where(z > camera.near, z, torch.ones_like(z))
    x = camera.fx[0] * pc[:, 0] / zs + (camera.cx[0] - 0.5)  # in pixel-centre units
    y = camera.fy[0] * pc[:, 1] / zs + (camera.cy[0] - 0.5)
    ok = (cos > settings.min_cos) & (z > camera.near) & (x >= 0) & (y >= 0) & (x < W - 1) & (y < H - 1)
    ids = ok.nonzero().squeeze(1)
    x, y, z, cos = (t.index_select(0, ids) for t in (x, y, z, cos))
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx_, fy_ = (x - x0)[:, None], (y - y0)[:, None]
    i0 = y0.long() * W + x0.long()
    taps = torch.stack([i0, i0 + 1, i0 + W, i0 + W + 1], dim=1)  # [m, 4]
    tap_w = torch.cat([(1 - fx_) * (1 - fy_), fx_ * (1 - fy_), (1 - fx_) * fy_, fx_ * fy_], dim=1)

    # 3. Visibility: the view's own depth agrees at every tap of the bilinear footprint. The
    # taps lie up to 1.5 px from the texel's projection, where a slanted surface is nearer or
    # farther by (z / f) * tan(angle) per pixel: that slope is allowed on top of the relative
    # tolerance (capped, so that an occluder is never mistaken for a grazing surface).
    # One gather for everything the taps need: [m, 4, C] of (depth, edge weight, r, g, b[, alpha]).
    columns = [frags.depth.reshape(-1, 1).to(z.dtype), edge_weight_map(frags.depth, settings).reshape(-1, 1),
               image.reshape(-1, 3).to(z.dtype)]
    if alpha is not None:
        columns.append(alpha.reshape(-1, 1).to(z.dtype))
    table = torch.cat(columns, dim=1)
    vals = table.index_select(0, taps.reshape(-1)).view(taps.shape[0], 4, table.shape[1])
    depth = vals[..., 0]  # [m, 4], inf where empty
    tan = (1.0 - cos * cos).clamp_min(0).sqrt() / cos
    focal = torch.minimum(camera.fx[0], camera.fy[0]).to(z.dtype)
    tol = z * (settings.depth_tolerance + 1.5 * tan.clamp(max=_MAX_SLOPE) / focal)
    visible = ((depth - z[:, None]).abs() <= tol[:, None]).all(dim=1)

    # 4. Colour and weight: bilinear over the taps (0 where not visible; compacted at the end)
    # (column 0, the depth, mixes to garbage where a tap is empty; it is not used)
    mixed = vals[:, 0] * tap_w[:, 0:1]  # [m, C]; four fused adds beat a batched 1x4 @ 4xC
    for k in range(1, 4):
        mixed.addcmul_(vals[:, k], tap_w[:, k:k + 1])
    colour = mixed[:, 2:5]
    weight = cos * mixed[:, 1].clamp_min(1e-3) * visible
    if alpha is not None:
        weight = weight * mixed[:, 5]
    keep = weight > 0
    return ids[keep], colour[keep].float(), weight[keep].float()


def accumulate(acc: Accumulator, ids: Tensor, colour: Tensor, weight: Tensor) -> None:
    """Add one view's contribution in place."""
    acc.colour.index_add_(0, ids, colour * weight[:, None])
    acc.weight.index_add_(0, ids, weight)


def seen_mask(texels: TexelSet, acc: Accumulator) -> Tensor:
    """Texels some view has seen, as an image. [S, S] bool"""
    S = texels.size
    seen = torch.zeros(S * S, dtype=torch.bool, device=acc.weight.device)
    seen[texels.index] = acc.weight > 0
    return seen.view(S, S)


def resolve(texels: TexelSet, acc: Accumulator, padding: int) -> tuple[Tensor, Tensor]:
    """The blended texture and which texels were seen, islands padded outwards.

    Args:
        texels: the covered texels.
        acc: the accumulated views.
        padding: texels to grow the seen region by (colour only; alpha stays 0 there).

    Returns:
        `(rgb [S, S, 3] linear, seen [S, S] bool)`.
    """
    S = texels.size
    rgb = torch.zeros(S * S, 3, dtype=torch.float32, device=acc.colour.device)
    w = acc.weight
    rgb[texels.index] = torch.where(w[:, None] > 0, acc.colour / w.clamp_min(1e-12)[:, None],
                                    torch.zeros_like(acc.colour))
    seen = seen_mask(texels, acc)
    rgb = rgb.view(S, S, 3)
    return pad_islands(rgb, seen, padding), seen


def pad_islands(rgb: Tensor, known: Tensor, steps: int) -> Tensor:
    """Grow known colours into unknown texels, one ring per step (mean of known 3x3 neighbours).

    Args:
        rgb: colours. [S, S, 3]
        known: texels whose colour is known. [S, S] bool
        steps: rings to grow.

    Returns:
        The padded colours (known texels unchanged). [S, S, 3]
    """
    # Colour and count together, channels last: [S, S, 4]; 3x3 box sums as separable shifted
    # adds (much cheaper on the CPU than avg_pool2d at 2048^2).
    state = torch.cat([rgb * known[..., None], known[..., None].to(rgb.dtype)], dim=-1)
    for _ in range(steps):
        total = _box3(state)
        grow = (total[..., 3] > 0) & (state[..., 3] == 0)
        if not bool(grow.any()):
            break
        fill = total[grow]
        state[grow] = torch.cat([fill[:, :3] / fill[:, 3:], torch.ones_like(fill[:, 3:])], dim=-1)
    return state[..., :3]


def _box3(x: Tensor) -> Tensor:
    """Sum over each 3x3 neighbourhood (zero outside). [S, S, C] -> [S, S, C]"""
    h = x.clone()
    h[:, 1:] += x[:, :-1]
    h[:, :-1] += x[:, 1:]
    v = h.clone()
    v[1:] += h[:-1]
    v[:-1] += h[1:]
    return v


def render_texture(frags: MeshFragments, texture: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
    """Look the texture up through a view's UVs (nearest texel): what the view would show of
    the texture baked so far, and where that is known.

    Args:
        frags: the view's fragments with `uv`.
        texture: colours. [S, S, 3]
        known: texels with a colour. [S, S] bool

    Returns:
        `(rgb [H, W, 3], known [H, W] bool)`; empty pixels are unknown.
    """
    S = texture.shape[0]
    hit = frags.triangle >= 0
    u = frags.uv[..., 0]
    v = frags.uv[..., 1]
    col = (u * S).floor().long().clamp(0, S - 1)
    row = ((1.0 - v) * S).floor().long().clamp(0, S - 1)
    rgb = texture[row, col] * hit[..., None]
    return rgb, known[row, col] & hit
