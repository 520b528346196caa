"""Colour, bpy-free: the one sRGB curve and the one premultiplied -> straight alpha rule.

Every place in the add-on that encodes or decodes sRGB, or un-premultiplies a render, calls this
module, so frames written to PNG, frames shown in the viewport, F12 passes and captured training
images all agree on what "empty" means and on the transfer function.

- :data:`ALPHA_EPS`: alpha at or below this is no coverage (straight colour 0 there).
- :data:`COVERAGE_FLOOR`: a coverage noise floor (one 8-bit step) for renders that leave a
  trace of alpha on their empty background; not a division cut-off (see :mod:`addon.blender.capture`).
- :func:`linear_to_srgb` / :func:`srgb_to_linear`: IEC 61966-2-1, on straight colour (the one
  copy is `addon.wire.colour`, shared with the pipelines).
- :func:`straight_alpha`, :func:`srgb_to_linear_premultiplied`, :func:`frame_to_rgba8`.
"""

from __future__ import annotations

import numpy as np

from ..wire.colour import linear_to_srgb, srgb_to_linear

__all__ = ["ALPHA_EPS", "COVERAGE_FLOOR", "frame_to_rgba8", "linear_to_srgb", "srgb_to_linear",
           "srgb_to_linear_premultiplied", "straight_alpha"]

#: Alpha at or below this counts as empty when un-premultiplying (colour / alpha).
ALPHA_EPS = 1e-6

#: One 8-bit step of coverage: below it, alpha where nothing was hit is render noise, not coverage.
COVERAGE_FLOOR = 1.0 / 255.0


def straight_alpha(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Premultiplied colour -> straight colour; 0 where alpha is at most :data:`ALPHA_EPS` (no coverage).

    Args:
        rgb: premultiplied colour. [..., 3]
        alpha: coverage, broadcastable against ``rgb`` (e.g. [..., 1]).

    Returns:
        Straight colour. [..., 3]
    """
    return np.where(alpha > ALPHA_EPS, rgb / np.maximum(alpha, ALPHA_EPS), 0.0)


def srgb_to_linear_premultiplied(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Premultiplied sRGB-encoded colour -> premultiplied linear (Gaussians whose colours are sRGB).

    The curve applies to straight colour: un-premultiply, decode, premultiply again.

    Args:
        rgb: premultiplied colour, sRGB-encoded. [H, W, 3]
        alpha: [H, W]

    Returns:
        Premultiplied linear colour, float32. [H, W, 3]
    """
    a = alpha[..., None]
    return (srgb_to_linear(straight_alpha(rgb, a)) * a).astype(np.float32)


def frame_to_rgba8(rgb: np.ndarray, alpha: np.ndarray, srgb_encoded: bool = False) -> np.ndarray:
    """A premultiplied ``splat.render`` frame -> straight-alpha sRGB bytes, as PNG stores them.

    Args:
        rgb: premultiplied colour, row 0 at the top; linear, or sRGB-encoded when the
            Gaussians were (then it is not encoded a second time). [H, W, 3]
        alpha: coverage. [H, W]
        srgb_encoded: the Gaussians' colour space is sRGB.

    Returns:
        RGBA uint8, row 0 at the top. [H, W, 4]
    """
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    straight = straight_alpha(rgb, a)
    out = np.concatenate([straight.clip(0.0, 1.0) if srgb_encoded else linear_to_srgb(straight), a], axis=-1)
    return np.round(out * 255.0).astype(np.uint8)
