"""`splat.reconstruct`: posed images -> 3D Gaussians (3D Gaussian Splatting, Kerbl et al. 2023).

Method (METHODS.md 2.A.1): initialise Gaussians from points (or randomly in the volume every
camera sees), then optimise means, rotations, log scales, opacity logits and SH colour with Adam
against the images, one random training view per step, loss (1 - 0.2) L1 + 0.2 D-SSIM; adaptive
density control (clone small / split large Gaussians with large view-space gradients, prune
transparent and oversized ones, periodic opacity reset) runs on gsplat's DefaultStrategy
(`densify.CappedStrategy`), and the SH degree rises by one on a schedule.

Inputs: `images` [T, H, W, 3|4] (|u1 sRGB-encoded or <f4/<f2 linear; the Gaussians learn in the
images' own space, reported as `color_space`); `cameras` (T cameras); optional `points` [P, 3] and
`colors` [P, 3] for the initialisation. Where the images have alpha it is supervised: each step
renders over a random background and compares with the image composited over the same background,
plus an L1 loss on the rendered alpha, so empty background stays empty.

Outputs: `gaussians` (PROTOCOL.md Gaussians, float32, shN [N, K, 3] for `sh_degree`), `metrics`
{psnr, ssim, count, seconds, steps} on the held-out views (every `test_every`-th view) or on the
training views when none are held out, and `color_space` ("linear" or "srgb").
While training: `progress` every step (message with the running training PSNR; a preview image
every `preview_every` steps), a `partial` with the Gaussians every `partial_every` steps and on
cancel (the state at the step the cancel landed).

Schedule for short runs: the paper trains 30 000 steps and densifies from step 500 to 15 000,
resets opacities every 3000 and raises the SH degree every 1000 steps. Here those points are
fractions of `steps` (densify_from 0.0167 = 500/30000, densify_until 0.5, opacity_reset_every
0.1, sh_degree_every 0.0333), so `steps` 30 000 gives the paper's schedule and a 3000-step run
the same shape compressed (1000, the default, keeps the 5-minute budget on a shared 2-core
CPU); `densify_every` stays in steps (paper 100) because it is how many views the gradient
statistics average over. The defaults below are the fast preset tuned on a
2-core CPU (benchmarks/bench_reconstruct.py); where they differ from the paper the paper's value
is given.
"""

from __future__ import annotations

from collections.abc import Mapping

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from addon.wire.contracts import CAMERAS, GAUSSIANS
from addon.wire.schema import Array, PipelineError, Struct, Value

from ..base import NO_MODELS, Cancelled, Job, Pipeline
from . import wire

log = logging.getLogger(__name__)

PAPER_STEPS = 30_000


