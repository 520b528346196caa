"""Benchmark: `splat.to_mesh` of 100k (or --n) Gaussians on this CPU.

The Gaussians are surface Gaussians of a sphere and a box side by side (flat, tangent, opaque),
the shape 3DGS/2DGS training gives an object. Prints the whole job's time and its split into
rendering the views (`nskernels.rasterize` alone, the same views, measured in the same run: the
baseline the fusion and extraction add to), fusion and extraction, plus the mesh size.
Goal (issue 14): 100k in <= 30 s, 1M in <= 3 min.

Run: ``.venv/bin/python benchmarks/bench_to_mesh.py [--n 100000] [--resolution 128] [--views 40]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

C0 = 0.28209479177387814


def surface_gaussians(n: int, seed: int = 0) -> dict:
    """n flat Gaussians: half on a unit sphere at x = -1.2, half on a 1.6 m box at x = +1.2."""
    rng = np.random.default_rng(seed)
    ns = n // 2
    d = rng.standard_normal((ns, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    sphere = d + [-1.2, 0.0, 0.0]
    nb = n - ns
    face = rng.integers(0, 6, nb)
    uv = rng.uniform(-0.8, 0.8, (nb, 2))
    axis, sign = face // 2, np.where(face % 2, 1.0, -1.0)
    box = np.zeros((nb, 3))
    for a in range(3):
        sel = axis == a
        others = [i for i in range(3) if i != a]
        box[sel, a] = 0.8 * sign[sel]
        box[sel, others[0]], box[sel, others[1]] = uv[sel, 0], uv[sel, 1]
    normals = np.concatenate([d, np.eye(3)[axis] * sign[:, None]])
    means = np.concatenate([sphere, box + [1.2, 0.0, 0.0]])
    axis_v = np.cross([0.0, 0.0, 1.0], normals)
    s = np.linalg.norm(axis_v, axis=1, keepdims=True)
    ang = np.arctan2(s[:, 0], normals[:, 2])
    axis_v = np.where(s > 1e-9, axis_v / np.maximum(s, 1e-9), [1.0, 0.0, 0.0])
    quats = np.concatenate([np.cos(ang / 2)[:, None], axis_v * np.sin(ang / 2)[:, None]], 1)
    spacing = math.sqrt((4 * math.pi + 6 * 1.6**2) / n)
    colour = rng.uniform(0.2, 0.8, (n, 3))
    return {
        "means": means.astype(np.float32), "quats": quats.astype(np.float32),
        "scales": np.tile(np.log([0.8 * spacing, 0.8 * spacing, 0.002]), (n, 1)).astype(np.float32),
        "opacities": np.full(n, 3.0, np.float32), "sh0": ((colour - 0.5) / C0).astype(np.float32),
        "shN": np.zeros((n, 0, 3), np.float32),
    }


class _Job:
    id, device = "bench", "cpu"

    def __init__(self):
        self.marks = {}

    def progress(self, stage, step, total, message="", preview=None):
        self.marks.setdefault(stage, time.monotonic())

    def partial(self, outputs):
        pass

    def check_cancel(self):
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--views", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=256)
    args = ap.parse_args()
    import torch

    from nskernels.rasterize import rasterize
    from pipelines.splat import to_mesh

    g = surface_gaussians(args.n)
    params = to_mesh.Params(resolution=args.resolution, views=args.views, image_size=args.image_size)
    # warm the numba kernels so neither figure pays the compile
    t = {k: torch.tensor(v) for k, v in g.items()}
    lo, hi = to_mesh.scene_bounds(g["means"], g["opacities"])
    cams = to_mesh.orbit_cameras(lo, hi, args.views, args.image_size)
    with torch.no_grad():
        rasterize(*(t[k] for k in ("means", "quats", "scales", "opacities", "sh0", "shN")), cams[[0]])
        t0 = time.monotonic()
        for i in range(args.views):
            rasterize(*(t[k] for k in ("means", "quats", "scales", "opacities", "sh0", "shN")), cams[[i]])
        render_s = time.monotonic() - t0
    job = _Job()
    t0 = time.monotonic()
    out = to_mesh.run({"gaussians": g}, params, job)
    total = time.monotonic() - t0
    extract_s = time.monotonic() - job.marks.get("extract", time.monotonic()) if "extract" in job.marks else float("nan")
    print(f"to_mesh of {args.n:,} Gaussians, {args.views} views of {args.image_size}^2, {args.resolution}^3 voxels "
          f"(threads: {torch.get_num_threads()}):")
    print(f"  total             {total:7.1f} s   (goal <= 30 s for 100k)")
    print(f"  rendering alone   {render_s:7.1f} s   (baseline: the same views through nskernels.rasterize)")
    print(f"  fusion (rest)     {total - render_s - extract_s:7.1f} s")
    print(f"  marching cubes    {extract_s:7.1f} s")
    print(f"  mesh              {out['metrics']['vertices']:,} vertices, {out['metrics']['faces']:,} faces, "
          f"voxel {out['metrics']['voxel_size'] * 100:.2f} cm")


if __name__ == "__main__":
    main()
