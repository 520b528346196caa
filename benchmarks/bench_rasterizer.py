"""Benchmark the torch rasterizer backend against the dense reference.

Run: `python benchmarks/bench_rasterizer.py [--quick] [--repeats R] [--threads T] [--dense-pairs P]`

Scene: Gaussians spread through the frustum of one camera at 2-6 m, with scales so that each
covers a few to tens of pixels at 128 px (as after training), the world scene fixed across
resolutions. Prints forward and forward+backward times of the torch backend (numba kernels)
and of the dense reference where H*W*N <= --dense-pairs (it is slow, not memory-bound), the ratios, and a
per-stage profile of the torch backend. Warm-up calls (numba compile) are excluded and the
first-call compile time is reported separately.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nskernels.camera import Cameras  # noqa: E402
from nskernels.rasterize import backend_status, rasterize  # noqa: E402
from nskernels.reference import rasterize_dense  # noqa: E402

# The dense reference does H*W*N work (memory is bounded by its pixel chunks); beyond this many
# pixel x Gaussian pairs one run takes minutes on 2 cores and is skipped.
DENSE_PAIRS_LIMIT = 4e8


def make_scene(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n Gaussians inside the frustum of `make_camera` (50 degree FoV, looking down -Z)."""
    g = torch.Generator().manual_seed(seed)
    depth = 2.0 + 4.0 * torch.rand(n, generator=g)
    half = math.tan(math.radians(25.0))
    x = (torch.rand(n, generator=g) * 2 - 1) * half * depth
    y = (torch.rand(n, generator=g) * 2 - 1) * half * depth
    # Blender camera at the origin looking down -Z: points in front have negative z.
    means = torch.stack([x, y, -depth], -1)
    # sigma of 0.5-4 px at 128 px (fx ~ 137 px): s = sigma_px * depth / fx, log-uniform.
    sigma_px = torch.exp(math.log(0.5) + (math.log(4.0) - math.log(0.5)) * torch.rand(n, 1, generator=g))
    scales = torch.log(sigma_px * depth[:, None] / 137.0) + 0.3 * torch.randn(n, 3, generator=g)
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=g),
        "scales": scales,
        "opacities": -2.0 + 6.0 * torch.rand(n, generator=g),
        "sh0": torch.randn(n, 3, generator=g),
        "shN": 0.2 * torch.randn(n, 15, 3, generator=g),
    }


def make_camera(size: int) -> Cameras:
    f = size / (2 * math.tan(math.radians(25.0)))
    return Cameras(
        world_from_camera=torch.eye(4)[None],
        fx=torch.tensor([f]), fy=torch.tensor([f]),
        cx=torch.tensor([size / 2]), cy=torch.tensor([size / 2]),
        width=size, height=size,
    )


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def fwd_bwd(render, scene, cam):
    params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    out = render(**params, cameras=cam)
    g = torch.Generator().manual_seed(1)
    loss = (out.rgb * torch.randn(out.rgb.shape, generator=g)).sum() + out.alpha.sum()
    loss.backward()


def fwd(render, scene, cam):
    with torch.no_grad():
        render(**scene, cameras=cam)


