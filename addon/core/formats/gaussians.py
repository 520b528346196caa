"""The Gaussians map of PROTOCOL.md: names, SH sizes and the one validity check.

A Gaussians map is a plain ``dict`` of C-contiguous float32 arrays:
``means [N, 3]``, ``quats [N, 4]`` (w, x, y, z), ``scales [N, 3]`` (log), ``opacities [N]``
(logit), ``sh0 [N, 3]``, ``shN [N, K, 3]`` with K in {0, 3, 8, 15}; any other key is an optional
extra per-Gaussian array with leading dimension N.
"""

from __future__ import annotations

import numpy as np

from ...wire.contracts import DEGREE_BY_K, K_BY_DEGREE  # noqa: F401  (re-exported)
from .errors import FormatError

#: Required keys and their per-Gaussian trailing shapes (shN is checked separately).
REQUIRED_SHAPES: dict[str, tuple[int, ...]] = {
    "means": (3,),
    "quats": (4,),
    "scales": (3,),
    "opacities": (),
    "sh0": (3,),
}
REQUIRED_KEYS: tuple[str, ...] = (*REQUIRED_SHAPES, "shN")


#: The real SH basis constants of the 3DGS code and gsplat (PROTOCOL.md), the add-on's one copy.
#: Degree-0 colour is ``SH_C0 * sh0 + 0.5``; SH_C1..SH_C3 are the degree 1-3 factors in
#: coefficient order, as ``formats.axes.sh_rest_basis`` evaluates them.
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_degree(k: int, source: str = "gaussians") -> int:
    """SH degree for K rest coefficients per channel.

    Args:
        k: number of rest coefficients per channel (0, 3, 8 or 15).
        source: what to name in the error message.

    Returns:
        The degree 0..3.

    Raises:
        FormatError: K is not one of 0, 3, 8, 15.
    """
    if k not in DEGREE_BY_K:
        raise FormatError(f"{source}: {k} SH rest coefficients per channel; expected one of 0, 3, 8, 15 (SH degree 0-3)")
    return DEGREE_BY_K[k]


def check_gaussians(gaussians: dict, source: str = "gaussians") -> tuple[int, int]:
    """Check a Gaussians map against the data contract.

    Args:
        gaussians: the map; required keys ``means, quats, scales, opacities, sh0, shN``.
        source: what to name in error messages (a file path or "gaussians").

    Returns:
        (N, K): Gaussian count and SH rest coefficients per channel.

    Raises:
        FormatError: a key is missing, or an array has the wrong dtype or shape.
    """
    missing = [k for k in REQUIRED_KEYS if k not in gaussians]
    if missing:
        raise FormatError(f"{source}: missing Gaussian arrays {missing}")
    n = np.shape(gaussians["means"])[0] if np.ndim(gaussians["means"]) >= 1 else -1
    for key, tail in REQUIRED_SHAPES.items():
        arr = gaussians[key]
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
            raise FormatError(
                f"{source}: '{key}' must be a float32 numpy array, got "
                f"{type(arr).__name__} {getattr(arr, 'dtype', '')}"
            )
        if arr.shape != (n, *tail):
            raise FormatError(f"{source}: '{key}' has shape {arr.shape}, expected {(n, *tail)}")
    shn = gaussians["shN"]
    if not isinstance(shn, np.ndarray) or shn.dtype != np.float32:
        raise FormatError(f"{source}: 'shN' must be a float32 numpy array, got {type(shn).__name__}")
    if shn.ndim != 3 or shn.shape[0] != n or shn.shape[2] != 3:
        raise FormatError(f"{source}: 'shN' has shape {shn.shape}, expected ({n}, K, 3)")
    sh_degree(shn.shape[1], f"{source}: 'shN'")
    for key, arr in gaussians.items():
        if key in REQUIRED_SHAPES or key == "shN":
            continue
        if not isinstance(arr, np.ndarray) or arr.ndim < 1 or arr.shape[0] != n:
            raise FormatError(
                f"{source}: extra array '{key}' must be a numpy array with leading dimension {n}, "
                f"got shape {getattr(arr, 'shape', None)}"
            )
    return n, shn.shape[1]


def extras(gaussians: dict) -> dict[str, np.ndarray]:
    """The optional per-Gaussian arrays of a map (everything but the required keys)."""
    return {k: v for k, v in gaussians.items() if k not in REQUIRED_KEYS}
