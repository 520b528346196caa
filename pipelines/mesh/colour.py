"""sRGB <-> linear conversions at the wire boundary of the mesh pipelines (numpy)."""

from __future__ import annotations

import numpy as np


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """sRGB-encoded uint8 -> linear float32 (the IEC 61966-2-1 curve). [..., C]"""
    x = np.asarray(image, dtype=np.float32) / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb8(rgb: np.ndarray) -> np.ndarray:
    """Linear float -> sRGB-encoded uint8 (clipped to [0, 1] first). [..., C]

    Through a 2^16-entry table of the IEC 61966-2-1 curve: a 2048^2 texture encodes in a
    fraction of the time `np.power` takes. The table's step (1.5e-5 in linear) is far below an
    8-bit level everywhere on the curve: a value lying within a step of a level boundary may
    round to the neighbouring level (one level, ~0.1 % of random values).
    """
    x = np.clip(np.nan_to_num(np.asarray(rgb, dtype=np.float32)), 0.0, 1.0)
    index = (x * np.float32(_LUT_SIZE - 1) + np.float32(0.5)).astype(np.int32)
    return _srgb_table()[index]


_LUT_SIZE = 1 << 16
_TABLE: list = []


def _srgb_table() -> np.ndarray:
    """sRGB uint8 of linear k / (LUT_SIZE - 1), k = 0 .. LUT_SIZE - 1 (built on first use)."""
    if not _TABLE:
        x = np.linspace(0.0, 1.0, _LUT_SIZE, dtype=np.float64)
        x = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)
        _TABLE.append((x * 255.0 + 0.5).astype(np.uint8))
    return _TABLE[0]