def profile_stages(scene, cam, repeats: int) -> dict[str, float]:
    """Median time of each stage of the torch backend (forward and backward)."""
    from nskernels._binning import bin_gaussians
    from nskernels._composite import composite
    from nskernels.projection import peak_inputs, project_gaussians
    from nskernels.sh import view_colours

    stages: dict[str, list[float]] = {}

    def tick(name, t0):
        stages.setdefault(name, []).append(time.perf_counter() - t0)
        return time.perf_counter()

    for _ in range(repeats):
        params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
        t = time.perf_counter()
        proj = project_gaussians(params["means"], params["quats"], params["scales"], params["opacities"], cam)
        peaks = peak_inputs(params["means"], params["quats"], params["scales"], cam)
        colours = view_colours(params["means"], params["sh0"], params["shN"], cam.centers(), 3)
        t = tick("projection + SH (fwd)", t)
        bins = bin_gaussians(proj.means2d, proj.depths, proj.extents, proj.visible, cam.width, cam.height)
        t = tick("binning + sort", t)
        # Leaf copies split the backward into the kernel part and the projection autograd part.
        leaves = [x.detach().requires_grad_(True) for x in (proj.means2d, proj.conics, colours, proj.opacities, proj.depths)]
        rgb, alpha, *_ = composite(*leaves, peaks, bins, cam.width, cam.height)
        t = tick("forward kernel", t)
        (rgb.sum() + alpha.sum()).backward()
        t = tick("backward kernel + index_add", t)
        torch.autograd.backward(
            [proj.means2d, proj.conics, colours, proj.opacities, proj.depths], [x.grad for x in leaves]
        )
        tick("projection + SH (autograd bwd)", t)
    stages["(intersections)"] = [float(bins.gaussian_ids.numel())]
    return {k: sorted(v)[len(v) // 2] for k, v in stages.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only 20k Gaussians at 128 px")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dense-pairs", type=float, default=DENSE_PAIRS_LIMIT,
                    help="largest H*W*N for which the dense reference is timed")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and numba threads (default: theirs). On a machine whose cores are "
                    "busy with other work, 1 avoids torch's threads waiting on each other")
    args = ap.parse_args()
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backends: {backend_status()}")

    # First call in a fresh process: numba compile into an empty cache, then a cache load.
    with tempfile.TemporaryDirectory() as cache:
        for label in ("compile (empty numba cache)", "load from numba cache"):
            print(f"first fwd+bwd call in a new process, {label}: {_first_call_seconds(cache):.2f} s")
    scene, cam = make_scene(2000), make_camera(64)
    fwd_bwd(rasterize, scene, cam)

    counts = [20_000] if args.quick else [5_000, 20_000, 100_000]
    sizes = [128] if args.quick else [128, 256, 512]
    rows = []
    for n in counts:
        scene = make_scene(n)
        for size in sizes:
            cam = make_camera(size)
            fwd_bwd(rasterize, scene, cam)  # warm-up
            t_f = timed(lambda: fwd(rasterize, scene, cam), args.repeats)
            t_fb = timed(lambda: fwd_bwd(rasterize, scene, cam), args.repeats)
            pairs = size * size * n
            if pairs <= args.dense_pairs:
                d_f = timed(lambda: fwd(rasterize_dense, scene, cam), 1)
                d_fb = timed(lambda: fwd_bwd(rasterize_dense, scene, cam), 1)
            else:
                d_f = d_fb = None
            rows.append((n, size, t_f, t_fb, d_f, d_fb, pairs))
            print(_row(rows[-1]), flush=True)

    print("\nN\tpx\ttorch fwd\ttorch f+b\tdense fwd\tdense f+b\tspeed-up fwd\tspeed-up f+b")
    for r in rows:
        print(_row(r))

    print("\nStage profile, torch backend (median s):")
    for n, size in ([(20_000, 128)] + ([] if args.quick else [(100_000, 512)])):
        prof = profile_stages(make_scene(n), make_camera(size), args.repeats)
        print(f"  N={n} {size}px: " + ", ".join(
            f"{k} {v:.0f}" if k.startswith("(") else f"{k} {v * 1e3:.1f} ms" for k, v in prof.items()))


def _first_call_seconds(numba_cache_dir: str) -> float:
    code = (
        "import time, bench_rasterizer as b\n"
        "scene, cam = b.make_scene(2000), b.make_camera(64)\n"
        "t0 = time.perf_counter(); b.fwd_bwd(b.rasterize, scene, cam)\n"
        "print(time.perf_counter() - t0)\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": numba_cache_dir}
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=here, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def _row(r) -> str:
    n, size, t_f, t_fb, d_f, d_fb, pairs = r
    if d_f is None:
        dense = f"skipped ({pairs:.1e} pairs > --dense-pairs)\t-\t-\t-"
    else:
        dense = f"{d_f:.3f} s\t{d_fb:.3f} s\t{d_f / t_f:.1f}x\t{d_fb / t_fb:.1f}x"
    return f"{n}\t{size}\t{t_f:.4f} s\t{t_fb:.4f} s\t{dense}"


if __name__ == "__main__":
    main()
