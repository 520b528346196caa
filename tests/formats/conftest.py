"""Shared test data for the format tests (and the Blender-side ones that import them): seeded
Gaussians and an orbiting camera path."""

import math

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


def orbit(t: int) -> np.ndarray:
    """world_from_camera [T, 4, 4] circling the origin and looking at it (camera -Z toward origin)."""
    mats = np.zeros((t, 4, 4), np.float32)
    for i in range(t):
        a = 2 * math.pi * i / t
        eye = np.array([4 * math.cos(a), 4 * math.sin(a), 1.5])
        back = eye / np.linalg.norm(eye)  # camera +Z points away from the target
        right = np.cross([0, 0, 1.0], back)
        right /= np.linalg.norm(right)
        up = np.cross(back, right)
        mats[i, :3, 0], mats[i, :3, 1], mats[i, :3, 2], mats[i, :3, 3] = right, up, back, eye
        mats[i, 3, 3] = 1
    return mats


def orbit_path(fy: np.ndarray, width: int, height: int, fps: float) -> dict:
    """A camera-path map along :func:`orbit`: square pixels, centred principal point.

    Args:
        fy: focal length per frame, pixels (fx = fy). [T]
        width: image width, pixels.
        height: image height, pixels.
        fps: frames per second.
    """
    return {"world_from_camera": orbit(len(fy)), "fx": fy, "fy": fy, "cx": width / 2.0, "cy": height / 2.0,
            "width": width, "height": height, "fps": fps}


def _realsplat_dir():
    """The project's shared real splat files (never copied into the repo), or None."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for cand in (os.environ.get("NSTUDIO_REALSPLAT_DATA"), root.parent / "shared" / "realsplat-data",
                 root.parent.parent / "shared" / "realsplat-data"):
        if cand and (Path(cand) / "SOURCES.md").is_file():
            return Path(cand)
    return None


@pytest.fixture
def realsplat():
    """Path of a file in ../shared/realsplat-data (see SOURCES.md there); skips when absent."""
    base = _realsplat_dir()
    if base is None:
        pytest.skip("../shared/realsplat-data is not present")

    def get(name: str):
        path = base / name
        if not path.is_file():
            pytest.skip(f"{path} is not present")
        return path

    return get