@dataclass
class Params:
    """Settings of `splat.reconstruct` (defaults: the fast preset; paper values in brackets).

    Attributes:
        steps: optimisation steps, one view each (paper 30000).
        sh_degree: SH degree of the result, 0-3 (paper 3).
        test_every: hold out every k-th view (0, k, 2k, ...) for evaluation; 0 = none (3DGS
            evaluation convention: 8).
        max_gaussians: densification never grows beyond this many Gaussians.
        background: linear [r, g, b] behind the Gaussians for images without alpha and for
            evaluation (paper: black or white).
        random_background: with alpha images, composite over a random colour each step (paper
            option `random_background`), which forces the alpha to be learnt.
        lambda_dssim: weight of D-SSIM in the loss (paper 0.2).
        lambda_alpha: weight of the L1 loss on the rendered alpha, with alpha images.
        lr_means: initial learning rate of the means, times the scene extent (paper 1.6e-4).
        lr_means_final: final one, reached by exponential decay at the last step (paper 1.6e-6).
        lr_sh0: learning rate of sh0 (paper 2.5e-3).
        lr_shN: learning rate of shN (paper 2.5e-3 / 20).
        lr_opacities: learning rate of the opacity logits (paper 0.05).
        lr_scales: learning rate of the log scales (gsplat 5e-3; paper 1e-3).
        lr_quats: learning rate of the quaternions (paper 1e-3).
        densify_from: start of densification, fraction of steps (paper 500/30000).
        densify_until: end of densification, fraction of steps (paper 15000/30000).
        densify_every: steps between densifications (paper 100).
        grad_threshold: view-space gradient above which a Gaussian grows (paper 0.0002).
        clone_scale: Gaussians smaller than this x scene extent are cloned, larger ones split
            (paper percent_dense 0.01).
        prune_opacity: Gaussians below this opacity are pruned (paper 0.005).
        prune_scale: Gaussians larger than this x scene extent are pruned (paper 0.1).
        opacity_reset_every: opacity reset interval while densifying, fraction of steps; 0 =
            never (paper 3000/30000).
        sh_degree_every: the SH degree rises by one every this fraction of steps (paper
            1000/30000).
        random_points: number of random initial Gaussians when no points are given.
        partial_every: send the Gaussians as a partial every k steps; 0 = only on cancel.
        preview_every: attach a preview render to the progress every k steps; 0 = never.
        seed: seed of every random choice (views, backgrounds, initialisation, splits).
    """

    steps: int = field(default=1000, metadata={"doc": "optimisation steps (paper 30000)", "min": 1, "max": 1_000_000})
    sh_degree: int = field(default=3, metadata={"doc": "SH degree of the result (paper 3)", "min": 0, "max": 3})
    test_every: int = field(default=8, metadata={"doc": "hold out every k-th view; 0 = none", "min": 0})
    # Upper bounds on what a request may make the server allocate (checked at submit).
    max_gaussians: int = field(default=300_000, metadata={"doc": "cap on the number of Gaussians", "min": 1,
                                                          "max": 50_000_000})
    background: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0], metadata={
        "doc": "linear [r, g, b] behind the Gaussians (images without alpha, evaluation)", "length": 3})
    random_background: bool = field(default=True, metadata={
        "doc": "with alpha images, random background colour each step"})
    lambda_dssim: float = field(default=0.2, metadata={"doc": "D-SSIM weight (paper 0.2)", "min": 0.0, "max": 1.0})
    lambda_alpha: float = field(default=0.1, metadata={"doc": "alpha L1 weight (alpha images)", "min": 0.0})
    lr_means: float = field(default=1.6e-4, metadata={"doc": "means lr x scene extent (paper 1.6e-4)", "min": 0.0})
    lr_means_final: float = field(default=1.6e-6, metadata={"doc": "final means lr x extent (paper 1.6e-6)", "min": 0.0})
    lr_sh0: float = field(default=2.5e-3, metadata={"doc": "sh0 lr (paper 2.5e-3)", "min": 0.0})
    lr_shN: float = field(default=2.5e-3 / 20, metadata={"doc": "shN lr (paper 2.5e-3/20)", "min": 0.0})
    lr_opacities: float = field(default=0.05, metadata={"doc": "opacity lr (paper 0.05)", "min": 0.0})
    lr_scales: float = field(default=5e-3, metadata={"doc": "log-scale lr (gsplat 5e-3, paper 1e-3)", "min": 0.0})
    lr_quats: float = field(default=1e-3, metadata={"doc": "quaternion lr (paper 1e-3)", "min": 0.0})
    densify_from: float = field(default=500 / PAPER_STEPS, metadata={
        "doc": "densification start, fraction of steps (paper 500/30000)", "min": 0.0, "max": 1.0})
    densify_until: float = field(default=0.5, metadata={
        "doc": "densification end, fraction of steps (paper 15000/30000)", "min": 0.0, "max": 1.0})
    densify_every: int = field(default=100, metadata={"doc": "steps between densifications (paper 100)", "min": 1})
    grad_threshold: float = field(default=2e-4, metadata={"doc": "view-space gradient threshold (paper 0.0002)", "min": 0.0})
    clone_scale: float = field(default=0.01, metadata={"doc": "clone/split size, x extent (paper 0.01)", "min": 0.0})
    prune_opacity: float = field(default=0.005, metadata={"doc": "prune below this opacity (paper 0.005)", "min": 0.0, "max": 1.0})
    prune_scale: float = field(default=0.1, metadata={"doc": "prune larger than this x extent (paper 0.1)", "min": 0.0})
    opacity_reset_every: float = field(default=0.1, metadata={
        "doc": "opacity reset interval, fraction of steps; 0 = never (paper 3000/30000)", "min": 0.0, "max": 1.0})
    sh_degree_every: float = field(default=1000 / PAPER_STEPS, metadata={
        "doc": "SH degree +1 interval, fraction of steps (paper 1000/30000)", "min": 0.0, "max": 1.0})
    random_points: int = field(default=20_000, metadata={"doc": "random initial Gaussians without points", "min": 1,
                                                         "max": 1_000_000})
    partial_every: int = field(default=500, metadata={"doc": "partial Gaussians every k steps; 0 = on cancel only", "min": 0})
    preview_every: int = field(default=100, metadata={"doc": "preview image every k steps; 0 = never", "min": 0})
    seed: int = field(default=0, metadata={"doc": "random seed", "min": 0})


