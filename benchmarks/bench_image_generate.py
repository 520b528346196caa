"""``image.generate`` through the server vs a direct in-process diffusers call; warm vs cold.

Same model, prompt, seed, steps and size, same run. By default a tiny random-weight SD 1.x
model is built (tests/image_models.py) with the real models' VAE factor, 8, so that 512x512 is
64x64 latents as in SD 1.5 and the figure is the server's own overhead (registry, queue,
progress events with previews, the wire) on top of a generation of the real proportions;
``--model FOLDER`` measures a real diffusers folder instead (e.g. SDXL on a GPU with
``--device cuda --sizes 1024 --steps 30``).

    .venv/bin/python benchmarks/bench_image_generate.py [--sizes 512 96] [--steps 20] [--repeat 5]

Each repeat runs the three ways back to back in a rotating order (direct, server, run() in this
process), so that a shared machine's changing load falls on all three alike. Reported per size:
seconds per image as the median of the repeats (server: submit to result received, images
transferred and decoded), the server's ratio to direct (goal <= 1.05 at 512x512, 20 steps), the
same ratio in CPU seconds (this process + the server process: less sensitive than wall time
to other processes' load), and the server's first request (cold: model load included) vs a warm
one.
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
PROMPT = "a red cube"   # within the tiny tokenizer's 16 tokens


def _to_uint8(images):
    import numpy as np

    return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)


class Direct:
    """A plain diffusers pipeline in this process: the baseline."""

    def __init__(self, folder: Path, device: str):
        import torch
        from diffusers import DiffusionPipeline

        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        started = time.perf_counter()
        self.pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype,
                                                      local_files_only=True).to(device)
        self.load_s = time.perf_counter() - started
        self.pipe.set_progress_bar_config(disable=True)
        self.device = device

    def __call__(self, params: dict):
        import torch

        out = self.pipe(prompt=params["prompt"], num_inference_steps=params["steps"],
                        guidance_scale=7.0, height=params["height"], width=params["width"],
                        generator=[torch.Generator().manual_seed(params["seed"])],
                        output_type="np").images
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return _to_uint8(out)


class InProcess:
    """``image.generate``'s run() in this process (registry, previews, no wire): tells the
    pipeline's own overhead apart from the server's."""

    class Job:
        id = "bench"

        def __init__(self, device: str):
            self.device = device

        def progress(self, *args, **kwargs):
            pass

        def partial(self, outputs):
            pass

        def check_cancel(self):
            pass

    def __init__(self, folder: Path, device: str, tmp: Path):
        from pipelines.image import generate
        from server.models import ModelRegistry

        self.generate = generate
        self.registry = ModelRegistry(tmp / "bench-models", device=device)
        self.folder, self.device = folder, device

    def __call__(self, params: dict):
        from addon.wire.schema import parse_params

        parsed = parse_params(self.generate.Params, dict(params, model=str(self.folder)))
        models = self.registry.acquire(self.generate.PIPELINE, parsed)
        try:
            return self.generate.run({}, parsed, self.Job(self.device), models)["images"]
        finally:
            models.close()


class Server:
    """A real server process on loopback, the model added by name as a user does."""

    def __init__(self, folder: Path, device: str, tmp: Path):
        import zmq
        from server_harness import Client, ServerProcess

        models_dir = tmp / "models"
        subprocess.run([sys.executable, "-m", "server", "models", "add", "bench-model",
                        str(folder), "--models-dir", str(models_dir)], cwd=REPO, check=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True)
        self.context = zmq.Context()
        self.server = ServerProcess(tmp, "--models-dir", str(models_dir), "--device", device,
                                    "--log-level", "info").start(self.context)
        self.client = Client(self.context, self.server.endpoint)

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.server.proc.pid).cpu_times()
        return times.user + times.system

    def __call__(self, params: dict):
        accepted = self.client.submit("image.generate", params=dict(params, model="bench-model"))
        events = self.client.events(accepted["job"], timeout=3600)
        if events[-1]["type"] != "result":
            raise SystemExit(f"server failed: {events[-1]}")
        return events[-1]["outputs"]["images"]

    def close(self):
        self.client.close()
        self.server.stop()
        self.context.destroy(linger=0)


def measure(ways: dict, params: dict, repeat: int, server: Server) -> dict:
    """{name: ([wall seconds], [cpu seconds])} over ``repeat`` rotating rounds, after one
    warm-up call each; checks that every way made the same image."""
    import numpy as np

    reference = None
    for name, call in ways.items():   # warm-up: kernels, allocators, the from_pipe caches
        images = call(params)
        reference = images if reference is None else reference
        if not np.array_equal(images, reference):
            raise SystemExit(f"{name} made another image than the direct call")
    names = list(ways)
    times = {name: ([], []) for name in names}
    for round_ in range(repeat):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            cpu0, server0 = time.process_time(), server.cpu_s()
            started = time.perf_counter()
            ways[name](params)
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu0 + (server.cpu_s() - server0)
            times[name][0].append(wall)
            times[name][1].append(cpu)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a diffusers folder (default: a tiny random SD 1.x built here)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 96],
                        help="width = height in pixels, one row each (the first is the goal's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5, help="rounds measured per size")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    rows, cold = [], None
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        tmp = Path(tmp)
        folder = args.model
        if folder is None:
            import image_models

            folder = image_models.build_sd(tmp / "tiny", vae_levels=4)
        server = Server(folder, args.device, tmp)
        try:
            first = {"prompt": PROMPT, "steps": args.steps, "seed": 7,
                     "width": args.sizes[0], "height": args.sizes[0]}
            # Cold first, before this process reads the same files: model load included.
            started = time.perf_counter()
            server(first)
            cold = time.perf_counter() - started
            direct = Direct(folder, args.device)
            ways = {"direct": direct, "server": server,
                    "run()": InProcess(folder, args.device, tmp)}
            for size in args.sizes:
                params = dict(first, width=size, height=size)
                rows.append((size, measure(ways, params, args.repeat, server)))
        finally:
            server.close()

    model = "tiny random SD 1.x (VAE factor 8)" if args.model is None else args.model
    print(f"image.generate, {args.steps} steps, device {args.device}, model {model}; "
          f"median of {args.repeat} rounds (rotating order), seconds per image")
    print(f"{'size':>9} | {'direct':>7} | {'server':>7} | {'ratio':>6} | "
          f"{'per round: median [min, max]':>28} | {'run()':>7} | {'ratio':>6} | "
          f"{'CPU ratio':>9}")
    for size, times in rows:
        direct_s, server_s, inproc_s = (statistics.median(times[n][0])
                                        for n in ("direct", "server", "run()"))
        # Each round's server/direct pair ran back to back: their ratio shows the spread.
        paired = [s / d for s, d in zip(times["server"][0], times["direct"][0])]
        cpu_ratio = statistics.median(times["server"][1]) / statistics.median(times["direct"][1])
        print(f"{size:>4}x{size:<4} | {direct_s:7.3f} | {server_s:7.3f} | "
              f"{server_s / direct_s:5.3f}x | {statistics.median(paired):11.3f}x "
              f"[{min(paired):.3f}, {max(paired):.3f}] | {inproc_s:7.3f} | "
              f"{inproc_s / direct_s:5.3f}x | {cpu_ratio:8.3f}x")
    print("(CPU ratio: CPU seconds of this process and the server's, server way / direct way;"
          " it moves less than wall time with other processes' load)")
    size, times = rows[0]
    direct_s, server_s = (statistics.median(times[n][0]) for n in ("direct", "server"))
    ratio = server_s / direct_s
    print(f"goal at {size}x{size}: server <= {GOAL_RATIO}x direct: "
          f"{ratio:.3f}x, {'met' if ratio <= GOAL_RATIO else 'NOT met'}")
    print(f"server cold (first request, model load included) {cold:.3f} s vs warm "
          f"{server_s:.3f} s ({cold / server_s:.1f}x); direct pipeline load {direct.load_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
