"""The Ray executor: a split camera path on 2 actors vs 1, and the per-job overhead vs local.

Starts one local Ray in this process and three real ``nstudio serve`` subprocesses on it:
``local`` (the worker thread), ``ray-1`` (``--executor ray --ray-actors 1``) and ``ray-2``
(2 actors). Then:

- render: ``splat.render`` of a camera path (default 48 frames) on ray-1 and ray-2, interleaved,
  after a warm-up each (actors import torch and warm the rasterizer on their first job); prints
  median seconds and the speed-up. On this 2-core machine two CPU actors share two cores with
  the server and the client: expect well under 2x.
- echo: a tiny ``system.echo`` (keep: false), submit to ``result``, one job at a time,
  interleaved between local and ray-1; prints the median per job and the Ray executor's extra
  cost (goal <= 20 ms).

    python benchmarks/bench_ray.py [--frames 48] [--gaussians 5000] [--size 160x120]
                                   [--reps 3] [--echoes 100]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from addon.wire import protocol  # noqa: E402
from ray_support import local_ray, orbit_scene  # noqa: E402


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Server:
    def __init__(self, tmp: Path, name: str, *extra: str):
        self.endpoint = free_endpoint()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--bind", self.endpoint, "--store",
             str(tmp / name), "--device", "cpu", "--log-level", "warning", *extra],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))

    def connect(self, context: zmq.Context) -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        sock.connect(self.endpoint)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ping = protocol.make_header("ping")
            sock.send_multipart(protocol.encode(ping))
            while sock.poll(500):
                if protocol.decode(sock.recv_multipart()).get("re") == ping["id"]:
                    return sock
        raise SystemExit(f"the server at {self.endpoint} did not answer ping")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run_job(sock: zmq.Socket, pipeline: str, inputs: dict, params: dict | None = None) -> float:
    """Submit (keep: false) and wait for the result; returns seconds."""
    started = time.perf_counter()
    request = protocol.make_header("submit", pipeline=pipeline, params=params or {},
                                   inputs=inputs, keep=False)
    sock.send_multipart(protocol.encode(request), copy=False)
    while True:
        message = protocol.decode(sock.recv_multipart(copy=False))
        if message["type"] == "result":
            return time.perf_counter() - started
        if message["type"] == "error":
            raise SystemExit(f"server error: {message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--gaussians", type=int, default=5000)
    parser.add_argument("--size", default="160x120")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--echoes", type=int, default=100)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    inputs = orbit_scene(args.frames, args.gaussians, width, height)
    print(f"render: {args.frames} frames {width}x{height}, {args.gaussians} Gaussians SH 3; "
          f"{args.reps} repetitions (+1 warm-up) per server; echo: {args.echoes} jobs per "
          f"server; {os.cpu_count()} CPU cores")

    context = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="nstudio-bench-ray-") as tmp, local_ray() as address:
        tmp = Path(tmp)
        ray_flags = ("--executor", "ray", "--ray-address", address)
        servers = {"local": Server(tmp, "local"),
                   "ray-1": Server(tmp, "ray1", *ray_flags, "--ray-actors", "1"),
                   "ray-2": Server(tmp, "ray2", *ray_flags, "--ray-actors", "2")}
        try:
            socks = {name: server.connect(context) for name, server in servers.items()}
            render = {"ray-1": [], "ray-2": []}
            for rep in range(args.reps + 1):
                for name in render:
                    seconds = run_job(socks[name], "splat.render", inputs)
                    if rep:
                        render[name].append(seconds)
            echo = {"local": [], "ray-1": []}
            tiny = {"x": np.arange(4, dtype="<f4")}
            for rep in range(args.echoes + 5):
                for name in echo:
                    seconds = run_job(socks[name], "system.echo", tiny)
                    if rep >= 5:
                        echo[name].append(seconds)
        finally:
            for server in servers.values():
                server.stop()

    medians = {name: statistics.median(v) for name, v in render.items()}
    for name, values in render.items():
        print(f"render {name}: median {medians[name]:.2f} s "
              f"({args.frames / medians[name]:.1f} frames/s)  "
              f"[{', '.join(f'{v:.2f}' for v in values)}]")
    print(f"render speed-up 2 actors / 1 actor: {medians['ray-1'] / medians['ray-2']:.2f}x")
    echo_ms = {name: 1000 * statistics.median(v) for name, v in echo.items()}
    for name, value in echo_ms.items():
        print(f"echo {name}: median {value:.1f} ms per job "
              f"(p90 {1000 * np.percentile(echo[name], 90):.1f} ms)")
    print(f"echo overhead of the Ray executor: {echo_ms['ray-1'] - echo_ms['local']:+.1f} ms "
          "per job (goal <= 20 ms)")


if __name__ == "__main__":
    main()
