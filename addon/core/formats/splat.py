"""antimatter15 ``.splat`` files (read only), numpy only.

Each splat is 32 bytes, little-endian, no header:
``position 3 x f32 | scale 3 x f32 (linear) | r g b a u8 | quaternion 4 x u8``,
the quaternion stored as (w, x, y, z) of the normalised quaternion mapped by ``q * 128 + 128``,
the colour as the degree-0 colour ``C0 * sh0 + 0.5`` and the alpha as ``sigmoid(opacity)``,
both times 255. Reading converts back to raw parameters (log scale, logit opacity, sh0); the
8-bit quantisation is lost, as it was when the file was written.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import FormatError
from .sniff import describe_bytes
from .gaussians import SH_C0

SPLAT_DTYPE = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))])
assert SPLAT_DTYPE.itemsize == 32

# Alpha is clamped half an 8-bit step away from 0 and 1 so the logit stays finite.
_ALPHA_EPS = 0.5 / 255.0
# A zero stored scale would give log(0) = -inf; anything smaller than this is invisible anyway.
_MIN_SCALE = 1e-10


def splat_to_gaussians(records: np.ndarray) -> dict[str, np.ndarray]:
    """Convert .splat records to a Gaussians map.

    Args:
        records: ``SPLAT_DTYPE`` records. [N]

    Returns:
        The Gaussians map with ``shN`` of shape [N, 0, 3] (the format has no SH rest).
    """
    n = records.shape[0]
    rgba = records["rgba"].astype(np.float64) / 255.0
    quats = (records["rot"].astype(np.float64) - 128.0) / 128.0
    # An all-128 quaternion decodes to zero; use the identity rather than a degenerate rotation.
    zero = np.linalg.norm(quats, axis=1) < 1e-6
    quats[zero] = (1.0, 0.0, 0.0, 0.0)
    alpha = np.clip(rgba[:, 3], _ALPHA_EPS, 1.0 - _ALPHA_EPS)
    return {
        "means": np.ascontiguousarray(records["position"], dtype=np.float32),
        "quats": quats.astype(np.float32),
        "scales": np.log(np.maximum(records["scale"].astype(np.float64), _MIN_SCALE)).astype(np.float32),
        "opacities": (np.log(alpha) - np.log1p(-alpha)).astype(np.float32),
        "sh0": ((rgba[:, :3] - 0.5) / SH_C0).astype(np.float32),
        "shN": np.zeros((n, 0, 3), np.float32),
    }


def read_splat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an antimatter15 .splat file into a Gaussians map.

    Args:
        path: file to read.

    Returns:
        ``means [N, 3]``, ``quats [N, 4]`` (w, x, y, z), ``scales [N, 3]`` (log),
        ``opacities [N]`` (logit), ``sh0 [N, 3]``, ``shN [N, 0, 3]``; float32, C-contiguous.

    Raises:
        FormatError: the file cannot be read or its size is not a multiple of 32 bytes.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
        what = describe_bytes(head)
        if what:
            # .splat has no header, so a file that announces another format is not one.
            raise FormatError(f"{path}: not a .splat file: this is {what}")
        size = os.path.getsize(path)
        if size % SPLAT_DTYPE.itemsize:
            raise FormatError(
                f"{path}: truncated or not a .splat file: {size} bytes is not a multiple of the "
                f"{SPLAT_DTYPE.itemsize}-byte splat record ({size // SPLAT_DTYPE.itemsize} whole splats, "
                f"{size % SPLAT_DTYPE.itemsize} bytes left over)"
            )
        records = np.fromfile(path, dtype=SPLAT_DTYPE)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return splat_to_gaussians(records)


def gaussians_to_splat(gaussians: dict[str, np.ndarray], source: str = "gaussians") -> np.ndarray:
    """Convert a Gaussians map to .splat records (the inverse of :func:`splat_to_gaussians`).

    View-dependent colour (``shN``) is dropped: the format stores the degree-0 colour only.
    Records are written in the map's order (antimatter15's converter sorts by size x opacity;
    viewers sort per frame anyway).

    Args:
        gaussians: the Gaussians map.
        source: what to name in errors.

    Returns:
        ``SPLAT_DTYPE`` records. [N]
    """
    from .gaussians import check_gaussians

    n, _ = check_gaussians(gaussians, source)
    rec = np.zeros(n, SPLAT_DTYPE)
    rec["position"] = gaussians["means"]
    rec["scale"] = np.exp(gaussians["scales"].astype(np.float64))
    rgb = gaussians["sh0"].astype(np.float64) * SH_C0 + 0.5
    alpha = 1.0 / (1.0 + np.exp(-gaussians["opacities"].astype(np.float64)))
    rec["rgba"] = np.clip(np.round(np.concatenate([rgb, alpha[:, None]], axis=1) * 255.0), 0, 255)
    q = gaussians["quats"].astype(np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    # Normalise, except quaternions already unit to 8-bit precision (those read from a .splat):
    # re-normalising them would move a quarter of the bytes of an unedited file by one step.
    unit = np.abs(norm - 1.0) < 0.02
    q = np.where(unit, q, np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), [1.0, 0.0, 0.0, 0.0]))
    rec["rot"] = np.clip(np.round(q * 128.0 + 128.0), 0, 255)
    return rec


def write_splat(path: str | os.PathLike, gaussians: dict[str, np.ndarray]) -> None:
    """Write a Gaussians map as an antimatter15 .splat file (degree-0 colour, 8-bit colour,
    opacity and rotation, float32 position and linear scale).

    Raises:
        FormatError: the map does not follow the Gaussians data contract.
    """
    path = os.fspath(path)
    records = gaussians_to_splat(gaussians, path)
    with open(path, "wb") as f:
        f.write(records.tobytes())
