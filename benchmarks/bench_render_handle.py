"""Benchmark: redraws of 1M Gaussians (SH degree 3) re-sending them vs uploading once
(`splat.upload` + `gaussians_ref`), same run, same real loopback server, same small view.

The view is tiny (64x48) and the camera looks away from most Gaussians, so the figures are the
transfer and decode cost a viewport redraw pays, not rasterization.

Run: .venv/bin/python benchmarks/bench_render_handle.py [--n 1000000] [--frames 5]
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blender_support import LoopbackServer  # noqa: E402

from addon.core import render_client  # noqa: E402


def _gaussians(n: int) -> dict:
    rng = np.random.default_rng(0)
    return {"means": (rng.uniform(-1, 1, (n, 3)) + [0, 0, 10]).astype(np.float32),  # behind the camera
            "quats": rng.normal(size=(n, 4)).astype(np.float32),
            "scales": rng.uniform(-4.0, -3.0, (n, 3)).astype(np.float32),
            "opacities": rng.uniform(0, 3, n).astype(np.float32),
            "sh0": rng.normal(size=(n, 3)).astype(np.float32),
            "shN": rng.normal(size=(n, 15, 3)).astype(np.float32) * 0.1}


def _camera(i: int) -> dict:
    m = np.eye(4, dtype=np.float32)
    m[:3, 3] = (0.01 * i, 0.0, 4.0)
    return {"world_from_camera": m[None], "fx": 64.0, "fy": 64.0, "cx": 32.0, "cy": 24.0, "width": 64, "height": 48}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--frames", type=int, default=5)
    args = ap.parse_args()
    g = _gaussians(args.n)
    mb = sum(a.nbytes for a in g.values()) / 1e6
    server = LoopbackServer(Path(tempfile.mkdtemp(prefix="bench-handle-"))).start()
    try:
        settings = render_client.RenderSettings(endpoint=server.endpoint, silence_timeout_s=120.0)
        conn = render_client.Connection(settings, lambda: False)
        try:
            conn.handshake()
            conn.render(g, _camera(0))  # warm up kernels
            resend = []
            for i in range(args.frames):
                t = time.perf_counter()
                conn.render(g, _camera(i))
                resend.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = conn.upload(g)
            upload_s = time.perf_counter() - t
            by_ref = []
            for i in range(args.frames):
                t = time.perf_counter()
                conn.render(ref, _camera(i))
                by_ref.append(time.perf_counter() - t)
        finally:
            conn.close()
    finally:
        server.stop()
    print(f"{args.n:,} Gaussians ({mb:.0f} MB), 64x48 view, {args.frames} redraws each, median:")
    print(f"  re-sending the Gaussians per redraw  {statistics.median(resend) * 1000:8.1f} ms")
    print(f"  upload once                          {upload_s * 1000:8.1f} ms  (one time)")
    print(f"  redraw by gaussians_ref              {statistics.median(by_ref) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
