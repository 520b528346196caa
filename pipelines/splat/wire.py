"""Moving splat data between the wire (numpy, PROTOCOL.md contracts) and torch.

Also the input checks that the schema cannot express (finite values, counts that must agree)
and the sRGB encoding of preview images.
"""

from __future__ import annotations

import numpy as np

from addon.wire.colour import linear_to_srgb
from addon.wire.contracts import DEGREE_BY_K

from addon.wire.schema import PipelineError

GAUSSIAN_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def check_finite(value: np.ndarray, field: str) -> None:
    """Raise invalid_input naming `field` if a float array holds NaN or inf."""
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        raise PipelineError("invalid_input", f"{field}: {bad} values are NaN or infinite", field)


def check_gaussians(g: dict, field: str = "inputs.gaussians") -> int:
    """Check a Gaussians map's arrays (shapes, dtypes, finiteness); returns N."""
    if not isinstance(g, dict):
        raise PipelineError("invalid_input", f"{field}: expected a map", field)
    for key in GAUSSIAN_KEYS:
        if key not in g:
            raise PipelineError("invalid_input", f"{field}.{key}: required but missing", f"{field}.{key}")
    n = np.shape(g["means"])[0] if np.ndim(g["means"]) == 2 else -1
    shapes = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 3)}
    for key, shape in shapes.items():
        arr = np.asarray(g[key])
        if arr.shape != shape:
            raise PipelineError(
                "invalid_input", f"{field}.{key}: shape {list(arr.shape)}, expected {list(shape)}",
                f"{field}.{key}",
            )
    shn = np.asarray(g["shN"])
    if shn.ndim != 3 or shn.shape[0] != n or shn.shape[1] not in DEGREE_BY_K or shn.shape[2] != 3:
        raise PipelineError(
            "invalid_input", f"{field}.shN: shape {list(shn.shape)}, expected [{n}, K in 0/3/8/15, 3]",
            f"{field}.shN",
        )
    for key in GAUSSIAN_KEYS:
        check_finite(np.asarray(g[key]), f"{field}.{key}")
    return n


def check_camera_values(cams: dict, field: str = "inputs.cameras") -> None:
    """Raise invalid_input naming the field if a camera matrix or intrinsic holds NaN or inf."""
    for key in ("world_from_camera", "fx", "fy", "cx", "cy"):
        if key in cams:
            check_finite(np.asarray(cams[key]), f"{field}.{key}")


def check_background(background) -> None:
    """Raise invalid_params unless `params.background` is 3 finite numbers."""
    bg = np.asarray(background, dtype=np.float64)
    if bg.shape != (3,) or not np.isfinite(bg).all():
        raise PipelineError("invalid_params", "params.background: expected 3 finite numbers", "params.background")


def cameras_from_wire(cams: dict, device, field: str = "inputs.cameras"):
    """nskernels.camera.Cameras from a cameras map; ValueErrors become invalid_input naming the field."""
    from nskernels.camera import Cameras

    try:
        return Cameras.from_wire(cams, device=device)
    except ValueError as exc:
        msg = str(exc)
        sub = msg.split(" ", 1)[0]
        name = field + sub[len("cameras"):] if sub.startswith("cameras") else field
        raise PipelineError("invalid_input", f"{field}: {msg}", name) from None


def gaussians_to_torch(g: dict, device) -> dict:
    """Wire Gaussians -> float32 torch tensors on `device` (copies; wire arrays are read-only)."""
    import torch

    return {k: torch.tensor(np.asarray(g[k], dtype=np.float32), device=device) for k in GAUSSIAN_KEYS}


def gaussians_to_wire(params) -> dict:
    """torch Gaussians (tensors or Parameters) -> wire map of float32 C-contiguous numpy arrays."""
    return {
        k: np.ascontiguousarray(params[k].detach().to("cpu", copy=True).float().numpy())
        for k in GAUSSIAN_KEYS
    }


def srgb_preview(rgb: np.ndarray, linear: bool) -> np.ndarray:
    """uint8 sRGB preview of an image [H, W, 3] (linear values encoded with the sRGB curve)."""
    x = np.clip(np.nan_to_num(np.asarray(rgb, dtype=np.float32)), 0.0, 1.0)
    if linear:
        x = linear_to_srgb(x)
    return (x * 255.0 + 0.5).astype(np.uint8)
