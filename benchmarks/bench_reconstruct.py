"""Benchmark: splat.reconstruct on CPU on a procedurally textured scene rendered by Blender Cycles.

The scene (built here, no downloaded assets): a ground patch with a checker texture, a cube with
a brick texture, a sphere with a noise texture, a cylinder with a wave texture and a torus with a
magic texture, lit by a sun and a grey world. `addon.blender.capture` renders it from a hemisphere of
views (Cycles, transparent film) and samples initial points on the surfaces coloured from the
renders; `splat.reconstruct`'s run() trains in-process with a recording Job; every
`test_every`-th view is held out and the metrics are on those views (linear colour, as captured).

Goal on the 2-core development CPU: held-out PSNR >= 27 dB at 128x128 in under 5 minutes.
Figures printed: capture time, initial and final PSNR (the initial one is the baseline measured
in the same run), SSIM, Gaussian count, seconds, steps per second.

Usage:
    python benchmarks/bench_reconstruct.py [--views 56] [--size 128] [--steps 3000]
        [--samples 64] [--threads 0] [--cache /tmp/nstudio-bench-scene.npz]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_scene():
    """Procedural textured objects on a ground patch (Cycles materials, world and sun light)."""
    import bpy

    bpy.ops.wm.read_homefile(app_template="")
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)

    def material(name, kind, colors, scale, **extra):
        mat = bpy.data.materials.new(name)  # Blender 5: born with a Principled BSDF node tree
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        bsdf = nodes.get("Principled BSDF")
        tex = nodes.new(kind)
        tex.inputs["Scale"].default_value = scale
        for key, value in extra.items():
            tex.inputs[key].default_value = value
        if "Color1" in tex.inputs:
            tex.inputs["Color1"].default_value = (*colors[0], 1.0)
            tex.inputs["Color2"].default_value = (*colors[1], 1.0)
            links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
        else:
            ramp = nodes.new("ShaderNodeValToRGB")
            ramp.color_ramp.elements[0].color = (*colors[0], 1.0)
            ramp.color_ramp.elements[1].color = (*colors[1], 1.0)
            links.new(tex.outputs["Fac"], ramp.inputs["Fac"])
            links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
        bsdf.inputs["Roughness"].default_value = 0.8
        return mat

    objects = []

    def add(op, mat, **kw):
        op(**kw)
        obj = bpy.context.active_object
        obj.data.materials.append(mat)
        objects.append(obj)
        return obj

    add(bpy.ops.mesh.primitive_plane_add,
        material("ground", "ShaderNodeTexChecker", ((0.8, 0.8, 0.75), (0.15, 0.2, 0.3)), 6.0),
        size=4.0, location=(0, 0, 0))
    add(bpy.ops.mesh.primitive_cube_add,
        material("brick", "ShaderNodeTexBrick", ((0.7, 0.25, 0.1), (0.45, 0.15, 0.08)), 4.0),
        size=0.9, location=(-0.7, -0.5, 0.45), rotation=(0, 0, 0.5))
    add(bpy.ops.mesh.primitive_uv_sphere_add,
        material("noise", "ShaderNodeTexNoise", ((0.1, 0.5, 0.2), (0.9, 0.9, 0.3)), 5.0),
        radius=0.5, location=(0.7, -0.4, 0.5), segments=48, ring_count=24)
    add(bpy.ops.mesh.primitive_cylinder_add,
        material("wave", "ShaderNodeTexWave", ((0.2, 0.3, 0.8), (0.9, 0.9, 0.95)), 3.0),
        radius=0.3, depth=1.0, location=(0.3, 0.8, 0.5), vertices=48)
    add(bpy.ops.mesh.primitive_torus_add,
        material("checker", "ShaderNodeTexChecker", ((0.9, 0.6, 0.1), (0.1, 0.1, 0.1)), 8.0),
        major_radius=0.4, minor_radius=0.12, location=(-0.6, 0.7, 0.12))
    for obj in objects[1:]:
        bpy.ops.object.select_all(action="DESELECT")
        obj.select_set(True)
        bpy.context.view_layer.objects.active = obj
        bpy.ops.object.shade_smooth()

    sun = bpy.data.lights.new("sun", "SUN")
    sun.energy = 3.0
    sun_obj = bpy.data.objects.new("sun", sun)
    sun_obj.rotation_euler = (math.radians(40), math.radians(15), math.radians(30))
    bpy.context.scene.collection.objects.link(sun_obj)
    # Blender 5: worlds, like materials, always have a node tree with a Background node.
    world = bpy.data.worlds.new("grey") if bpy.context.scene.world is None else bpy.context.scene.world
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.3, 0.3, 0.32, 1.0)
    bpy.context.scene.world = world
    return objects


def capture_scene(views: int, size: int, samples: int, points: int) -> dict:
    from addon.blender.capture import CaptureOptions, capture

    objects = build_scene()
    opts = CaptureOptions(layout="hemisphere", count=views, width=size, height=size, engine="CYCLES",
                          samples=samples, denoise=True, points=points, seed=0, lens_mm=40.0, margin=1.0)
    return capture(objects, opts)


class BenchJob:
    """In-process Job: keeps the progress log, counts partials, never cancels."""

    id = "bench"

    def __init__(self, device="cpu"):
        self.device = device
        self.log = []
        self.partials = 0
        self.t0 = time.monotonic()

    def progress(self, stage, step, total, message="", preview=None):
        self.log.append((time.monotonic() - self.t0, stage, step, total, message))
        if stage == "train" and (step % 500 == 0 or step == 1):
            print(f"  [{time.monotonic() - self.t0:6.1f} s] step {step}/{total}: {message}", flush=True)

    def partial(self, outputs):
        self.partials += 1

    def check_cancel(self):
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=56)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--points", type=int, default=30000)
    ap.add_argument("--steps", type=int, default=None, help="default: the pipeline's default")
    ap.add_argument("--test-every", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    ap.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "nstudio-bench-scene.npz"),
                    help="captured scene cache (recaptured when missing or '' )")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a splat.reconstruct param, e.g. --set max_gaussians=80000")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    # 1. Capture (or load the cached capture of the same settings)
    key = f"{args.views}-{args.size}-{args.samples}-{args.points}"
    data = None
    if args.cache and os.path.exists(args.cache):
        npz = np.load(args.cache, allow_pickle=False)
        if str(npz["key"]) == key:
            data = {k: npz[k] for k in npz.files}
            print(f"capture: loaded {args.cache} ({key})")
    if data is None:
        t = time.monotonic()
        cap = capture_scene(args.views, args.size, args.samples, args.points)
        cams = cap["cameras"]
        data = {"images": cap["images"], "points": cap["points"], "colors": cap["colors"], "key": np.array(key),
                **{f"cam_{k}": np.asarray(v) for k, v in cams.items()}}
        print(f"capture: {args.views} views {args.size}x{args.size}, Cycles {args.samples} samples, "
              f"{len(cap['points'])} points in {time.monotonic() - t:.1f} s")
        if args.cache:
            np.savez(args.cache, **data)
    cameras = {k[4:]: (data[k].item() if data[k].ndim == 0 else data[k]) for k in data if k.startswith("cam_")}
    cameras["width"], cameras["height"] = int(cameras["width"]), int(cameras["height"])
    inputs = {"images": data["images"].astype(np.float32), "cameras": cameras,
              "points": data["points"].astype(np.float32), "colors": data["colors"].astype(np.float32)}

    # 2. Reconstruct in-process on the CPU
    import torch

    from pipelines.splat import reconstruct

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {}
    types = {f.name: f.type for f in reconstruct.Params.__dataclass_fields__.values()}
    for item in args.set:
        name, value = item.split("=", 1)
        overrides[name] = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true")}.get(
            str(types[name]), float)(value)
    if args.steps is not None:
        overrides["steps"] = args.steps
    params = reconstruct.Params(test_every=args.test_every, **overrides)
    job = BenchJob()
    print(f"reconstruct: {params.steps} steps, torch threads {torch.get_num_threads()}, overrides {overrides}")
    out = reconstruct.run(inputs, params, job)
    m = out["metrics"]
    train = [e for e in job.log if e[1] == "train"]
    first = float(re.search(r"psnr ([-\d.]+)", train[0][4]).group(1))
    train_s = train[-1][0] - train[0][0]

    # 3. Stricter figures from the held-out renders: only covered pixels, and in sRGB
    from addon.core.capture_layout import holdout_split
    from addon.core.colour import linear_to_srgb
    from pipelines.splat import render

    _, test = holdout_split(len(inputs["images"]), args.test_every)
    test_cams = {**cameras, "world_from_camera": cameras["world_from_camera"][test]}
    frames = render.run({"gaussians": out["gaussians"], "cameras": test_cams}, render.Params(), BenchJob())
    gt = inputs["images"][test]
    gt_rgb = gt[..., :3] * gt[..., 3:]  # composited over black, as the metrics are
    covered = gt[..., 3] > 0.5

    def _psnr(a, b):
        return 10 * math.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12))

    psnr_cov = _psnr(frames["rgb"][covered], gt_rgb[covered])
    psnr_srgb = _psnr(linear_to_srgb(frames["rgb"]), linear_to_srgb(gt_rgb))

    # 4. Figures
    print("\nresults (held-out views, linear colour):")
    print(f"  initial training PSNR (baseline) {first:7.2f} dB")
    print(f"  held-out PSNR                    {m['psnr']:7.2f} dB   (goal >= 27)")
    print(f"  held-out PSNR, covered pixels    {psnr_cov:7.2f} dB   ({covered.mean() * 100:.0f} % of pixels)")
    print(f"  held-out PSNR, sRGB-encoded      {psnr_srgb:7.2f} dB")
    print(f"  held-out SSIM                    {m['ssim']:7.4f}")
    print(f"  Gaussians                        {m['count']:7d}")
    print(f"  seconds (whole job)              {m['seconds']:7.1f} s  (goal < 300)")
    print(f"  step rate                        {(len(train) - 1) / max(train_s, 1e-9):7.2f} steps/s")
    print(f"  goal met: {m['psnr'] >= 27.0 and m['seconds'] < 300.0}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
