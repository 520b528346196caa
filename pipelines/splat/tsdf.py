"""Truncated signed distance fusion of rendered depth and colour (the fusion step of `splat.to_mesh`).

Curless & Levoy 1996 / KinectFusion (Newcombe et al. 2011), voxel-centric: every voxel is
projected into every view (no per-pixel ray marching), in one numba loop over the voxel grid
whose inner loop walks the views, so a voxel's running sums stay in registers and the grid is
written once. Per voxel and view:

- the voxel lands in front of an observed surface (alpha >= SURFACE_ALPHA): sdf = depth - z,
  kept when sdf > -mu (at most `truncation` voxels behind the surface), stored as
  min(sdf / mu, 1), weighted by the pixel's |cos| between ray and surface normal (grazing
  views see a surface's depth worst: the Gaussian that makes T cross 0.5 lies off the ray's
  hit point; KinectFusion-style fusion weights them down the same way);
- it lands on an empty pixel (alpha < EMPTY_ALPHA): free space, +1 with weight 1, which carves
  the volume so closed shapes close;
- the straight (un-premultiplied) pixel colour is averaged over the observations within the
  truncation band |sdf| < mu: the vertex colours come from this volume, not from extra renders.

Voxels no view observes stay "inside" (-1). Frames: world metres, Blender camera convention
(camera looks down its -Z, +Y up; image rows grow downwards).
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Pixels at or above this alpha are surface observations; below EMPTY_ALPHA, free space.
SURFACE_ALPHA = 0.5
EMPTY_ALPHA = 0.05
#: Lowest weight of a surface observation (grazing views, depth edges).
MIN_COSINE = 0.05


class VoxelGrid:
    """The voxel grid over a box.

    Attributes:
        origin: world position of voxel (0, 0, 0)'s centre, metres. [3] float64
        voxel: voxel edge length, metres.
        shape: (X, Y, Z) voxel counts.
    """

    def __init__(self, lo: np.ndarray, hi: np.ndarray, resolution: int):
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        self.voxel = float(np.max(hi - lo)) / resolution
        self.shape = tuple(int(max(2, math.ceil(e / self.voxel))) for e in (hi - lo))
        self.origin = lo + self.voxel / 2

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))


def view_cosines(depth: np.ndarray, fx: np.ndarray, fy: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """|cos| of the angle between each pixel's ray and the normal of the depth map.

    The normal is the cross product of central differences of the back-projected points;
    MIN_COSINE at least (also on the border, across depth edges and where empty), because a
    neighbour across a depth edge gives a nonsense normal.

    Args:
        depth: distance along -Z, metres, inf where empty. [V, H, W]
        fx, fy, cx, cy: intrinsics, pixels. [V]

    Returns:
        Weights in [MIN_COSINE, 1]. [V, H, W] float32
    """
    v, h, w = depth.shape
    col = (np.arange(w, dtype=np.float32) + 0.5)[None, None, :]
    row = (np.arange(h, dtype=np.float32) + 0.5)[None, :, None]
    rx = (col - cx[:, None, None]) / fx[:, None, None]  # [V, 1, W]
    ry = -(row - cy[:, None, None]) / fy[:, None, None]  # [V, H, 1]
    finite = np.isfinite(depth)
    d = np.where(finite, depth, 0.0).astype(np.float32)
    px, py, pz = rx * d, ry * d, -d
    cos = np.full(depth.shape, MIN_COSINE, np.float32)
    # central differences along x (columns) and y (rows) on the interior
    ax = [p[:, 1:-1, 2:] - p[:, 1:-1, :-2] for p in (px, py, pz)]
    ay = [p[:, 2:, 1:-1] - p[:, :-2, 1:-1] for p in (px, py, pz)]
    nx = ax[1] * ay[2] - ax[2] * ay[1]
    ny = ax[2] * ay[0] - ax[0] * ay[2]
    nz = ax[0] * ay[1] - ax[1] * ay[0]
    rxi = np.broadcast_to(rx[:, :, 1:-1], nx.shape)
    ryi = np.broadcast_to(ry[:, 1:-1, :], nx.shape)
    dot = np.abs(nx * rxi + ny * ryi - nz)
    norm = np.sqrt(nx * nx + ny * ny + nz * nz) * np.sqrt(rxi * rxi + ryi * ryi + 1.0)
    inner = np.where(norm > 0, dot / np.maximum(norm, 1e-30), 0.0)
    ok = finite[:, 1:-1, 1:-1] & (norm > 0)
    cos[:, 1:-1, 1:-1] = np.where(ok, np.maximum(inner, MIN_COSINE), MIN_COSINE)
    return cos


def fuse(grid: VoxelGrid, cam_from_world: np.ndarray, intrinsics: np.ndarray, rgb: np.ndarray,
         alpha: np.ndarray, depth: np.ndarray, truncation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse V rendered views into the grid.

    Args:
        grid: the voxel grid.
        cam_from_world: Blender-convention view matrices (inverse camera matrices). [V, 4, 4]
        intrinsics: fx, fy, cx, cy per view, pixels. [V, 4]
        rgb: premultiplied colour. [V, H, W, 3]
        alpha: [V, H, W]
        depth: front-surface depth, metres along -Z, inf where empty. [V, H, W]
        truncation: band half width, voxels.

    Returns:
        tsdf in [-1, 1], -1 where no view observed the voxel, [X, Y, Z] float32;
        colour sum (straight, linear, over the band observations), [X, Y, Z, 3] float32;
        colour weight (the number of band observations), [X, Y, Z] float32.
    """
    intr = np.ascontiguousarray(intrinsics, np.float64)
    cos = view_cosines(depth, intr[:, 0], intr[:, 1], intr[:, 2], intr[:, 3])
    a = np.ascontiguousarray(alpha, np.float32)
    straight = np.ascontiguousarray(rgb, np.float32) / np.maximum(a, 1e-6)[..., None]
    d = np.ascontiguousarray(np.where(np.isfinite(depth), depth, np.inf), np.float32)
    tsdf = np.empty(grid.shape, np.float32)
    colour = np.empty((*grid.shape, 3), np.float32)
    cweight = np.empty(grid.shape, np.float32)
    _fuse_kernel(np.ascontiguousarray(cam_from_world[:, :3, :4], np.float64), intr, a, d,
                 np.ascontiguousarray(straight, np.float32), cos, grid.origin.astype(np.float64), grid.voxel,
                 truncation * grid.voxel, SURFACE_ALPHA, EMPTY_ALPHA, tsdf, colour, cweight)
    return tsdf, colour, cweight


