"""A local Ray for tests of the Ray executor: one per test module (Ray takes seconds to start).

The servers under test join it with ``--ray-address``; their actors are Ray worker processes
started by this Ray's raylet, which inherit its environment (so ``PYTHONPATH`` must name the
repository before it starts). Imports nothing of ours (the conformance tests use it too).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "neural-studio"     # server/ray_executor.py NAMESPACE, repeated on purpose


@contextlib.contextmanager
def local_ray(num_cpus: int = 4):
    """Start a local Ray (no dashboard, no usage reports); yields its address."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(REPO) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, paths)])
    import ray

    # num_cpus is Ray's bookkeeping (one per CPU actor), not a claim on this machine's cores.
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             namespace=NAMESPACE)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def actor_running(job: str, timeout: float = 10.0):
    """The handle of the Neural Studio actor now running ``job`` (or None)."""
    import ray

    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") != NAMESPACE:
            continue
        try:
            actor = ray.get_actor(entry["name"], namespace=NAMESPACE)
            if job in ray.get(actor.info.remote(), timeout=timeout)["running"]:
                return actor
        except Exception:  # a dead actor of an earlier server
            continue
    return None


def orbit_scene(frames: int, n: int, width: int, height: int) -> dict:
    """``n`` random Gaussians and a camera path of ``frames`` circling them."""
    rng = np.random.default_rng(0)
    gaussians = {
        "means": rng.normal(0, 0.6, (n, 3)).astype("<f4"),
        "quats": rng.normal(0, 1, (n, 4)).astype("<f4"),
        "scales": np.log(rng.uniform(0.01, 0.06, (n, 3))).astype("<f4"),
        "opacities": rng.normal(0, 1.5, n).astype("<f4"),
        "sh0": rng.normal(0, 1, (n, 3)).astype("<f4"),
        "shN": rng.normal(0, 0.2, (n, 15, 3)).astype("<f4"),
    }
    matrices = []
    for i in range(frames):
        angle = 2 * math.pi * i / frames
        position = np.array([4 * math.cos(angle), 4 * math.sin(angle), 1.0])
        forward = -position / np.linalg.norm(position)
        right = np.cross(forward, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        matrix = np.eye(4)
        matrix[:3, 0], matrix[:3, 1] = right, np.cross(right, forward)
        matrix[:3, 2], matrix[:3, 3] = -forward, position
        matrices.append(matrix)
    focal = 0.8 * width
    cameras = {"world_from_camera": np.array(matrices, "<f4"), "fx": focal, "fy": focal,
               "cx": width / 2, "cy": height / 2, "width": width, "height": height}
    return {"gaussians": gaussians, "cameras": cameras}
