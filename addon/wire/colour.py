"""The sRGB transfer function (IEC 61966-2-1): the one copy, numpy only.

It lives on the wire layer because it is a convention of the protocol (previews and 8-bit images
are sRGB, Gaussian colours and renders are linear), shared by the add-on (`addon.core.colour`)
and the pipelines (their previews).
"""

from __future__ import annotations

import numpy as np


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """The sRGB transfer function on linear values, clipped to [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """The inverse sRGB transfer function on encoded values (negative values clipped to 0)."""
    x = np.clip(x, 0.0, None)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
