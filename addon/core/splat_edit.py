"""Selecting and editing subsets of Gaussians, numpy only (no bpy, no rasterizer).

Selections are boolean masks [N] over a Gaussians map (PROTOCOL.md); the edits return new maps
and never change their input. The selection that needs the rasterizer (a painted mask traced
back to the Gaussians that produce its pixels) runs on the server: ``splat.select``.
"""

from __future__ import annotations

import numpy as np

from .formats.gaussians import SH_C0, check_gaussians


def _mask(gaussians: dict, mask) -> np.ndarray:
    n = gaussians["means"].shape[0]
    m = np.asarray(mask, dtype=bool)
    if m.shape != (n,):
        raise ValueError(f"selection mask has shape {m.shape}, expected ({n},)")
    return m


def select_box(means: np.ndarray, lo, hi, box_from_world: np.ndarray | None = None) -> np.ndarray:
    """Gaussians whose centre lies in an (optionally oriented) box.

    Args:
        means: centres in the frame the selection is made in. [N, 3]
        lo, hi: the box's corners in its own frame. [3], [3]
        box_from_world: 4x4 taking ``means`` into the box's frame (e.g. the inverse of an
            empty's matrix); None: the box is axis-aligned in the means' frame.

    Returns:
        bool [N].
    """
    p = np.asarray(means, np.float64)
    if box_from_world is not None:
        m = np.asarray(box_from_world, np.float64)
        p = p @ m[:3, :3].T + m[:3, 3]
    return np.all((p >= np.asarray(lo)) & (p <= np.asarray(hi)), axis=1)


def select_sphere(means: np.ndarray, centre, radius: float) -> np.ndarray:
    """Gaussians whose centre lies within ``radius`` of ``centre``. bool [N]"""
    d = np.asarray(means, np.float64) - np.asarray(centre, np.float64)
    return np.einsum("ij,ij->i", d, d) <= float(radius) ** 2


def base_colour(sh0: np.ndarray) -> np.ndarray:
    """Degree-0 colour ``C0 * sh0 + 0.5`` (the view-independent part). [N, 3]"""
    return np.asarray(sh0, np.float64) * SH_C0 + 0.5


def select_colour(sh0: np.ndarray, colour, tolerance: float) -> np.ndarray:
    """Gaussians whose base colour is within ``tolerance`` (Euclidean, RGB) of ``colour``. bool [N]"""
    d = base_colour(sh0) - np.asarray(colour, np.float64)
    return np.sqrt(np.einsum("ij,ij->i", d, d)) <= tolerance


def select_opacity(opacity_logits: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Gaussians whose opacity sigmoid(logit) is in [lo, hi]. bool [N]"""
    a = 1.0 / (1.0 + np.exp(-np.asarray(opacity_logits, np.float64)))
    return (a >= lo) & (a <= hi)


def subset(gaussians: dict, mask) -> dict:
    """The selected Gaussians (extras included), C-contiguous copies."""
    m = _mask(gaussians, mask)
    return {k: np.ascontiguousarray(v[m]) for k, v in gaussians.items()}


def delete(gaussians: dict, mask) -> dict:
    """The Gaussians that are not selected."""
    return subset(gaussians, ~_mask(gaussians, mask))


def separate(gaussians: dict, mask) -> tuple[dict, dict]:
    """(kept, separated): the unselected and the selected Gaussians."""
    m = _mask(gaussians, mask)
    return subset(gaussians, ~m), subset(gaussians, m)


def recolour(gaussians: dict, mask, colour, mode: str = "replace", strength: float = 1.0) -> dict:
    """Recolour the selected Gaussians by their SH DC term, keeping their view dependence.

    Args:
        gaussians: the map.
        mask: selection. [N]
        colour: linear RGB: the new base colour ("replace") or an offset added to it ("shift").
        mode: "replace" moves every selected base colour to ``colour`` (by ``strength`` in
            [0, 1]); "shift" adds ``colour * strength`` to it.
        strength: blend factor.

    Returns:
        A new map; ``shN`` untouched, so the colour still changes with the view as before.
    """
    check_gaussians(gaussians)
    m = _mask(gaussians, mask)
    target = np.asarray(colour, np.float64)
    base = base_colour(gaussians["sh0"][m])
    if mode == "replace":
        new = base + strength * (target - base)
    elif mode == "shift":
        new = base + strength * target
    else:
        raise ValueError(f"recolour mode must be 'replace' or 'shift', got {mode!r}")
    out = dict(gaussians)
    sh0 = gaussians["sh0"].copy()
    sh0[m] = ((new - 0.5) / SH_C0).astype(np.float32)
    out["sh0"] = sh0
    return out


def transform(gaussians: dict, mask, matrix) -> dict:
    """Move the selected Gaussians by a 4x4 similarity (rotation, uniform scale, translation)."""
    from .gaussian_transform import transform_gaussians

    m = _mask(gaussians, mask)
    out = {k: v.copy() for k, v in gaussians.items()}
    moved = transform_gaussians(subset(gaussians, m), matrix)
    for key in ("means", "quats", "scales", "shN"):
        out[key][m] = moved[key]
    return out
