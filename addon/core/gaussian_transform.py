"""Move Gaussians from an object's frame into the world frame, and merge several sets into one.

bpy-free (numpy only). Used by the final-shot render engine: every Gaussian object in a scene
is transformed by its ``matrix_world`` and all of them are sent as one Gaussians map.

For an object matrix with linear part ``L`` and translation ``t``:

- means: ``L @ mean + t``.
- covariance: ``L Sigma L^T``. When ``L`` is a similarity (rotation/reflection times a uniform
  scale s) this is a rotation of the quaternion and ``log s`` added to the log scales. Any other
  ``L`` (non-uniform scale, shear) is handled exactly too, by an eigen-decomposition of the new
  3x3 covariance of every Gaussian (vectorised over N; slower, so only done when needed).
- view-dependent colour: the SH coefficients are rotated by the orthogonal factor ``Q`` of the
  polar decomposition ``L = Q P``, band by band (each band is invariant under O(3), so a 2l+1
  square matrix per band maps them). This is exact for similarities. A non-uniform scale bends
  view directions in a way no SH rotation can express; there the rotation part alone is applied,
  so view dependence is approximate (degree-0 colour is always exact).

Opacities and sh0 never change. The SH and quaternion maths lives in ``addon.core.formats.axes``.
"""

from __future__ import annotations

import numpy as np

from .formats.axes import quat_multiply, quat_to_rotmat, rotate_sh_rest, rotmat_to_quat
from .formats.gaussians import REQUIRED_KEYS, REQUIRED_SHAPES, check_gaussians

# A similarity's singular values agree to this relative tolerance (float32 object matrices).
_UNIFORM_RTOL = 1e-5


def _check_matrix(matrix) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"object matrix must be 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("object matrix has non-finite entries")
    if not np.allclose(m[3], (0, 0, 0, 1), atol=1e-6):
        raise ValueError(f"object matrix must be affine (last row 0 0 0 1), got {m[3].tolist()}")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise ValueError("object matrix is singular (an object scale of zero?)")
    return m


def transform_gaussians(gaussians: dict, matrix) -> dict:
    """Gaussians in an object's frame -> the same Gaussians in the world frame.

    Args:
        gaussians: PROTOCOL.md Gaussians map in the object's frame (N Gaussians, K SH rest).
        matrix: the object's ``matrix_world``. [4, 4]

    Returns:
        A new Gaussians map (required keys only), float32 C-contiguous. With an identity matrix
        the arrays are returned unchanged (bit-exact).

    Raises:
        ValueError: the matrix is not a finite, invertible affine 4x4.
        FormatError: the map does not follow the data contract.
    """
    _, k = check_gaussians(gaussians)
    m = _check_matrix(matrix)
    out = {key: gaussians[key] for key in REQUIRED_KEYS}
    if np.array_equal(m, np.eye(4)):
        return out
    lin, t = m[:3, :3], m[:3, 3]
    out["means"] = (gaussians["means"].astype(np.float64) @ lin.T + t).astype(np.float32)

    # Polar decomposition lin = q @ p through the SVD: q orthogonal, p symmetric positive.
    u, svals, vt = np.linalg.svd(lin)
    q = u @ vt
    if svals.max() - svals.min() <= _UNIFORM_RTOL * svals.max():
        # Similarity: covariance q (s R S)(s R S)^T q^T. A reflection q gives the same covariance
        # as the rotation -q (3x3: det(-q) = -det(q)), and quaternions need a proper rotation.
        rot = q if np.linalg.det(q) > 0 else -q
        rq = rotmat_to_quat(rot[None])[0]
        out["quats"] = quat_multiply(rq, gaussians["quats"].astype(np.float64)).astype(np.float32)
        out["scales"] = (gaussians["scales"].astype(np.float64) + np.log(svals.mean())).astype(np.float32)
    else:
        out["quats"], out["scales"] = _transform_covariances(gaussians["quats"], gaussians["scales"], lin)

    if k:
        out["shN"] = rotate_sh_rest(gaussians["shN"], q)
    return {key: np.ascontiguousarray(v) for key, v in out.items()}


def _transform_covariances(quats: np.ndarray, scales: np.ndarray, lin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quats and log scales of L Sigma L^T for any invertible L. quats [N, 4], scales [N, 3] -> same."""
    rot = quat_to_rotmat(quats.astype(np.float64))
    a = lin @ rot * np.exp(scales.astype(np.float64))[:, None, :]   # L R S  [N, 3, 3]
    cov = a @ np.swapaxes(a, 1, 2)
    evals, evecs = np.linalg.eigh(cov)
    # eigh may return a reflection; flipping one axis keeps the same covariance.
    flip = np.linalg.det(evecs) < 0
    evecs[flip, :, 0] *= -1
    new_scales = 0.5 * np.log(np.maximum(evals, np.finfo(np.float64).tiny))
    return rotmat_to_quat(evecs).astype(np.float32), new_scales.astype(np.float32)


def merge_gaussians(sets: list[dict]) -> dict:
    """Concatenate Gaussians maps into one (required keys only).

    Sets with fewer SH rest coefficients are padded with zeros, which leaves their colour
    unchanged (the missing bands contribute nothing).

    Args:
        sets: Gaussians maps, all in the same frame. At least one.

    Returns:
        One Gaussians map, float32 C-contiguous. [sum N]

    Raises:
        ValueError: ``sets`` is empty.
        FormatError: a map does not follow the data contract.
    """
    if not sets:
        raise ValueError("merge_gaussians needs at least one Gaussians map")
    if len(sets) == 1:
        return {key: sets[0][key] for key in REQUIRED_KEYS}
    k_max = max(check_gaussians(g)[1] for g in sets)
    out = {}
    for key in REQUIRED_SHAPES:
        out[key] = np.ascontiguousarray(np.concatenate([g[key] for g in sets], axis=0), dtype=np.float32)
    shns = []
    for g in sets:
        shn = g["shN"]
        if shn.shape[1] < k_max:
            shn = np.concatenate([shn, np.zeros((shn.shape[0], k_max - shn.shape[1], 3), np.float32)], axis=1)
        shns.append(shn)
    out["shN"] = np.ascontiguousarray(np.concatenate(shns, axis=0), dtype=np.float32)
    return out
