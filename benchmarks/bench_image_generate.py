"""``image.generate`` through the server vs a direct in-process diffusers call; warm vs cold.

Same model, same prompt, seed, steps and size, same run. By default a tiny random-weight SD 1.x
model is built (tests/image_models.py) so the figure is the server's own overhead
(registry, queue, progress events with previews, the wire); ``--model FOLDER`` measures a real
diffusers folder instead (e.g. SDXL on a GPU with ``--device cuda``).

    .venv/bin/python benchmarks/bench_image_generate.py [--size 256] [--steps 20] [--repeat 3]

Reported: seconds per request, direct (warm, median) vs server (warm, median, submit to
result received, including the transfer of the images), their ratio (goal <= 1.05), and the
server's first (cold: model load included) vs second request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # image_models, server_harness

GOAL_RATIO = 1.05


def direct_seconds(folder: Path, device: str, params: dict, repeat: int) -> tuple[list, float]:
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    started = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype,
                                             local_files_only=True).to(device)
    load_s = time.perf_counter() - started
    pipe.set_progress_bar_config(disable=True)
    times = []
    for _ in range(repeat + 1):   # the first call warms up kernels and allocators
        started = time.perf_counter()
        out = pipe(prompt=params["prompt"], num_inference_steps=params["steps"],
                   guidance_scale=7.0, height=params["height"], width=params["width"],
                   generator=[torch.Generator().manual_seed(params["seed"])],
                   output_type="np").images
        np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times[1:], load_s


def pipeline_seconds(folder: Path, device: str, params: dict, repeat: int) -> list:
    """``image.generate``'s run() in this process (registry, previews, no wire): tells the
    pipeline's own overhead apart from the server's."""
    from addon.wire.schema import parse_params
    from pipelines.image import generate
    from server.models import ModelRegistry

    class Job:
        id = "bench"

        def progress(self, *args, **kwargs):
            pass

        def partial(self, outputs):
            pass

        def check_cancel(self):
            pass

    registry = ModelRegistry(folder.parent / "bench-models", device=device)
    parsed = parse_params(generate.Params, dict(params, model=str(folder)))
    times = []
    for _ in range(repeat + 1):
        models = registry.acquire(generate.PIPELINE, parsed)
        started = time.perf_counter()
        job = Job()
        job.device = device
        generate.run({}, parsed, job, models)
        times.append(time.perf_counter() - started)
        models.close()
    return times[1:]


def server_seconds(folder: Path, device: str, params: dict, repeat: int, tmp: Path):
    import zmq
    from server_harness import Client, ServerProcess

    models_dir = tmp / "models"
    subprocess.run([sys.executable, "-m", "server", "models", "add", "bench-model",
                    str(folder), "--models-dir", str(models_dir)], cwd=REPO, check=True,
                   env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True)
    context = zmq.Context()
    server = ServerProcess(tmp, "--models-dir", str(models_dir), "--device", device,
                           "--log-level", "info").start(context)
    client = Client(context, server.endpoint)
    try:
        times = []
        for _ in range(repeat + 1):
            started = time.perf_counter()
            accepted = client.submit("image.generate", params=dict(params, model="bench-model"))
            events = client.events(accepted["job"], timeout=3600)
            times.append(time.perf_counter() - started)
            if events[-1]["type"] != "result":
                raise SystemExit(f"server failed: {events[-1]}")
        return times[0], times[1:]
    finally:
        client.close()
        server.stop()
        context.destroy(linger=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a diffusers folder (default: a tiny random SD 1.x built here)")
    parser.add_argument("--size", type=int, default=256, help="width = height in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="warm requests measured")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    params = {"prompt": "a red cube on a wooden table", "steps": args.steps, "seed": 7,
              "width": args.size, "height": args.size}
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        tmp = Path(tmp)
        folder = args.model
        if folder is None:
            import image_models

            folder = image_models.build_sd(tmp / "tiny")
        # Server first: its cold request must not find files the direct call already paged in.
        cold, warm = server_seconds(folder, args.device, params, args.repeat, tmp)
        direct, load_s = direct_seconds(folder, args.device, params, args.repeat)
        in_process = pipeline_seconds(folder, args.device, params, args.repeat)

    direct_s, server_s = statistics.median(direct), statistics.median(warm)
    ratio = server_s / direct_s
    print(f"image.generate {args.size}x{args.size}, {args.steps} steps, device {args.device}, "
          f"model {'tiny random SD 1.x' if args.model is None else args.model}")
    print(f"  direct diffusers call (warm, median of {args.repeat}): {direct_s:.3f} s "
          f"(load {load_s:.2f} s)")
    pipeline_s = statistics.median(in_process)
    print(f"  pipeline run() in process (warm, median of {args.repeat}): {pipeline_s:.3f} s "
          f"-> {pipeline_s / direct_s:.3f}x direct")
    print(f"  through the server (warm, median of {args.repeat}):  {server_s:.3f} s "
          f"-> {ratio:.3f}x direct (goal <= {GOAL_RATIO}x): "
          f"{'met' if ratio <= GOAL_RATIO else 'NOT met'}")
    print(f"  server cold (first request, model load included): {cold:.3f} s; "
          f"warm: {server_s:.3f} s ({cold / server_s:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
