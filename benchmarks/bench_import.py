"""Benchmark: getting 1M Gaussians (SH degree 3) into Blender.

(a) ``create_gaussian_object`` from in-memory arrays vs the bare minimum Blender work on the
    same data in the same run (new mesh, ``vertices.add``, ``foreach_set`` of positions and of
    each attribute from ready float32 buffers). Goal: within 1.5x.
(b) a 1M-Gaussian PLY file from disk, end to end (``read_ply`` + ``create_gaussian_object``).
    Goal: under 1 s.

Run: ``.venv/bin/python benchmarks/bench_import.py [--n 1000000] [--repeat 3]``.
Prints the best of ``repeat`` runs for each figure (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def make_gaussians(n: int, k: int = 15, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "means": rng.standard_normal((n, 3), dtype=np.float32),
        "quats": rng.standard_normal((n, 4), dtype=np.float32),
        "scales": rng.standard_normal((n, 3), dtype=np.float32) - 3,
        "opacities": rng.standard_normal(n, dtype=np.float32),
        "sh0": rng.standard_normal((n, 3), dtype=np.float32),
        "shN": rng.standard_normal((n, k, 3), dtype=np.float32),
    }


def bare_foreach_set(bpy, n: int, buffers: list[tuple[str, str, str, np.ndarray]], positions: np.ndarray) -> None:
    """The floor: one mesh, sized once, every attribute created and filled from a ready buffer."""
    mesh = bpy.data.meshes.new("bare")
    mesh.vertices.add(n)
    mesh.vertices.foreach_set("co", positions)
    for name, btype, key, buf in buffers:
        mesh.attributes.new(name, btype, "POINT").data.foreach_set(key, buf)
    mesh.update()


def best(fn, repeat: int, reset) -> float:
    times = []
    for _ in range(repeat):
        reset()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import bpy

    from addon.core import gaussians_layout as layout
    from addon.core.formats import ply
    from addon.blender.importers.gaussians import create_gaussian_object

    def reset():
        bpy.ops.wm.read_homefile(app_template="")

    n = args.n
    g = make_gaussians(n)
    floats = 3 + 4 + 3 + 1 + 3 + 45
    print(f"N = {n:,} Gaussians, SH degree 3 ({floats} floats = {n * floats * 4 / 1e6:.0f} MB each)")

    # (a) in-memory arrays
    table = layout.gaussian_attributes(g)
    ready = [(name, btype, key, buf.copy()) for name, (btype, key, buf) in table.items()]
    positions = layout.position_buffer(g).copy()
    t_bare = best(lambda: bare_foreach_set(bpy, n, ready, positions), args.repeat, reset)
    t_create = best(lambda: create_gaussian_object("bench", g), args.repeat, reset)
    print(f"(a) bare foreach_set          {t_bare * 1e3:8.1f} ms")
    print(f"    create_gaussian_object    {t_create * 1e3:8.1f} ms   ratio {t_create / t_bare:.2f}x (goal <= 1.5x)")

    # (b) from a PLY on disk
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.ply")
        t0 = time.perf_counter()
        ply.write_ply(path, g)
        t_write = time.perf_counter() - t0
        size = os.path.getsize(path)
        ply.read_ply(path)  # warm the page cache: measure parsing, not the disk
        t_read = best(lambda: ply.read_ply(path), args.repeat, lambda: None)
        t_e2e = best(lambda: create_gaussian_object("bench", ply.read_ply(path)), args.repeat, reset)
    print(f"(b) write_ply                 {t_write * 1e3:8.1f} ms   ({size / 1e6:.0f} MB)")
    print(f"    read_ply                  {t_read * 1e3:8.1f} ms   ({size / 1e6 / t_read:.0f} MB/s)")
    print(f"    read_ply + create object  {t_e2e * 1e3:8.1f} ms   (goal < 1000 ms)")
    print(f"    end to end / bare foreach_set: {t_e2e / t_bare:.2f}x")

    # Display proxy: first evaluation, above the default point threshold (points).
    reset()
    obj = create_gaussian_object("bench", g)
    t0 = time.perf_counter()
    bpy.context.evaluated_depsgraph_get().update()
    obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    print(f"    proxy evaluation (points, N > threshold)  {(time.perf_counter() - t0) * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
