"""Benchmark: `splat.to_mesh` of 100k and 1M Gaussians on this CPU, against the previous implementation.

The Gaussians are surface Gaussians of a sphere and a box side by side (flat, tangent, opaque),
the shape 3DGS/2DGS training gives an object. For each count the job runs twice in the same
process: the current `pipelines.splat.to_mesh` and the implementation of `--baseline` (a git
revision; default aa1502f, the per-view torch fusion of 40 views at 256 px), loaded from git into
a side module. Printed per run: total time and its split into rendering, fusion and extraction
(from the job's progress marks), the mesh size, and its accuracy: the mean distance of the
vertices to the true sphere and box surfaces, as a percentage of the scene's extent.
Goal (issue 14): 100k in <= 30 s, 1M in <= 3 min.

Run: ``.venv/bin/python benchmarks/bench_to_mesh.py [--n 100000 1000000] [--resolution 128]
[--views V] [--baseline REV|none]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

C0 = 0.28209479177387814
SPHERE_CENTRE, BOX_CENTRE, BOX_HALF = np.array([-1.2, 0.0, 0.0]), np.array([1.2, 0.0, 0.0]), 0.8
EXTENT = 2 * 2.0 + 0.2  # x from -2.2 to 2.0 (the longest side of the pair)
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


def surface_error(vertices: np.ndarray) -> float:
    """Mean distance of the vertices to the nearer true surface (unit sphere or box), metres."""
    d_sphere = np.abs(np.linalg.norm(vertices - SPHERE_CENTRE, axis=1) - 1.0)
    q = np.abs(vertices - BOX_CENTRE) - BOX_HALF
    d_box = np.abs(np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(1), 0.0))
    return float(np.minimum(d_sphere, d_box).mean()) if len(vertices) else float("nan")


def load_baseline(rev: str):
    """`pipelines/splat/to_mesh.py` as of git revision `rev`, as a module beside the current one."""
    src = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:pipelines/splat/to_mesh.py"], check=True,
                         capture_output=True, text=True).stdout
    name = "pipelines.splat._to_mesh_baseline"
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    mod.__package__ = "pipelines.splat"
    sys.modules[name] = mod
    exec(compile(src, f"{rev}:pipelines/splat/to_mesh.py", "exec"), mod.__dict__)
    return mod


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


def timed_run(module, g: dict, params) -> dict:
    """One job; returns the total and per-stage seconds (from the first progress mark of each
    stage: render/fuse/extract in the current code, fuse (= render + fuse per view)/extract in
    the baseline) and the output."""
    job = _Job()
    t0 = time.monotonic()
    out = module.run({"gaussians": g}, params, job)
    end = time.monotonic()
    marks = sorted(job.marks.items(), key=lambda kv: kv[1])
    # a stage runs from its first mark (the first stage: from the start) to the next stage's
    stages = {name: (marks[k + 1][1] if k + 1 < len(marks) else end) - (t0 if k == 0 else at)
              for k, (name, at) in enumerate(marks)}
    return {"total": end - t0, "stages": stages, "out": out}


def report(label: str, n: int, r: dict) -> None:
    m = r["out"]["metrics"]
    split = ", ".join(f"{k} {v:.1f} s" for k, v in r["stages"].items())
    err = surface_error(r["out"]["vertices"]) / EXTENT * 100
    print(f"  {label:<9s} {r['total']:7.1f} s  ({split});  {m['vertices']:,} vertices, {m['faces']:,} faces, "
          f"voxel {m['voxel_size'] * 100:.2f} cm, mean distance to the true surfaces {err:.3f} % of extent",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--views", type=int, default=None, help="views of the current code (default: its default)")
    ap.add_argument("--baseline", default="aa1502f", help="git revision of the baseline, or 'none'")
    args = ap.parse_args()
    import torch

    from pipelines.splat import to_mesh

    baseline = None if args.baseline == "none" else load_baseline(args.baseline)
    params = to_mesh.Params(resolution=args.resolution)
    if args.views:
        params.views = args.views
    # compile the numba kernels (rasterizer, fusion) so no figure pays it
    small = surface_gaussians(2000)
    to_mesh.run({"gaussians": small}, to_mesh.Params(resolution=32, views=4), _Job())
    print(f"splat.to_mesh, {args.resolution} voxels along the longest side, torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs; current: {params.views} views, image size "
          f"{params.image_size or 'auto'}; baseline {args.baseline}", flush=True)
    for n in args.n:
        g = surface_gaussians(n)
        print(f"{n:,} Gaussians (goal: {'<= 30 s' if n <= 100_000 else '<= 3 min' if n <= 1_000_000 else '-'}):",
              flush=True)
        report("current", n, timed_run(to_mesh, g, params))
        if baseline is not None:
            old = baseline.Params(resolution=args.resolution)
            report(f"{args.baseline}", n, timed_run(baseline, g, old))


if __name__ == "__main__":
    main()