INPUTS = {
    "images": Array(("|u1", "<f2", "<f4"), ("T", None, None, (3, 4)),
                    "posed views, |u1 sRGB-encoded or float linear, straight alpha. [T, H, W, 3|4]"),
    "cameras": CAMERAS,
    "points": Array(("<f4",), ("P", 3), "initial points, world frame, metres. [P, 3]", optional=True),
    "colors": Array(("<f4",), ("P", 3), "their colours in [0, 1], images' space. [P, 3]", optional=True),
}
OUTPUTS = {
    "gaussians": GAUSSIANS,
    "metrics": Struct({
        "psnr": Value("float", "mean PSNR over the evaluation views, dB"),
        "ssim": Value("float", "mean SSIM over the evaluation views"),
        "count": Value("int", "number of Gaussians"),
        "seconds": Value("float", "wall time of the job"),
        "steps": Value("int", "optimisation steps run"),
        "views": Value("str", "'held_out' or 'training': which views the metrics are on"),
    }, doc="quality of the result"),
    "color_space": Value("str", "'linear' (float images) or 'srgb' (|u1 images): the Gaussians' colour space"),
}


@dataclass
class Schedule:
    """Step numbers derived from Params (steps count from 1)."""

    densify_from: int
    densify_until: int
    densify_every: int
    reset_every: int
    sh_every: int


def schedule(params: Params) -> Schedule:
    """Turn the fractional schedule into step numbers for this run's length."""
    n = params.steps
    start = int(round(params.densify_from * n))
    until = int(round(params.densify_until * n))
    reset = int(round(params.opacity_reset_every * n))
    sh_every = max(1, int(round(params.sh_degree_every * n)))
    return Schedule(start, until, params.densify_every, reset, sh_every)


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _check(inputs: dict, params: Params) -> tuple[np.ndarray, np.ndarray]:
    """Validate inputs and params before any work; returns (train, test) view indices."""
    images = inputs.get("images")
    if not isinstance(images, np.ndarray):
        raise PipelineError("invalid_input", "inputs.images: required array [T, H, W, 3|4]", "inputs.images")
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise PipelineError("invalid_input",
                            f"inputs.images: shape {list(images.shape)}, expected [T, H, W, 3|4]", "inputs.images")
    if images.dtype.str not in ("|u1", "<f2", "<f4"):
        raise PipelineError("invalid_input", f"inputs.images: dtype {images.dtype.str}, expected |u1, <f2 or <f4",
                            "inputs.images")
    wire.check_finite(images, "inputs.images")
    cams = inputs.get("cameras")
    if not isinstance(cams, dict) or "world_from_camera" not in cams:
        raise PipelineError("invalid_input", "inputs.cameras: required map with world_from_camera",
                            "inputs.cameras")
    w2c = np.asarray(cams["world_from_camera"])
    t = images.shape[0]
    if w2c.ndim != 3 or w2c.shape[0] != t:
        raise PipelineError(
            "invalid_input",
            f"inputs.cameras.world_from_camera: {list(w2c.shape)} cameras for {t} images; expected [{t}, 4, 4]",
            "inputs.cameras.world_from_camera")
    wire.check_camera_values(cams)
    for key, size in (("width", images.shape[2]), ("height", images.shape[1])):
        if key in cams and cams[key] != size:
            raise PipelineError("invalid_input",
                                f"inputs.cameras.{key}: {cams[key]} but the images are {size} pixels", f"inputs.cameras.{key}")
    points, colors = inputs.get("points"), inputs.get("colors")
    if colors is not None and points is None:
        raise PipelineError("invalid_input", "inputs.colors: given without inputs.points", "inputs.colors")
    if points is not None:
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
            raise PipelineError("invalid_input", f"inputs.points: shape {list(points.shape)}, expected [P>0, 3]",
                                "inputs.points")
        wire.check_finite(points, "inputs.points")
        if colors is not None:
            colors = np.asarray(colors)
            if colors.shape != points.shape:
                raise PipelineError("invalid_input",
                                    f"inputs.colors: shape {list(colors.shape)}, expected {list(points.shape)}",
                                    "inputs.colors")
            wire.check_finite(colors, "inputs.colors")
    wire.check_background(params.background)
    if params.steps < 1:
        raise PipelineError("invalid_params", f"params.steps: {params.steps}, must be >= 1", "params.steps")
    if not 0 <= params.sh_degree <= 3:
        raise PipelineError("invalid_params", f"params.sh_degree: {params.sh_degree}, must be 0..3", "params.sh_degree")
    idx = np.arange(t)
    test = idx % params.test_every == 0 if params.test_every > 0 else np.zeros(t, dtype=bool)
    if test.all():
        raise PipelineError("invalid_params",
                            f"params.test_every: {params.test_every} leaves no training view out of {t}",
                            "params.test_every")
    return idx[~test], idx[test]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _targets(images, bg):
    """Ground truth composited over `bg` [3] and the alpha (None without alpha). [B,H,W,3], [B,H,W]"""
    if images.shape[-1] == 4:
        a = images[..., 3]
        return images[..., :3] * a[..., None] + (1.0 - a[..., None]) * bg, a
    return images, None


