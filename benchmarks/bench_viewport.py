"""Benchmark: the viewport worker against the synchronous render, on a real CPU server.

Prints, for one scene and view size: the main thread's cost of asking for a frame (submit) and of
reading the last one (latest), next to what a synchronous render would block it for; and the
frame time through the worker's persistent connection vs a new connection per frame (F12's path).

Run: .venv/bin/python benchmarks/bench_viewport.py [--n 20000] [--size 320x240] [--frames 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from blender_support import LoopbackServer  # noqa: E402

from addon.core import camera, render_client, viewport  # noqa: E402


def _gaussians(n: int) -> dict:
    rng = np.random.default_rng(0)
    return {"means": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
            "quats": rng.normal(size=(n, 4)).astype(np.float32),
            "scales": rng.uniform(-4.0, -3.0, (n, 3)).astype(np.float32),
            "opacities": rng.uniform(0, 3, n).astype(np.float32),
            "sh0": rng.normal(size=(n, 3)).astype(np.float32),
            "shN": np.zeros((n, 0, 3), np.float32)}


def _camera(i: int, width: int, height: int) -> camera.ViewCamera:
    world_from_camera = np.eye(4)
    world_from_camera[:3, 3] = (0.01 * i, 0.0, 4.0)
    return camera.ViewCamera(world_from_camera, width, width, width / 2, height / 2, width, height, 0.1, 100.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--frames", type=int, default=10)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    g = _gaussians(args.n)
    server = LoopbackServer(Path(tempfile.mkdtemp(prefix="bench-viewport-"))).start()
    try:
        settings = render_client.RenderSettings(endpoint=server.endpoint)
        render_client.render(g, _camera(0, width, height).cameras_map(), settings=settings)  # warm up kernels

        sync = []
        for i in range(args.frames):
            t = time.perf_counter()
            render_client.render(g, _camera(i, width, height).cameras_map(), settings=settings)
            sync.append(time.perf_counter() - t)

        renderer = viewport.ViewportRenderer(settings)
        submit, latest, frames = [], [], []
        try:
            for i in range(args.frames):
                t = time.perf_counter()
                seq = renderer.submit(g, _camera(i, width, height))
                submit.append(time.perf_counter() - t)
                t = time.perf_counter()
                renderer.wait_frame(seq, 120)
                frames.append(time.perf_counter() - t)
                t = time.perf_counter()
                renderer.latest()
                latest.append(time.perf_counter() - t)
        finally:
            renderer.stop(10)
    finally:
        server.stop()

    med = statistics.median
    print(f"{args.n:,} Gaussians, {width} x {height}, {args.frames} frames, CPU server on loopback")
    print(f"  synchronous render (new connection each): {med(sync) * 1e3:9.2f} ms/frame (main thread blocked)")
    print(f"  viewport worker (persistent connection):  {med(frames) * 1e3:9.2f} ms/frame "
          f"(ratio to synchronous {med(frames) / med(sync):.2f})")
    print(f"  main thread, submit():                    {med(submit) * 1e6:9.1f} us "
          f"({med(sync) / med(submit):,.0f}x less than a blocking render)")
    print(f"  main thread, latest():                    {med(latest) * 1e6:9.1f} us")


if __name__ == "__main__":
    main()
