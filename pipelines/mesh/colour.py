"""sRGB <-> linear conversions at the wire boundary of the mesh pipelines (numpy)."""

from __future__ import annotations

import numpy as np


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """sRGB-encoded uint8 -> linear float32 (the IEC 61966-2-1 curve). [..., C]"""
    x = np.asarray(image, dtype=np.float32) / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb8(rgb: np.ndarray) -> np.ndarray:
    """Linear float -> sRGB-encoded uint8 (clipped to [0, 1] first). [..., C]"""
    x = np.clip(np.nan_to_num(np.asarray(rgb, dtype=np.float32)), 0.0, 1.0)
    x = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)
    return (x * 255.0 + 0.5).astype(np.uint8)
