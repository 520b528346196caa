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

Opacities and sh0 never change.
"""

from __future__ import annotations

import numpy as np

from .formats.gaussians import K_BY_DEGREE, check_gaussians

# The real SH basis of the 3DGS code (PROTOCOL.md); kernels/sh.py evaluates the same one.
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

# A similarity's singular values agree to this relative tolerance (float32 object matrices).
_UNIFORM_RTOL = 1e-5
_REQUIRED = ("means", "quats", "scales", "opacities", "sh0", "shN")


def sh_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """Real SH basis functions 1..(degree+1)^2-1 (the rest coefficients, band 0 left out).

    Args:
        dirs: unit directions. [M, 3]
        degree: SH degree 0..3.

    Returns:
        Basis values in shN's coefficient order. [M, (degree+1)^2 - 1]
    """
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    cols = []
    if degree >= 1:
        cols += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        cols += [_C2[0] * x * y, _C2[1] * y * z, _C2[2] * (2 * zz - xx - yy), _C2[3] * x * z, _C2[4] * (xx - yy)]
    if degree >= 3:
        cols += [
            _C3[0] * y * (3 * xx - yy), _C3[1] * x * y * z, _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy), _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3 * yy),
        ]
    return np.stack(cols, axis=1) if cols else np.zeros((len(dirs), 0))


def _sphere_points(m: int) -> np.ndarray:
    """m well-spread unit vectors (Fibonacci sphere). [m, 3]"""
    i = np.arange(m) + 0.5
    z = 1.0 - 2.0 * i / m
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def sh_rotation(q: np.ndarray, degree: int) -> np.ndarray:
    """Linear map of SH rest coefficients for an orthogonal change of frame.

    If a colour function is ``f(d) = sum_k c_k Y_k(d)`` in an object's frame, the same function
    seen in the world frame (``d_world = q @ d_object``) is ``sum_k c'_k Y_k(d)`` with
    ``c' = R @ c``. Each SH band is closed under O(3), so R is block diagonal; it is found by
    least squares on sample directions, which is exact up to rounding.

    Args:
        q: orthogonal matrix (rotation or reflection). [3, 3]
        degree: SH degree 0..3.

    Returns:
        R. [K, K] with K = (degree+1)^2 - 1
    """
    dirs = _sphere_points(64)
    k = (degree + 1) ** 2 - 1
    rot = np.zeros((k, k))
    start = 0
    for band in range(1, degree + 1):
        width = 2 * band + 1
        sl = slice(start, start + width)
        y_world = sh_basis(dirs, degree)[:, sl]               # Y(d)
        y_object = sh_basis(dirs @ q, degree)[:, sl]           # Y(q^T d), rows are d^T q
        rot[sl, sl] = np.linalg.lstsq(y_world, y_object, rcond=None)[0]
        start += width
    return rot


def quat_to_rotmat(quats: np.ndarray) -> np.ndarray:
    """Rotation matrices of (w, x, y, z) quaternions (normalised here). [N, 4] -> [N, 3, 3]"""
    q = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=1).reshape(-1, 3, 3)


def rotmat_to_quat(rot: np.ndarray) -> np.ndarray:
    """(w, x, y, z) unit quaternions of proper rotation matrices, w >= 0. [N, 3, 3] -> [N, 4]

    Picks, per matrix, the largest of 4w^2, 4x^2, 4y^2, 4z^2 to divide by (Shepperd's method),
    so no branch loses precision.
    """
    m = rot
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cands = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    pick = np.argmax(cands, axis=1)
    q = np.empty((len(m), 4))
    # w largest
    s = np.sqrt(np.maximum(1.0 + tr, 1e-30)) * 2
    q_w = np.stack([0.25 * s, (m[:, 2, 1] - m[:, 1, 2]) / s, (m[:, 0, 2] - m[:, 2, 0]) / s, (m[:, 1, 0] - m[:, 0, 1]) / s], 1)
    s = np.sqrt(np.maximum(1.0 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], 1e-30)) * 2
    q_x = np.stack([(m[:, 2, 1] - m[:, 1, 2]) / s, 0.25 * s, (m[:, 0, 1] + m[:, 1, 0]) / s, (m[:, 0, 2] + m[:, 2, 0]) / s], 1)
    s = np.sqrt(np.maximum(1.0 + m[:, 1, 1] - m[:, 0, 0] - m[:, 2, 2], 1e-30)) * 2
    q_y = np.stack([(m[:, 0, 2] - m[:, 2, 0]) / s, (m[:, 0, 1] + m[:, 1, 0]) / s, 0.25 * s, (m[:, 1, 2] + m[:, 2, 1]) / s], 1)
    s = np.sqrt(np.maximum(1.0 + m[:, 2, 2] - m[:, 0, 0] - m[:, 1, 1], 1e-30)) * 2
    q_z = np.stack([(m[:, 1, 0] - m[:, 0, 1]) / s, (m[:, 0, 2] + m[:, 2, 0]) / s, (m[:, 1, 2] + m[:, 2, 1]) / s, 0.25 * s], 1)
    for i, cand in enumerate((q_w, q_x, q_y, q_z)):
        q[pick == i] = cand[pick == i]
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of (w, x, y, z) quaternions. a [4], b [N, 4] -> [N, 4]"""
    aw, ax, ay, az = a
    bw, bx, by, bz = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=1)


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
    out = {key: gaussians[key] for key in _REQUIRED}
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
        out["quats"] = _quat_mul(rq, gaussians["quats"].astype(np.float64)).astype(np.float32)
        out["scales"] = (gaussians["scales"].astype(np.float64) + np.log(svals.mean())).astype(np.float32)
    else:
        out["quats"], out["scales"] = _transform_covariances(gaussians["quats"], gaussians["scales"], lin)

    if k:
        rot_sh = sh_rotation(q, {v: d for d, v in K_BY_DEGREE.items()}[k])
        out["shN"] = np.einsum("ij,njc->nic", rot_sh, gaussians["shN"].astype(np.float64)).astype(np.float32)
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
        return {key: sets[0][key] for key in _REQUIRED}
    k_max = max(check_gaussians(g)[1] for g in sets)
    out = {}
    for key in _REQUIRED[:-1]:
        out[key] = np.ascontiguousarray(np.concatenate([g[key] for g in sets], axis=0), dtype=np.float32)
    shns = []
    for g in sets:
        shn = g["shN"]
        if shn.shape[1] < k_max:
            shn = np.concatenate([shn, np.zeros((shn.shape[0], k_max - shn.shape[1], 3), np.float32)], axis=1)
        shns.append(shn)
    out["shN"] = np.ascontiguousarray(np.concatenate(shns, axis=0), dtype=np.float32)
    return out
