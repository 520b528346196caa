"""Protocol overhead: a ``system.echo`` round trip against a raw ZeroMQ echo of the same bytes.

Both sides move the same payload, 1M Gaussians at SH degree 3 as PROTOCOL.md lays them out
(means, quats, scales, opacities, sh0, shN [N, 15, 3]: 236 MB), over the same transport:

- protocol: ``submit`` (keep: false) to a real ``nstudio serve`` subprocess, until the
  ``result`` is decoded (server: decode + schema check + queue + worker + encode + send);
- raw: a DEALER sends the same frames to a bare ROUTER echo subprocess, which sends them back
  (``recv_multipart(copy=False)`` / ``send_multipart(copy=False)``), until they are back.

Prints the median round trip, the throughput (payload both ways / time) and the ratio.
Goal: protocol within 1.25x of raw.

    python benchmarks/bench_protocol.py [--gaussians 1000000] [--reps 5] [--transport tcp|ipc]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from addon.wire import protocol# noqa: E402

RAW_ECHO = textwrap.dedent("""
    import sys, zmq
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(sys.argv[1])
    while True:
        frames = router.recv_multipart(copy=False)
        if len(frames) == 2 and frames[1].bytes == b"stop":
            break
        router.send_multipart(frames, copy=False)
""")


def gaussians(n: int) -> dict:
    """Random Gaussians in the wire layout. [N, ...] float32 arrays, 236 bytes each."""
    rng = np.random.default_rng(0)
    shapes = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,),
              "sh0": (n, 3), "shN": (n, 15, 3)}
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}


def endpoint(transport: str, tmp: Path, name: str) -> str:
    if transport == "ipc":
        return f"ipc://{tmp / name}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def wait_for_pong(sock: zmq.Socket, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ping = protocol.make_header("ping")
        sock.send_multipart(protocol.encode(ping))
        while sock.poll(500):
            reply = protocol.decode(sock.recv_multipart())
            if reply.get("re") == ping["id"]:
                return
    raise SystemExit("the server did not answer ping")


def protocol_round_trip(sock: zmq.Socket, inputs: dict) -> float:
    started = time.perf_counter()
    request = protocol.make_header("submit", pipeline="system.echo", params={},
                                   inputs={"gaussians": inputs}, keep=False)
    sock.send_multipart(protocol.encode(request), copy=False)
    while True:
        message = protocol.decode(sock.recv_multipart(copy=False))
        if message["type"] == "result":
            break
        if message["type"] == "error":
            raise SystemExit(f"server error: {message}")
    elapsed = time.perf_counter() - started
    out = message["outputs"]["gaussians"]
    assert all(out[k].shape == v.shape for k, v in inputs.items())
    return elapsed


def raw_round_trip(sock: zmq.Socket, frames: list) -> float:
    started = time.perf_counter()
    sock.send_multipart(frames, copy=False)
    back = sock.recv_multipart(copy=False)
    elapsed = time.perf_counter() - started
    assert len(back) == len(frames)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--transport", choices=("tcp", "ipc"), default="tcp")
    args = parser.parse_args()

    inputs = gaussians(args.gaussians)
    payload = sum(a.nbytes for a in inputs.values())
    frames = protocol.encode(protocol.make_header("submit", pipeline="system.echo",
                                                  inputs={"gaussians": inputs}))
    print(f"payload: {args.gaussians} Gaussians, SH degree 3, {payload / 1e6:.0f} MB, "
          f"{len(frames)} frames, {args.transport}, {args.reps} repetitions (+1 warm-up)")

    context = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="nstudio-bench-") as tmp:
        tmp = Path(tmp)
        server_ep = endpoint(args.transport, tmp, "server")
        raw_ep = endpoint(args.transport, tmp, "raw")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        server = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--bind", server_ep, "--store",
             str(tmp / "store"), "--device", "cpu", "--log-level", "warning"], cwd=REPO, env=env)
        raw = subprocess.Popen([sys.executable, "-c", RAW_ECHO, raw_ep], cwd=REPO, env=env)
        try:
            client = context.socket(zmq.DEALER)
            client.connect(server_ep)
            wait_for_pong(client)
            raw_client = context.socket(zmq.DEALER)
            raw_client.connect(raw_ep)

            # Interleaved, so both see the same machine load.
            timings = {"protocol": [], "raw": []}
            for rep in range(args.reps + 1):
                p = protocol_round_trip(client, inputs)
                r = raw_round_trip(raw_client, frames)
                if rep:
                    timings["protocol"].append(p)
                    timings["raw"].append(r)
            raw_client.send_multipart([b"stop"])
        finally:
            server.terminate()
            server.wait(30)
            try:
                raw.wait(10)
            except subprocess.TimeoutExpired:
                raw.kill()
                raw.wait(10)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    for name in ("raw", "protocol"):
        spread = ", ".join(f"{t:.3f}" for t in timings[name])
        print(f"{name:>8}: median {medians[name]:.3f} s  {2 * payload / medians[name] / 1e9:.2f} "
              f"GB/s (both ways)  [{spread}]")
    ratio = medians["protocol"] / medians["raw"]
    print(f"   ratio: protocol / raw = {ratio:.2f}x (goal <= 1.25x)")


if __name__ == "__main__":
    main()