def _evaluate(render_fn, images, views, bg):
    """Mean PSNR and SSIM of the renders of `views` over `bg` against the composited images."""
    import torch

    from .metrics import psnr, ssim

    psnrs, ssims = [], []
    with torch.no_grad():
        for v in views:
            out = render_fn([int(v)], bg)
            target, _ = _targets(images[int(v)][None], bg)
            psnrs.append(psnr(out.rgb, target))
            ssims.append(float(ssim(out.rgb, target)))
    return float(np.mean(psnrs)), float(np.mean(ssims))


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------


def run(inputs: dict, params: Params, job: Job, models: Mapping = NO_MODELS) -> dict:
    """Train 3D Gaussians on posed images (see the module docstring)."""
    t_start = time.monotonic()
    # 1. Check inputs
    train_views, test_views = _check(inputs, params)

    import torch

    from nskernels.rasterize import rasterize

    from .densify import CappedStrategy
    from .init import gaussians_from_points, random_points_in_view, scene_extent
    from .metrics import photometric_loss, psnr

    device = torch.device(job.device)
    rng = np.random.default_rng(params.seed)
    torch.manual_seed(params.seed)
    gen = torch.Generator(device="cpu").manual_seed(params.seed)

    # 2. Images and cameras to the device (cameras to OpenCV happens in nskernels.camera)
    raw = inputs["images"]
    space = "srgb" if raw.dtype == np.uint8 else "linear"
    scale = 1.0 / 255.0 if raw.dtype == np.uint8 else 1.0
    images = torch.tensor(np.asarray(raw, dtype=np.float32) * scale, device=device)
    cameras = wire.cameras_from_wire(inputs["cameras"], device)
    has_alpha = images.shape[-1] == 4
    bg_fixed = torch.tensor(params.background, dtype=torch.float32, device=device)
    extent = scene_extent(cameras.centers().cpu().numpy())

    # 3. Initialise Gaussians
    if inputs.get("points") is not None:
        points = np.asarray(inputs["points"], dtype=np.float64)
        colors = inputs.get("colors")
        if len(points) > params.max_gaussians:
            keep = np.sort(rng.choice(len(points), params.max_gaussians, replace=False))
            points = points[keep]
            colors = None if colors is None else np.asarray(colors)[keep]
    else:
        points = random_points_in_view(cameras, min(params.random_points, params.max_gaussians), rng)
        if len(points) == 0:
            raise PipelineError("invalid_input", "inputs.cameras: the cameras share no common view to "
                                "initialise Gaussians in; pass inputs.points", "inputs.cameras")
        colors = rng.uniform(0.0, 1.0, size=(len(points), 3))
    init = gaussians_from_points(points, colors, params.sh_degree, device)
    gparams = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in init.items()})
    lrs = {"means": params.lr_means * extent, "quats": params.lr_quats, "scales": params.lr_scales,
           "opacities": params.lr_opacities, "sh0": params.lr_sh0, "shN": params.lr_shN}
    # One Adam per parameter, as gsplat's strategies expect (eps 1e-15 as the paper's code).
    optimizers = {k: torch.optim.Adam([{"params": gparams[k], "lr": lr, "name": k}], eps=1e-15)
                  for k, lr in lrs.items()}
    sched = schedule(params)
    strategy = CappedStrategy(
        prune_opa=params.prune_opacity, grow_grad2d=params.grad_threshold, grow_scale3d=params.clone_scale,
        prune_scale3d=params.prune_scale, refine_start_iter=sched.densify_from,
        refine_stop_iter=sched.densify_until, reset_every=sched.reset_every, refine_every=sched.densify_every,
        max_gaussians=params.max_gaussians, prune_big_after=sched.densify_from,
    )
    state = strategy.initialize_state(scene_scale=extent)
    # Exponential decay of the means' lr from lr_means to lr_means_final over the run.
    decay = (params.lr_means_final / params.lr_means) ** (1.0 / params.steps) if params.lr_means > 0 else 1.0
    log.info("reconstruct: %d train / %d held-out views %dx%d, %d initial Gaussians, extent %.3f, %s",
             len(train_views), len(test_views), cameras.width, cameras.height, len(points), extent, sched)

    def render(views, bg, degree=params.sh_degree):
        return rasterize(gparams["means"], gparams["quats"], gparams["scales"], gparams["opacities"],
                         gparams["sh0"], gparams["shN"], cameras[views], sh_degree=degree, background=bg)

    def send_partial(step):
        job.partial({"gaussians": wire.gaussians_to_wire(gparams), "step": step, "color_space": space})

    preview_view = int(test_views[0]) if len(test_views) else int(train_views[0])
    order: list[int] = []
    recent_psnr: list[float] = []

    # 4. Train: render, loss, backward, densify; progress and cancel every step
    for step in range(1, params.steps + 1):
        try:
            job.check_cancel()
        except Cancelled:
            # The state after step - 1 steps is what the client keeps.
            send_partial(step - 1)
            raise
        # The paper raises the degree at the start of every 1000th iteration (`if iteration %
        # 1000 == 0: oneupSHdegree()` before rendering), so iteration 1000 renders degree 1.
        degree = min(params.sh_degree, step // sched.sh_every)
        if not order:
            order = list(rng.permutation(train_views))
        view = int(order.pop())
        if has_alpha and params.random_background:
            bg = torch.rand(3, generator=gen).to(device)
        else:
            bg = bg_fixed
        target, target_alpha = _targets(images[view][None], bg)

        out = render([view], bg, degree)
        strategy.step_pre_backward(gparams, optimizers, state, step, out.meta)
        loss = photometric_loss(out.rgb, target, params.lambda_dssim)
        if target_alpha is not None and params.lambda_alpha > 0:
            loss = loss + params.lambda_alpha * torch.abs(out.alpha - target_alpha).mean()
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        strategy.step_post_backward(gparams, optimizers, state, step, out.meta)
        for group in optimizers["means"].param_groups:
            group["lr"] *= decay

        recent_psnr.append(psnr(out.rgb, target))
        del recent_psnr[:-20]
        preview = None
        if params.preview_every and (step % params.preview_every == 0 or step == params.steps):
            with torch.no_grad():
                shot = render([preview_view], bg_fixed, degree).rgb[0].cpu().numpy()
            preview = wire.srgb_preview(shot, linear=space == "linear")
        n = len(gparams["means"])
        job.progress("train", step, params.steps,
                     f"psnr {np.mean(recent_psnr):.2f} dB, {n} Gaussians", preview=preview)
        if params.partial_every and step % params.partial_every == 0:
            send_partial(step)

    # 5. Evaluate held-out views (training views when none are held out)
    job.check_cancel()
    job.progress("evaluate", 0, 1, "evaluating")
    eval_views = test_views if len(test_views) else train_views
    psnr_v, ssim_v = _evaluate(render, images, eval_views, bg_fixed)
    seconds = time.monotonic() - t_start
    metrics = {"psnr": psnr_v, "ssim": ssim_v, "count": int(len(gparams["means"])), "seconds": seconds,
               "steps": params.steps, "views": "held_out" if len(test_views) else "training"}
    job.progress("evaluate", 1, 1, f"psnr {psnr_v:.2f} dB, ssim {ssim_v:.4f}")
    log.info("reconstruct: %s", metrics)

    # 6. Package outputs
    return {"gaussians": wire.gaussians_to_wire(gparams), "metrics": metrics, "color_space": space}


def probe() -> tuple[bool, str]:
    """Available wherever torch and gsplat (for its densification strategy) are installed."""
    import importlib.util

    for module, hint in (("torch", "pip install '.[server]'"), ("gsplat", "pip install gsplat==1.5.3"),
                         ("scipy", "pip install scipy")):
        if importlib.util.find_spec(module) is None:
            return False, f"{module} is not installed in the server's environment ({hint})"
    return True, ""


PIPELINE = Pipeline(
    name="splat.reconstruct",
    summary="Train 3D Gaussians on posed images (3D Gaussian Splatting with adaptive density control)",
    params=Params,
    inputs=INPUTS,
    outputs=OUTPUTS,
    run=run,
    probe=probe,
    check=_check,
)
