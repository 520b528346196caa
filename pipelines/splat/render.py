"""`splat.render`: render 3D Gaussians into a set of cameras or along a camera path.

Rasterization follows PROTOCOL.md "Gaussian rendering conventions" (3D Gaussian Splatting,
Kerbl et al. 2023) through `nskernels.rasterize` on the server's device (gsplat on CUDA, our
tile rasterizer elsewhere).

Inputs: `gaussians` (the Gaussians map) and `cameras` (T cameras, one resolution).
Outputs: `rgb` [T, H, W, 3] (premultiplied unless a background is given), `alpha` [T, H, W],
`depth` [T, H, W] (metres along -Z, inf where empty), all float32; with the param `depth_front`
also the extension output `depth_front` [T, H, W]: the front-surface depth, where the
transmittance first falls to 0.5, taken per pixel along its ray (docs/protocol-notes.md; what
final shots compare with mesh depth). Every frame is also sent as a `partial` (`frame`, `rgb`, `alpha`, `depth`
[, `depth_front`]) as soon as it is ready.
"""

from __future__ import annotations

from collections.abc import Mapping

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np

from addon.wire.contracts import CAMERAS, GAUSSIANS
from addon.wire.schema import Array, PipelineError, Value

from ..base import NO_MODELS, Frames, Job, Pipeline
from . import wire

log = logging.getLogger(__name__)


@dataclass
class Params:
    """Settings of `splat.render`.

    Attributes:
        sh_degree: SH degree to evaluate (0-3); default None: every degree the Gaussians have.
        background: linear [r, g, b] composited behind the Gaussians; default None: the frames
            stay premultiplied (PROTOCOL.md).
        depth_front: also return the front-surface depth (an extension output, off by default so
            the core contract's outputs stay exactly rgb, alpha, depth).
    """

    sh_degree: int | None = field(default=None, metadata={
        "doc": "SH degree to evaluate (default: all the Gaussians have)", "min": 0, "max": 3})
    background: list[float] | None = field(default=None, metadata={
        "doc": "linear [r, g, b] behind the Gaussians (default none: premultiplied)", "length": 3})
    depth_front: bool = field(default=False, metadata={
        "doc": "also return depth_front: the depth where the transmittance first falls to 0.5 (for "
               "compositing against meshes; the expected depth lies behind the surface at contacts)"})


#: What one request may ask for (checked at submit; a 513-byte request for 30000 x 30000
#: pixels must not get the server OOM-killed): a side of 16384 pixels, 2^25 pixels a frame
#: (8K UHD fits) and a result (rgb + alpha + depth, float32) of at most 4 GiB.
MAX_SIDE = 16384
MAX_PIXELS = 2**25
MAX_RESULT_BYTES = 4 * 2**30
_BYTES_PER_PIXEL = (3 + 1 + 1) * 4

# `gaussians_ref` (an extension, docs/protocol-notes.md): Gaussians kept by `splat.upload`, in
# place of `gaussians`; exactly one of the two.
INPUTS = {"gaussians": dataclasses.replace(GAUSSIANS, optional=True), "cameras": CAMERAS,
          "gaussians_ref": Value("str", "a splat.upload reference instead of inputs.gaussians", optional=True)}
OUTPUTS = {
    "rgb": Array(("<f4",), ("T", "H", "W", 3), "linear colour, premultiplied unless a background was given. [T, H, W, 3]"),
    "alpha": Array(("<f4",), ("T", "H", "W"), "coverage 1 - prod(1 - alpha_i). [T, H, W]"),
    "depth": Array(("<f4",), ("T", "H", "W"), "expected depth along -Z, metres, inf where empty. [T, H, W]"),
    "depth_front": Array(("<f4",), ("T", "H", "W"),
                         "front-surface depth along -Z, metres: where the pixel's ray meets the Gaussian at "
                         "which the transmittance first falls to 0.5 (or the heaviest contribution where alpha "
                         "< 0.5); inf where empty; only with "
                         "params.depth_front. [T, H, W]", optional=True),
}


def _check(inputs: dict, params: Params) -> int:
    """Validate what the schema cannot; returns the SH degree of the Gaussians."""
    from .gaussian_cache import resolve

    g = resolve(inputs)
    if inputs.get("gaussians") is not None:
        wire.check_gaussians(g)
    degree = wire.DEGREE_BY_K[np.shape(g["shN"])[1]]
    if params.sh_degree is not None and params.sh_degree > degree:
        raise PipelineError(
            "invalid_params",
            f"params.sh_degree: {params.sh_degree} is above the Gaussians' degree {degree}",
            "params.sh_degree",
        )
    if params.background is not None:
        wire.check_background(params.background)
    cams = inputs.get("cameras")
    if not isinstance(cams, dict):
        raise PipelineError("invalid_input", "inputs.cameras: expected a map", "inputs.cameras")
    wire.check_camera_values(cams)
    _check_size(cams)
    return degree


