"""Small meshes and textures for the mesh rasterizer and `mesh.texture` tests (numpy only).

`uv_sphere` has a latitude-longitude UV layout (per-corner UVs, the seam duplicated), `box` an
axis-aligned box with each face its own UV island; `pattern` is a smooth procedural texture
(period >= a dozen texels, so resampling it loses little), `render_textured` renders a textured
mesh with our own rasterizer (for the in-process round trips; the Blender tests use Cycles);
`RecordingJob` (tests/recording_job.py) is re-exported for the mesh tests.
"""

from __future__ import annotations


import numpy as np

from recording_job import RecordingJob  # noqa: F401  (re-exported for tests/mesh)


def uv_sphere(n_lat: int = 24, n_lon: int = 48, radius: float = 1.0, centre=(0.0, 0.0, 0.0)):
    """(vertices [V, 3] <f4, faces [F, 3] <i4, uvs [F, 3, 2] <f4), outward counter-clockwise faces."""
    lat = np.linspace(0.0, np.pi, n_lat + 1)
    lon = np.linspace(0.0, 2.0 * np.pi, n_lon + 1)
    LAT, LON = np.meshgrid(lat, lon, indexing="ij")
    V = np.stack([np.sin(LAT) * np.cos(LON), np.sin(LAT) * np.sin(LON), np.cos(LAT)], -1).reshape(-1, 3)
    V = V * radius + np.asarray(centre)
    UV = np.stack([LON / (2.0 * np.pi), 1.0 - LAT / np.pi], -1).reshape(-1, 2)
    idx = np.arange((n_lat + 1) * (n_lon + 1)).reshape(n_lat + 1, n_lon + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    F = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return V.astype(np.float32), F.astype(np.int32), UV[F].astype(np.float32)


def box(lo, hi):
    """(vertices [8, 3], faces [12, 3], uvs [12, 3, 2]) of an axis-aligned box, faces outward."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    V = np.array([[x, y, z] for z in (lo[2], hi[2]) for y in (lo[1], hi[1]) for x in (lo[0], hi[0])])
    quads = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
    F, UV = [], []
    for k, (a, b, c, d) in enumerate(quads):
        u0, v0 = (k % 3) / 3.0, (k // 3) / 2.0
        cu = np.array([[u0, v0], [u0 + 0.3, v0], [u0 + 0.3, v0 + 0.45], [u0, v0 + 0.45]]) + 0.01
        F += [(a, b, c), (a, c, d)]
        UV += [cu[[0, 1, 2]], cu[[0, 2, 3]]]
    return V.astype(np.float32), np.array(F, np.int32), np.array(UV, np.float32)


def pattern(size: int) -> np.ndarray:
    """A smooth colourful sRGB texture, row 0 on top; never close to pure red. [S, S, 3] uint8"""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([0.45 + 0.25 * np.sin(2 * np.pi * 3 * xx),
                    0.55 + 0.3 * np.cos(2 * np.pi * 2 * yy),
                    0.5 + 0.3 * np.sin(2 * np.pi * (xx + yy))], -1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def render_textured(vertices, faces, uvs, texture_srgb, cameras: dict, colours=None):
    """Render meshes with our rasterizer: straight-alpha linear RGBA views [T, H, W, 4] <f4.

    The texture (sRGB uint8, row 0 on top) is looked up bilinearly at each pixel's UV; faces with
    a `colours` entry (linear [F, 3], NaN rows = textured) take that flat colour instead.
    """
    import torch

    from nskernels.camera import Cameras
    from nskernels.mesh_raster import rasterize_mesh

    lin = np.asarray(texture_srgb, np.float32) / 255.0
    lin = np.where(lin <= 0.04045, lin / 12.92, ((lin + 0.055) / 1.055) ** 2.4)
    S = lin.shape[0]
    cams = Cameras.from_wire(cameras)
    V, F, U = torch.tensor(vertices), torch.tensor(faces).long(), torch.tensor(uvs)
    out = np.zeros((len(cams), cams.height, cams.width, 4), np.float32)
    for i in range(len(cams)):
        fr = rasterize_mesh(V, F, cams[i], U)
        hit = (fr.triangle >= 0).numpy()
        uv = fr.uv.numpy()
        x = uv[..., 0] * S - 0.5
        y = (1.0 - uv[..., 1]) * S - 0.5
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]
        def tex(r, c):
            return lin[np.clip(r, 0, S - 1), np.clip(c, 0, S - 1)]
        rgb = (tex(y0, x0) * (1 - fx) * (1 - fy) + tex(y0, x0 + 1) * fx * (1 - fy)
               + tex(y0 + 1, x0) * (1 - fx) * fy + tex(y0 + 1, x0 + 1) * fx * fy)
        if colours is not None:
            c = np.asarray(colours, np.float32)[np.maximum(fr.triangle.numpy(), 0)]
            flat = hit & np.isfinite(c[..., 0])
            rgb[flat] = c[flat]
        out[i, ..., :3] = np.where(hit[..., None], rgb, 0.0)
        out[i, ..., 3] = hit
    return out
