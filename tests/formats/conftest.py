"""Shared seeded Gaussians for the format tests."""

import numpy as np
import pytest


def make_gaussians(n: int, k: int, seed: int = 0) -> dict:
    """Seeded random Gaussians map (float32, C-contiguous) with N Gaussians and K rest coeffs."""
    rng = np.random.default_rng(seed)
    return {
        "means": rng.standard_normal((n, 3), dtype=np.float32),
        "quats": rng.standard_normal((n, 4), dtype=np.float32),
        "scales": rng.standard_normal((n, 3), dtype=np.float32) - 3.0,
        "opacities": rng.standard_normal(n, dtype=np.float32) * 3.0,
        "sh0": rng.standard_normal((n, 3), dtype=np.float32),
        "shN": rng.standard_normal((n, k, 3), dtype=np.float32) * 0.3,
    }


@pytest.fixture
def gaussians_factory():
    return make_gaussians