def _check_size(cams: dict) -> None:
    """Refuse resolutions and frame counts whose result would not fit the documented limits."""
    width, height = cams.get("width"), cams.get("height")
    for key, value in (("width", width), ("height", height)):
        if not 1 <= value <= MAX_SIDE:
            raise PipelineError("invalid_input", f"inputs.cameras.{key}: {value} pixels; must be "
                                f"1..{MAX_SIDE}", f"inputs.cameras.{key}")
    if width * height > MAX_PIXELS:
        raise PipelineError("invalid_input", f"inputs.cameras: {width} x {height} is "
                            f"{width * height} pixels a frame; at most {MAX_PIXELS}",
                            "inputs.cameras.width")
    frames = int(np.shape(cams["world_from_camera"])[0])
    size = frames * width * height * _BYTES_PER_PIXEL
    if size > MAX_RESULT_BYTES:
        raise PipelineError("invalid_input", f"inputs.cameras: {frames} frames of {width} x "
                            f"{height} make a {size / 2**30:.1f} GiB result; at most "
                            f"{MAX_RESULT_BYTES // 2**30} GiB per request (send fewer cameras "
                            "per request)", "inputs.cameras.world_from_camera")


def run(inputs: dict, params: Params, job: Job, models: Mapping = NO_MODELS) -> dict:
    """Render every camera; a partial per frame, progress per frame, cancel between frames."""
    # 1. Check inputs
    degree = _check(inputs, params)

    import torch

    from nskernels.rasterize import rasterize

    # 2. Gaussians and cameras to the device (cameras to OpenCV happens in nskernels.camera)
    device = torch.device(job.device)
    cameras = wire.cameras_from_wire(inputs["cameras"], device)
    from .gaussian_cache import resolve

    g_np = resolve(inputs)
    g = wire.gaussians_to_torch(g_np, device)
    sh_degree = degree if params.sh_degree is None else params.sh_degree
    background = None
    if params.background is not None:
        background = torch.tensor(params.background, dtype=torch.float32, device=device)
    t, h, w = len(cameras), cameras.height, cameras.width
    rgb = np.empty((t, h, w, 3), dtype=np.float32)
    alpha = np.empty((t, h, w), dtype=np.float32)
    depth = np.empty((t, h, w), dtype=np.float32)
    depth_front = np.empty((t, h, w), dtype=np.float32) if params.depth_front else None

    # 3. Render frame by frame so each one streams back as soon as it is ready
    with torch.no_grad():
        for i in range(t):
            job.check_cancel()
            out = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["sh0"], g["shN"],
                            cameras[[i]], sh_degree=sh_degree, background=background)
            rgb[i] = out.rgb[0].cpu().numpy()
            alpha[i] = out.alpha[0].cpu().numpy()
            depth[i] = out.depth[0].cpu().numpy()
            frame = {"frame": i, "rgb": rgb[i], "alpha": alpha[i], "depth": depth[i]}
            if params.depth_front:
                depth_front[i] = out.depth_front[0].cpu().numpy()
                frame["depth_front"] = depth_front[i]
            job.partial(frame)
            job.progress("render", i + 1, t, f"frame {i + 1}/{t}")
    log.info("rendered %d frames %dx%d of %d Gaussians", t, w, h, g["means"].shape[0])

    # 4. Package outputs
    result = {"rgb": rgb, "alpha": alpha, "depth": depth}
    if params.depth_front:
        result["depth_front"] = depth_front
    return result


def probe() -> tuple[bool, str]:
    """Available wherever torch is installed (the torch backend runs on any CPU)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed in the server's environment (pip install '.[server]')"
    return True, ""


PIPELINE = Pipeline(
    name="splat.render",
    summary="Render 3D Gaussians into cameras: RGB, alpha and depth per frame",
    params=Params,
    inputs=INPUTS,
    outputs=OUTPUTS,
    run=run,
    probe=probe,
    check=_check,
    # Every frame is rendered on its own: a camera path may be split across workers.
    frames=Frames(input="cameras", outputs=("rgb", "alpha", "depth", "depth_front")),
)