@numba.njit(cache=True, fastmath=True)
def _fuse_kernel(view, intr, alpha, depth, rgb, cos, origin, voxel, mu, surface_alpha, empty_alpha,
                 tsdf, colour, cweight):  # pragma: no cover - numba
    nv, h, w = alpha.shape
    nx, ny, nz = tsdf.shape
    for i in range(nx):
        x = origin[0] + i * voxel
        for j in range(ny):
            y = origin[1] + j * voxel
            for k in range(nz):
                z = origin[2] + k * voxel
                s = 0.0
                wsum = 0.0
                cr = 0.0
                cg = 0.0
                cb = 0.0
                cn = 0.0
                for c in range(nv):
                    m = view[c]
                    px = m[0, 0] * x + m[0, 1] * y + m[0, 2] * z + m[0, 3]
                    py = m[1, 0] * x + m[1, 1] * y + m[1, 2] * z + m[1, 3]
                    dz = -(m[2, 0] * x + m[2, 1] * y + m[2, 2] * z + m[2, 3])
                    if dz <= 1e-6:
                        continue
                    fu = intr[c, 0] * px / dz + intr[c, 2]
                    fv = -intr[c, 1] * py / dz + intr[c, 3]
                    if fu < 0.0 or fv < 0.0 or fu >= w or fv >= h:
                        continue
                    u = int(fu)
                    v = int(fv)
                    a = alpha[c, v, u]
                    if a < empty_alpha:
                        s += 1.0
                        wsum += 1.0
                        continue
                    if a < surface_alpha:
                        continue
                    d = depth[c, v, u]
                    if not d < np.inf:
                        continue
                    sdf = d - dz
                    if sdf <= -mu:
                        continue  # far behind the surface: not observed
                    wt = cos[c, v, u]
                    s += min(sdf / mu, 1.0) * wt
                    wsum += wt
                    if sdf < mu:
                        cr += rgb[c, v, u, 0]
                        cg += rgb[c, v, u, 1]
                        cb += rgb[c, v, u, 2]
                        cn += 1.0
                tsdf[i, j, k] = s / wsum if wsum > 0.0 else -1.0
                colour[i, j, k, 0] = cr
                colour[i, j, k, 1] = cg
                colour[i, j, k, 2] = cb
                cweight[i, j, k] = cn
