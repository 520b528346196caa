"""Benchmark `mesh.texture`'s projection bake on the CPU: rasterize, project, blend.

Run: `python benchmarks/bench_texture.py [--quick] [--views 8] [--size 512] [--texture 2048]
[--triangles 100000] [--threads T]`

Scene: a UV sphere of ~100k triangles (latitude-longitude UVs) seen by 8 cameras around it at
512x512, baked into a 2048x2048 texture (issue 13's target: <= 10 s on this CPU). The views
are flat grey (their content does not change the work). Prints the split:
- rasterize: the UV layout (every texel's surface point) and each view's depth/UV/triangle ids;
- project: each view's visibility test, bilinear colour and weights for every texel;
- blend: accumulation, normalisation, island padding and sRGB encoding;
and the whole `run()` of the pipeline. Baseline measured in the same run: the dense twin
(`nskernels.reference.rasterize_mesh_dense`, every pixel x every triangle) against the chunked
rasterizer on a scene small enough for it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from addon.core import capture_layout  # noqa: E402
from mesh_scenes import RecordingJob, uv_sphere  # noqa: E402
from nskernels.camera import Cameras  # noqa: E402
from nskernels.mesh_raster import rasterize_mesh  # noqa: E402
from nskernels.reference import rasterize_mesh_dense  # noqa: E402
from pipelines.mesh import bake, texture  # noqa: E402


def _sphere(triangles: int):
    n = max(4, int(round((triangles / 2) ** 0.5)))
    return uv_sphere(n, n)


def bench_split(V, F, U, cams: dict, size: int, texture_size: int) -> dict:
    """Times of the bake's stages, done as `pipelines.mesh.texture.run` does them."""
    Vt, Ft, Ut = torch.tensor(V), torch.tensor(F).long(), torch.tensor(U)
    cameras = Cameras.from_wire(cams)
    image = torch.full((size, size, 3), 0.2)
    settings = bake.BakeSettings()
    t = {"rasterize": 0.0, "project": 0.0, "blend": 0.0}
    with torch.no_grad():
        t0 = time.perf_counter()
        texels = bake.uv_texels(Vt, Ft, Ut, texture_size)
        t["rasterize"] += time.perf_counter() - t0
        acc = bake.Accumulator.zeros(texels)
        for i in range(len(cameras)):
            t0 = time.perf_counter()
            frags = bake.view_fragments(Vt, Ft, cameras[i], Ut)
            t1 = time.perf_counter()
            ids, colour, weight = bake.project_view(texels, cameras[i], frags, image, settings)
            t2 = time.perf_counter()
            bake.accumulate(acc, ids, colour, weight)
            t3 = time.perf_counter()
            t["rasterize"] += t1 - t0
            t["project"] += t2 - t1
            t["blend"] += t3 - t2
        t0 = time.perf_counter()
        rgb, seen = bake.resolve(texels, acc, settings.padding)
        texture.linear_to_srgb8(rgb.numpy())
        t["blend"] += time.perf_counter() - t0
    t["seen"] = float(seen.float().mean())
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--texture", type=int, default=2048)
    ap.add_argument("--triangles", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.texture, args.triangles = 128, 256, 5000
    if args.threads:
        torch.set_num_threads(args.threads)
    V, F, U = _sphere(args.triangles)
    cams = capture_layout.capture_cameras([-1] * 3, [1] * 3, layout="sphere", count=args.views,
                                        width=args.size, height=args.size, lens_mm=40.0)
    print(f"mesh.texture bake: {len(F)} triangles, {args.views} views {args.size}x{args.size} -> "
          f"{args.texture}x{args.texture}, torch threads {torch.get_num_threads()}")

    bench_split(V, F, U, cams, args.size, 64)  # warm-up (allocator, first-call costs)
    cpu0 = time.process_time()
    t = bench_split(V, F, U, cams, args.size, args.texture)
    cpu = time.process_time() - cpu0
    total = t["rasterize"] + t["project"] + t["blend"]
    print(f"  rasterize {t['rasterize']:.2f} s | project {t['project']:.2f} s | blend {t['blend']:.2f} s"
          f" | total {total:.2f} s ({100 * t['seen']:.0f} % of texels seen)")
    # On a shared machine wall time depends on the other processes; CPU time much less so.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  process CPU time of the split: {cpu:.2f} s (load average {load:.1f} on {os.cpu_count()} cores)")

    images = np.full((args.views, args.size, args.size, 3), 128, np.uint8)
    t0 = time.perf_counter()
    texture.run({"mesh": {"vertices": V, "faces": F, "uvs": U}, "cameras": cams, "images": images},
                texture.Params(texture_size=args.texture), RecordingJob())
    print(f"  pipeline run() end to end (sRGB decode, progress, encode): {time.perf_counter() - t0:.2f} s")

    # Baseline in the same run: the dense twin on a scene it can afford.
    Vs, Fs, _ = _sphere(2000)
    small = Cameras.from_wire(capture_layout.capture_cameras([-1] * 3, [1] * 3, layout="ring", count=1,
                                                           width=96, height=96, lens_mm=40.0))
    Vt, Ft = torch.tensor(Vs), torch.tensor(Fs).long()
    t0 = time.perf_counter()
    fast = rasterize_mesh(Vt, Ft, small)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    tri, _ = rasterize_mesh_dense(Vt, Ft, small)
    t_dense = time.perf_counter() - t0
    agree = float((fast.triangle == tri).float().mean())
    print(f"  baseline: {len(Fs)} triangles at 96x96: chunked {1e3 * t_fast:.1f} ms vs dense twin "
          f"{1e3 * t_dense:.1f} ms ({t_dense / max(t_fast, 1e-9):.0f}x), triangle ids agree on "
          f"{100 * agree:.2f} % of pixels")


if __name__ == "__main__":
    main()
