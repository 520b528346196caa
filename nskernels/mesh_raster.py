"""Triangle-mesh rasterization: per-pixel depth, normal, barycentrics, UV and triangle id for a
camera, and per-texel position, normal and triangle id for a UV layout.

Conventions (PROTOCOL.md Camera; the Blender -> OpenCV conversion is `nskernels.camera`'s):
    - Pixel (row r, column c) is covered by a triangle when its centre (c + 0.5, r + 0.5)
      lies inside the projected triangle (edges included). Row 0 is the top of the image.
    - Depth is the OpenCV camera z of the surface at the pixel centre, i.e. metres along the
      Blender camera's -Z axis (Blender's Z pass for a perspective camera), `inf` where empty.
    - Barycentrics are perspective-correct: the weights of the triangle's three vertices for
      the 3D surface point seen through the pixel centre.
    - Texel (row r, column c) of an S x S texture has its centre at
      uv = ((c + 0.5) / S, 1 - (r + 0.5) / S): row 0 is the top of the image (v = 1), as an
      image on the wire; Blender's UV origin is the bottom-left corner.

Method: a vectorised scanline-free rasterizer. Each triangle's screen bounding box is
enumerated as a flat list of candidate (triangle, pixel) pairs (`repeat_interleave` over the
box sizes, no Python loop per triangle), tested with normalised edge functions, and resolved by
a z-buffer through one `scatter_reduce(amin)` over a packed int64 key (float32 depth bits in the
high word, triangle id in the low word: non-negative float32s order like their bit patterns),
so the nearest triangle wins exactly and ties go to the lower id. Candidates are processed in
chunks of bounded size; only the winners' attributes are computed afterwards.

Triangles with a vertex at camera depth <= near are culled rather than clipped (texturing and
depth checks look at whole objects in front of the camera).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .camera import Cameras

__all__ = ["MeshFragments", "UVFragments", "face_normals", "rasterize_mesh", "rasterize_uv"]

# Candidate (triangle, pixel) pairs per chunk: bounds memory at ~40 bytes x this.
_CANDIDATES_PER_CHUNK = 1 << 22
# Triangles whose doubled screen area is below this (pixels^2) are degenerate and skipped.
_MIN_AREA2 = 1e-12
_EMPTY = torch.iinfo(torch.int64).max
# Bounding-box size classes (pixels per side) tested as fixed blocks; larger boxes are listed.
_BLOCK_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)


@dataclass
class MeshFragments:
    """What one camera sees of a mesh.

    Attributes:
        triangle: id of the nearest triangle at each pixel centre, -1 where empty. [H, W] int64
        depth: metres along the camera's -Z axis, inf where empty. [H, W]
        barycentric: perspective-correct weights of the triangle's vertices, 0 where empty. [H, W, 3]
        normal: unit face normal, world frame, 0 where empty. [H, W, 3]
        uv: interpolated UV coordinates (when the mesh has UVs), 0 where empty. [H, W, 2] or None
    """

    triangle: Tensor
    depth: Tensor
    barycentric: Tensor
    normal: Tensor
    uv: Tensor | None


@dataclass
class UVFragments:
    """What each texel of a UV layout covers on the mesh.

    Attributes:
        triangle: id of the triangle whose UV image covers the texel centre, -1 outside every
            island (where UV islands overlap, the lowest id wins). [S, S] int64
        position: the surface point, world frame, metres; 0 outside. [S, S, 3]
        normal: unit face normal, world frame; 0 outside. [S, S, 3]
    """

    triangle: Tensor
    position: Tensor
    normal: Tensor


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Unit normals of the triangles (counter-clockwise winding, right-handed); 0 for degenerate
    triangles.

    Args:
        vertices: world frame, metres. [V, 3]
        faces: vertex indices. [F, 3]

    Returns:
        Unit normals, world frame. [F, 3]
    """
    tri = vertices[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    length = n.norm(dim=-1, keepdim=True)
    return torch.where(length > 0, n / length.clamp_min(1e-30), torch.zeros_like(n))


def rasterize_mesh(
    vertices: Tensor,
    faces: Tensor,
    cameras: Cameras,
    uvs: Tensor | None = None,
    check: Callable[[], None] | None = None,
) -> MeshFragments:
    """Rasterize a triangle mesh into one camera.

    Args:
        vertices: world frame (Blender, Z up), metres. [V, 3]
        faces: vertex indices, int. [F, 3]
        cameras: one camera (C = 1); Blender convention on the wire.
        uvs: optional per-corner UV coordinates. [F, 3, 2]
        check: called between chunks (e.g. a job's cancel check).

    Returns:
        The fragments (see `MeshFragments`).
    """
    if len(cameras) != 1:
        raise ValueError(f"rasterize_mesh renders one camera at a time, got {len(cameras)}")
    vertices, faces = _check_mesh(vertices, faces)
    if uvs is not None and tuple(uvs.shape) != (faces.shape[0], 3, 2):
        raise ValueError(f"uvs must be [F, 3, 2] = [{faces.shape[0]}, 3, 2], got {tuple(uvs.shape)}")
    width, height = cameras.width, cameras.height

    # 1. Vertices into the OpenCV camera and onto the image plane
    cam = cameras.camera_from_world()[0].to(vertices.dtype)
    pc = vertices @ cam[:3, :3].T + cam[:3, 3]  # [V, 3]
    z = pc[:, 2]
    safe_z = torch.where(z > cameras.near, z, torch.ones_like(z))
    x = cameras.fx[0] * pc[:, 0] / safe_z + cameras.cx[0]
    y = cameras.fy[0] * pc[:, 1] / safe_z + cameras.cy[0]
    xy = torch.stack([x, y], dim=-1)[faces]  # [F, 3, 2]
    tz = z[faces]  # [F, 3]
    valid = (tz > cameras.near).all(dim=1) & (tz < cameras.far).all(dim=1)

    # 2. Z-buffer over the candidates
    triangle = _zbuffer(xy, tz, valid, width, height, check)

    # 3. Attributes of the winners
    hit = triangle >= 0
    tri = triangle[hit]
    pix = hit.nonzero()
    centre = torch.stack([pix[:, 1], pix[:, 0]], dim=-1).to(xy.dtype) + 0.5
    lam = _screen_barycentric(xy[tri], centre)
    inv_z = lam / tz[tri]
    bary = inv_z / inv_z.sum(dim=1, keepdim=True)
    depth = torch.full((height, width), float("inf"), dtype=vertices.dtype, device=vertices.device)
    depth[hit] = 1.0 / inv_z.sum(dim=1)
    barycentric = torch.zeros(height, width, 3, dtype=vertices.dtype, device=vertices.device)
    barycentric[hit] = bary
    normal = torch.zeros_like(barycentric)
    normal[hit] = face_normals(vertices, faces)[tri]
    uv = None
    if uvs is not None:
        uv = torch.zeros(height, width, 2, dtype=vertices.dtype, device=vertices.device)
        uv[hit] = (bary[:, :, None] * uvs[tri].to(vertices.dtype)).sum(dim=1)
    return MeshFragments(triangle=triangle, depth=depth, barycentric=barycentric, normal=normal, uv=uv)


def rasterize_uv(
    vertices: Tensor,
    faces: Tensor,
    uvs: Tensor,
    size: int,
    check: Callable[[], None] | None = None,
) -> UVFragments:
    """Rasterize a mesh's UV layout: for each texel centre, the surface point it maps to.

    Args:
        vertices: world frame, metres. [V, 3]
        faces: vertex indices, int. [F, 3]
        uvs: per-corner UV coordinates (Blender's: origin bottom-left). [F, 3, 2]
        size: texture side S, texels.
        check: called between chunks (e.g. a job's cancel check).

    Returns:
        The texel fragments (see `UVFragments`), row 0 = the top of the texture (v = 1).
    """
    vertices, faces = _check_mesh(vertices, faces)
    if tuple(uvs.shape) != (faces.shape[0], 3, 2):
        raise ValueError(f"uvs must be [F, 3, 2] = [{faces.shape[0]}, 3, 2], got {tuple(uvs.shape)}")
    uvs = uvs.to(vertices.dtype)
    # Texel grid as a screen: x = u S, y = (1 - v) S; flat "depth" so the lowest id wins overlaps.
    xy = torch.stack([uvs[..., 0] * size, (1.0 - uvs[..., 1]) * size], dim=-1)
    flat = torch.ones(faces.shape[0], 3, dtype=vertices.dtype, device=vertices.device)
    valid = torch.isfinite(xy).all(dim=2).all(dim=1)
    triangle = _zbuffer(xy, flat, valid, size, size, check)

    # Each triangle's texel -> surface point map is affine in texel coordinates:
    # P(p) = sum_i lam_i(p) V_i = (sum_i V_i a_i^T) p + sum_i b_i V_i (lam_i = a_i . p + b_i).
    a, b = _edge_coefficients(xy.double())
    corners = vertices[faces].double()  # [F, 3 corners, 3 xyz]
    affine = torch.cat([torch.einsum("fcx,fcj->fxj", corners, a),
                        torch.einsum("fcx,fc->fx", corners, b)[..., None]], dim=-1).to(vertices.dtype)
    flat_tri = triangle.reshape(-1)
    texel = (flat_tri >= 0).nonzero().squeeze(1)
    tri = flat_tri[texel]
    centre = torch.stack([(texel % size).to(vertices.dtype) + 0.5,
                          (texel // size).to(vertices.dtype) + 0.5], dim=-1)
    m = affine[tri]  # [n, 3, 3]
    point = m[:, :, 0] * centre[:, 0:1] + m[:, :, 1] * centre[:, 1:2] + m[:, :, 2]
    position = torch.zeros(size * size, 3, dtype=vertices.dtype, device=vertices.device)
    position[texel] = point
    normal = torch.zeros_like(position)
    normal[texel] = face_normals(vertices, faces)[tri]
    return UVFragments(triangle=triangle, position=position.view(size, size, 3),
                       normal=normal.view(size, size, 3))


# ---------------------------------------------------------------------------- mechanics


def _check_mesh(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    if vertices.dim() != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3], got {tuple(vertices.shape)}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3], got {tuple(faces.shape)}")
    faces = faces.long()
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[0]):
        raise ValueError(f"faces index vertices outside [0, {vertices.shape[0]})")
    if not vertices.is_floating_point():
        vertices = vertices.float()
    return vertices.contiguous(), faces.contiguous()


def _edge_coefficients(xy: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised edge functions: lam_i(p) = a_i . p + b_i, the screen barycentric of corner i.

    Args:
        xy: screen positions of the corners. [n, 3, 2]

    Returns:
        `(a [n, 3, 2], b [n, 3])` and, implicitly, lam summing to 1 inside the triangle;
        divided by the signed doubled area so that both windings give lam >= 0 inside.
    """
    p0, p1, p2 = xy[:, 0], xy[:, 1], xy[:, 2]
    area2 = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0])
    inv = 1.0 / torch.where(area2.abs() > _MIN_AREA2, area2, torch.ones_like(area2))
    # lam_0 is the signed area of (p, p1, p2) over the triangle's, and cyclically.
    a_list, b_list = [], []
    for q, r in ((p1, p2), (p2, p0), (p0, p1)):
        a = torch.stack([q[:, 1] - r[:, 1], r[:, 0] - q[:, 0]], dim=-1)
        b = q[:, 0] * r[:, 1] - q[:, 1] * r[:, 0]
        a_list.append(a * inv[:, None])
        b_list.append(b * inv)
    return torch.stack(a_list, dim=1), torch.stack(b_list, dim=1)


def _screen_barycentric(xy: Tensor, points: Tensor) -> Tensor:
    """Screen-space barycentrics of `points [n, 2]` in triangles `xy [n, 3, 2]`. [n, 3]"""
    # float64 for the winners: few of them, and edge-on pixel centres stay consistent.
    a, b = _edge_coefficients(xy.double())
    lam = (a * points.double()[:, None, :]).sum(dim=-1) + b
    return lam.to(xy.dtype)


def _zbuffer(
    xy: Tensor, tz: Tensor, valid: Tensor, width: int, height: int,
    check: Callable[[], None] | None,
) -> Tensor:
    """Nearest triangle at each pixel centre.

    Args:
        xy: screen positions of the corners, pixels. [F, 3, 2]
        tz: positive camera depth of the corners. [F, 3]
        valid: triangles that may be drawn. [F] bool
        width, height: image size, pixels.
        check: called between chunks.

    Returns:
        Triangle id per pixel, -1 where empty. [H, W] int64
    """
    device = xy.device
    F = xy.shape[0]
    best = torch.full((height * width,), _EMPTY, dtype=torch.int64, device=device)
    if F == 0:
        return torch.full((height, width), -1, dtype=torch.int64, device=device)
    xy64 = xy.double()
    lo = xy64.amin(dim=1)
    hi = xy64.amax(dim=1)
    # Pixel c is a candidate when its centre c + 0.5 lies within [lo, hi].
    x0 = torch.ceil(lo[:, 0] - 0.5).clamp(0, width).long()
    x1 = torch.floor(hi[:, 0] - 0.5).clamp(-1, width - 1).long()
    y0 = torch.ceil(lo[:, 1] - 0.5).clamp(0, height).long()
    y1 = torch.floor(hi[:, 1] - 0.5).clamp(-1, height - 1).long()
    bw = (x1 - x0 + 1).clamp_min(0)
    bh = (y1 - y0 + 1).clamp_min(0)
    a_all, b_all = _edge_coefficients(xy64)
    p0, p1, p2 = xy64[:, 0], xy64[:, 1], xy64[:, 2]
    area2 = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0])
    ok = valid & (area2.abs() > _MIN_AREA2) & torch.isfinite(area2)
    counts = torch.where(ok, bw * bh, torch.zeros_like(bw))
    ids = counts.nonzero().squeeze(1)
    if ids.numel() == 0:
        return torch.full((height, width), -1, dtype=torch.int64, device=device)
    counts = counts[ids]
    # The coefficients in float32 for the bulk test (pixel coordinates < 2^24 are exact).
    a_all = a_all.float()
    b_all = b_all.float()
    inv_z = (1.0 / tz.double()).float()

    # Small triangles (nearly all of a dense mesh) by bounding-box size class: each class tests
    # a fixed kw x kh pixel block per triangle with the triangle's coefficients broadcast over
    # the block (no per-pixel gathers); larger ones as a flat list of their box's pixels.
    classes = torch.tensor(_BLOCK_SIZES, device=device)
    cw = torch.searchsorted(classes, bw[ids])  # class index per side; len(classes): too big
    ch = torch.searchsorted(classes, bh[ids])
    n_cls = len(_BLOCK_SIZES)
    small = (cw < n_cls) & (ch < n_cls)
    group = cw * n_cls + ch
    for g in torch.unique(group[small]).tolist():
        kw, kh = _BLOCK_SIZES[g // n_cls], _BLOCK_SIZES[g % n_cls]
        sel = ids[small & (group == g)]
        step = max(1, _CANDIDATES_PER_CHUNK // (kw * kh))
        for start in range(0, sel.numel(), step):
            if check is not None:
                check()
            _zbuffer_block(sel[start:start + step], kw, kh, x0, y0, bw, bh, a_all, b_all, inv_z,
                           width, best)
    big = ids[~small]
    counts = counts[~small]
    # Chunks: consecutive triangles whose candidate counts sum to at most the budget (one
    # triangle larger than the budget is a chunk of its own).
    ends = torch.cumsum(counts, 0)
    start = 0
    n = big.numel()
    while start < n:
        base = int(ends[start - 1]) if start > 0 else 0
        stop = int(torch.searchsorted(ends, base + _CANDIDATES_PER_CHUNK, right=True))
        stop = max(stop, start + 1)
        if check is not None:
            check()
        _zbuffer_chunk(big[start:stop], counts[start:stop], x0, y0, bw, a_all, b_all, inv_z,
                       width, best)
        start = stop
    triangle = torch.where(best == _EMPTY, torch.full_like(best, -1), best & 0xFFFFFFFF)
    return triangle.view(height, width)


def _zbuffer_block(
    ids: Tensor, kw: int, kh: int, x0: Tensor, y0: Tensor, bw: Tensor, bh: Tensor,
    a_all: Tensor, b_all: Tensor, inv_z: Tensor, width: int, best: Tensor,
) -> None:
    """Test a kw x kh pixel block at each triangle's bounding-box corner; fold hits into `best`."""
    dy, dx = torch.meshgrid(torch.arange(kh, device=ids.device), torch.arange(kw, device=ids.device),
                            indexing="ij")
    dx, dy = dx.reshape(1, -1), dy.reshape(1, -1)
    px = x0[ids][:, None] + dx  # [n, k*k]
    py = y0[ids][:, None] + dy
    inside = (dx < bw[ids][:, None]) & (dy < bh[ids][:, None])
    cx = px.float() + 0.5
    cy = py.float() + 0.5
    a, b, iz = a_all[ids], b_all[ids], inv_z[ids]
    inv_depth = torch.zeros_like(cx)
    for i in range(3):
        lam = a[:, i, 0:1] * cx + a[:, i, 1:2] * cy + b[:, i:i + 1]
        inside &= lam >= 0
        inv_depth += lam * iz[:, i:i + 1]
    tri = ids[:, None].expand_as(px)[inside]
    depth = 1.0 / inv_depth[inside]
    bits = depth.clamp_min(0).view(torch.int32).long()
    best.scatter_reduce_(0, py[inside] * width + px[inside], (bits << 32) | tri, reduce="amin")


def _zbuffer_chunk(
    ids: Tensor, counts: Tensor, x0: Tensor, y0: Tensor, bw: Tensor,
    a_all: Tensor, b_all: Tensor, inv_z: Tensor, width: int, best: Tensor,
) -> None:
    """Test one chunk's candidates and fold the covered ones into `best` (packed keys)."""
    total = int(counts.sum())
    tri = torch.repeat_interleave(ids, counts)
    offsets = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=ids.device) - torch.repeat_interleave(offsets, counts)
    w = bw[tri]
    px = x0[tri] + local % w
    py = y0[tri] + local // w
    centre = torch.stack([px, py], dim=-1).float() + 0.5
    lam = (a_all[tri] * centre[:, None, :]).sum(dim=-1) + b_all[tri]  # [n, 3]
    inside = (lam >= 0).all(dim=1)
    tri, lam, px, py = tri[inside], lam[inside], px[inside], py[inside]
    depth = 1.0 / (lam * inv_z[tri]).sum(dim=1)
    # Non-negative float32 order equals their int32 bit patterns' order.
    bits = depth.clamp_min(0).view(torch.int32).long()
    key = (bits << 32) | tri
    best.scatter_reduce_(0, py * width + px, key, reduce="amin")
