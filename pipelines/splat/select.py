"""`splat.select`: the Gaussians that produce the pixels of a painted mask (semantic tracing).

The idea of GaussianEditor's semantic tracing (Chen et al. 2024), reimplemented: a Gaussian
belongs to the masked region when most of its blending weight in the views falls inside the
mask. A Gaussian's weight at a pixel is its compositing weight ``w_i = alpha_i T_i``; summed over
the masked pixels it is ``W_in``, over the others ``W_out``. Both come from one differentiable
render: with every Gaussian's degree-0 colour at 0.5 (sh0 = 0) and no higher SH, the rendered
red channel is ``sum_i 0.5 w_i``, so the gradient of ``sum(mask * red) + sum((1 - mask) * green)``
with respect to ``sh0[i]`` is ``C0 * (W_in, W_out, 0)``: exact weights, no extra kernel, on
every backend of `nskernels.rasterize`.

A Gaussian is selected when ``W_in / (W_in + W_out) >= threshold`` and ``W_in`` is at least
`min_weight` (it is visibly there). Several views (masks [T, H, W]) add their weights up.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from addon.wire.contracts import CAMERAS, GAUSSIANS
from addon.wire.schema import Array, PipelineError

from ..base import NO_MODELS, Job, Pipeline
from . import wire

log = logging.getLogger(__name__)

C0 = 0.28209479177387814


@dataclass
class Params:
    """Settings of `splat.select`.

    Attributes:
        threshold: fraction of a Gaussian's weight that must fall inside the mask.
        min_weight: least total weight inside the mask (pixels' worth) to count as seen.
    """

    threshold: float = field(default=0.5, metadata={"doc": "share of a Gaussian's weight inside the mask",
                                                     "min": 0.0, "max": 1.0})
    min_weight: float = field(default=0.01, metadata={"doc": "least weight inside the mask, pixels", "min": 0.0})


INPUTS = {
    "gaussians": GAUSSIANS,
    "cameras": CAMERAS,
    "mask": Array(("|u1", "|b1", "<f4"), ("T", "H", "W"),
                  "the painted region per view: nonzero (or > 0.5 for <f4) is selected. [T, H, W]"),
}
OUTPUTS = {
    "selected": Array(("|b1",), ("N",), "the Gaussians the mask traces to. [N]"),
    "weight_in": Array(("<f4",), ("N",), "blending weight inside the mask, summed over views, pixels. [N]"),
    "weight_out": Array(("<f4",), ("N",), "blending weight outside the mask, pixels. [N]"),
}


def _check(inputs: dict, params: Params) -> None:
    wire.check_gaussians(inputs.get("gaussians"))
    cams = inputs.get("cameras")
    if not isinstance(cams, dict):
        raise PipelineError("invalid_input", "inputs.cameras: expected a map", "inputs.cameras")
    wire.check_camera_values(cams)
    mask = np.asarray(inputs.get("mask"))
    t = np.shape(cams["world_from_camera"])[0]
    want = (t, int(cams["height"]), int(cams["width"]))
    if mask.shape != want:
        raise PipelineError("invalid_input", f"inputs.mask: shape {list(mask.shape)}, expected {list(want)} "
                            "(one mask per camera at the cameras' resolution)", "inputs.mask")


def trace_weights(g: dict, cameras, mask) -> tuple:
    """(W_in [N], W_out [N]) torch tensors for masks [T, H, W] (float in [0, 1])."""
    import torch

    from nskernels.rasterize import rasterize

    n = g["means"].shape[0]
    sh0 = torch.zeros(n, 3, dtype=torch.float32, device=g["means"].device, requires_grad=True)
    shn = torch.zeros(n, 0, 3, dtype=torch.float32, device=g["means"].device)
    w_in = torch.zeros(n, device=g["means"].device)
    w_out = torch.zeros(n, device=g["means"].device)
    for i in range(len(cameras)):
        out = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], sh0, shn, cameras[[i]], sh_degree=0)
        m = mask[i]
        loss = (out.rgb[0, :, :, 0] * m).sum() + (out.rgb[0, :, :, 1] * (1.0 - m)).sum()
        (grad,) = torch.autograd.grad(loss, sh0)
        w_in += grad[:, 0] / C0
        w_out += grad[:, 1] / C0
        yield i, w_in, w_out


def run(inputs: dict, params: Params, job: Job, models: Mapping = NO_MODELS) -> dict:
    """Trace the mask(s) to the Gaussians; progress per view, cancel between views."""
    _check(inputs, params)
    import torch

    device = torch.device(job.device)
    g = wire.gaussians_to_torch(inputs["gaussians"], device)
    cameras = wire.cameras_from_wire(inputs["cameras"], device)
    raw = np.asarray(inputs["mask"])
    mask = torch.tensor(raw > 0.5 if raw.dtype.kind == "f" else raw != 0, dtype=torch.float32, device=device)
    t = len(cameras)
    w_in = w_out = torch.zeros(g["means"].shape[0])
    for i, w_in, w_out in trace_weights(g, cameras, mask):
        job.progress("trace", i + 1, t, f"view {i + 1}/{t}")
        job.check_cancel()
    total = w_in + w_out
    share = torch.where(total > 0, w_in / torch.clamp(total, min=1e-12), torch.zeros_like(total))
    selected = (share >= params.threshold) & (w_in >= params.min_weight)
    log.info("splat.select: %d of %d Gaussians", int(selected.sum()), len(selected))
    return {"selected": selected.cpu().numpy(), "weight_in": w_in.detach().cpu().numpy().astype(np.float32),
            "weight_out": w_out.detach().cpu().numpy().astype(np.float32)}


def probe() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed in the server's environment (pip install '.[server]')"
    return True, ""


PIPELINE = Pipeline(
    name="splat.select",
    summary="Select the Gaussians that produce a painted mask's pixels (semantic tracing)",
    params=Params,
    inputs=INPUTS,
    outputs=OUTPUTS,
    run=run,
    probe=probe,
    check=_check,
)
