"""Rotate whole sets of Gaussians between world frames (Y-up captures <-> Blender's Z-up).

A rotation R of the world moves a Gaussian's mean to ``R @ mean``, its orientation to
``q_R * q`` (log scales stay: they are along the Gaussian's own axes), and its view-dependent
colour so that the colour seen along direction ``R @ d`` afterwards is the colour seen along
``d`` before. For the SH rest coefficients that is one (2l+1) x (2l+1) matrix per degree l,
found here by least squares on a fixed set of directions with the 3DGS real-SH basis; the band
is closed under rotation, so the fit is exact to float precision.
"""

from __future__ import annotations

import numpy as np

from .errors import FormatError
from .gaussians import check_gaussians

# y_up_to_z_up: a Y-up capture (x right, y up, -z forward; glTF/OpenGL/most SfM viewers) into
# Blender's Z-up world: (x, y, z) -> (x, -z, y), i.e. +90 degrees about +X, as glTF-Blender-IO does.
# z_up_to_y_up is its inverse: (x, y, z) -> (x, z, -y).
AXIS_CONVERSIONS: dict[str, np.ndarray] = {
    "y_up_to_z_up": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
    "z_up_to_y_up": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
}

# Real SH constants of degrees 1-3 (the standard basis used by the 3DGS code and gsplat).
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_rest_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """Evaluate the real SH basis functions of degrees 1..degree (the 'rest' coefficients).

    Args:
        dirs: unit directions. [S, 3]
        degree: highest SH degree, 0..3.

    Returns:
        Basis values in 3DGS coefficient order (index 0 is the first degree-1 function). [S, K]
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
            _C3[0] * y * (3 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3 * yy),
        ]
    return np.stack(cols, axis=1) if cols else np.zeros((dirs.shape[0], 0))


def _fibonacci_sphere(count: int) -> np.ndarray:
    """Well-spread deterministic unit directions. [count, 3]"""
    i = np.arange(count) + 0.5
    z = 1.0 - 2.0 * i / count
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def sh_rotation_matrices(rotation: np.ndarray, degree: int) -> list[np.ndarray]:
    """Per-degree matrices that rotate SH rest coefficients with the world.

    Args:
        rotation: proper rotation of the world (new = R @ old). [3, 3]
        degree: highest SH degree, 0..3.

    Returns:
        ``[M_1, ..., M_degree]``, M_l of shape [2l+1, 2l+1], such that new band coefficients are
        ``M_l @ old`` and colour_new(R d) == colour_old(d) for every direction d.
    """
    dirs = _fibonacci_sphere(64)
    basis_new = sh_rest_basis(dirs, degree)  # Y(d') at the new frame's directions
    basis_old = sh_rest_basis(dirs @ rotation, degree)  # Y(R^T d'): rows are (R^T d')^T = d'^T R
    mats = []
    start = 0
    for l in range(1, degree + 1):
        band = slice(start, start + 2 * l + 1)
        # Y_old(R^T d') = A Y_new(d') for the band; the new coefficients are A^T c_old.
        a_t, *_ = np.linalg.lstsq(basis_new[:, band], basis_old[:, band], rcond=None)
        mats.append(a_t)
        start += 2 * l + 1
    return mats


def _quat_from_matrix(rotation: np.ndarray) -> np.ndarray:
    """(w, x, y, z) unit quaternion of a proper rotation matrix. [3, 3] -> [4]"""
    m = rotation
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        return np.array([0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s])
    i = int(np.argmax(np.diag(m)))
    j, k = (i + 1) % 3, (i + 2) % 3
    s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
    q = np.empty(4)
    q[0] = (m[k, j] - m[j, k]) / s
    q[1 + i] = 0.25 * s
    q[1 + j] = (m[j, i] + m[i, j]) / s
    q[1 + k] = (m[k, i] + m[i, k]) / s
    return q


def _quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of (w, x, y, z) quaternions. [4], [N, 4] -> [N, 4]"""
    aw, ax, ay, az = a
    bw, bx, by, bz = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=1)


def rotate_gaussians(gaussians: dict[str, np.ndarray], rotation: np.ndarray) -> dict[str, np.ndarray]:
    """Rotate a Gaussians map about the world origin.

    Args:
        gaussians: the Gaussians map (PROTOCOL.md). Extra arrays are passed through unchanged.
        rotation: proper rotation matrix, new = R @ old. [3, 3]

    Returns:
        A new map: means ``R @ mean`` [N, 3], quats ``q_R * q`` [N, 4], scales, opacities and
        sh0 unchanged, shN rotated per degree [N, K, 3]; float32, computed in float64.

    Raises:
        FormatError: the map is malformed or ``rotation`` is not a proper rotation.
    """
    n, k = check_gaussians(gaussians)
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3) or not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
        raise FormatError(f"rotation must be a proper 3x3 rotation matrix, got {r.tolist()}")
    out = dict(gaussians)
    out["means"] = (gaussians["means"].astype(np.float64) @ r.T).astype(np.float32)
    out["quats"] = _quat_multiply(_quat_from_matrix(r), gaussians["quats"].astype(np.float64)).astype(np.float32)
    shn = gaussians["shN"].astype(np.float64)
    rotated = np.empty_like(shn)
    start = 0
    for l, mat in enumerate(sh_rotation_matrices(r, {0: 0, 3: 1, 8: 2, 15: 3}[k]), start=1):
        band = slice(start, start + 2 * l + 1)
        rotated[:, band, :] = np.einsum("ij,njc->nic", mat, shn[:, band, :])
        start += 2 * l + 1
    out["shN"] = rotated.astype(np.float32)
    return out


def convert_axes(gaussians: dict[str, np.ndarray], conversion: str) -> dict[str, np.ndarray]:
    """Convert a Gaussians map between world-axis conventions.

    Args:
        gaussians: the Gaussians map.
        conversion: a key of ``AXIS_CONVERSIONS``: "y_up_to_z_up" or "z_up_to_y_up".

    Returns:
        The rotated map (see :func:`rotate_gaussians`).

    Raises:
        FormatError: unknown conversion name.
    """
    if conversion not in AXIS_CONVERSIONS:
        raise FormatError(f"unknown axis conversion '{conversion}'; expected one of {sorted(AXIS_CONVERSIONS)}")
    return rotate_gaussians(gaussians, AXIS_CONVERSIONS[conversion])
