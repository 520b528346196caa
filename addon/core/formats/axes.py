"""Rotate whole sets of Gaussians between world frames (Y-up captures <-> Blender's Z-up).

A rotation R of the world moves a Gaussian's mean to ``R @ mean``, its orientation to
``q_R * q`` (log scales stay: they are along the Gaussian's own axes), and its view-dependent
colour so that the colour seen along direction ``R @ d`` afterwards is the colour seen along
``d`` before. For the SH rest coefficients that is one (2l+1) x (2l+1) matrix per degree l,
found here by least squares on a fixed set of directions with the 3DGS real-SH basis; the band
is closed under rotation, so the fit is exact to float precision.

This module is the add-on's one home for the SH and quaternion maths of rigid frame changes
(``sh_rest_basis``, ``sh_rotation_matrices``, ``rotate_sh_rest``, ``quat_to_rotmat``,
``rotmat_to_quat``, ``quat_multiply``); ``addon.core.gaussian_transform`` and the camera-path
importer use them from here.
"""

from __future__ import annotations

import numpy as np

from .errors import FormatError
from .gaussians import DEGREE_BY_K, SH_C1, SH_C2, SH_C3, check_gaussians

# y_up_to_z_up: a Y-up capture (x right, y up, -z forward; glTF/OpenGL/most SfM viewers) into
# Blender's Z-up world: (x, y, z) -> (x, -z, y), i.e. +90 degrees about +X, as glTF-Blender-IO does.
# z_up_to_y_up is its inverse: (x, y, z) -> (x, z, -y).
AXIS_CONVERSIONS: dict[str, np.ndarray] = {
    "y_up_to_z_up": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
    "z_up_to_y_up": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
}


# The numpy twin of nskernels.sh.sh_basis (without band 0): the add-on never imports torch.
# tests/formats/test_axes.py checks the rotations built on it with gsplat's own SH evaluation.
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
        cols += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        cols += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * x * z,
                 SH_C2[4] * (xx - yy)]
    if degree >= 3:
        cols += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
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
    """Per-degree matrices that move SH rest coefficients with an orthogonal change of frame.

    Args:
        rotation: orthogonal matrix, a rotation or a reflection (new = Q @ old). [3, 3]
        degree: highest SH degree, 0..3.

    Returns:
        ``[M_1, ..., M_degree]``, M_l of shape [2l+1, 2l+1], such that new band coefficients are
        ``M_l @ old`` and colour_new(Q d) == colour_old(d) for every direction d.
    """
    dirs = _fibonacci_sphere(64)
    basis_new = sh_rest_basis(dirs, degree)  # Y(d') at the new frame's directions
    basis_old = sh_rest_basis(dirs @ rotation, degree)  # Y(Q^T d'): rows are (Q^T d')^T = d'^T Q
    mats = []
    start = 0
    for l in range(1, degree + 1):
        band = slice(start, start + 2 * l + 1)
        # Y_old(Q^T d') = A Y_new(d') for the band (each band is closed under O(3), so the least
        # squares fit is exact to rounding); the new coefficients are A^T c_old.
        a_t, *_ = np.linalg.lstsq(basis_new[:, band], basis_old[:, band], rcond=None)
        mats.append(a_t)
        start += 2 * l + 1
    return mats


def rotate_sh_rest(shn: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """SH rest coefficients seen from a frame changed by an orthogonal matrix, band by band.

    Args:
        shn: SH rest coefficients, K in {0, 3, 8, 15}. [N, K, 3]
        rotation: orthogonal matrix, a rotation or a reflection (new = Q @ old). [3, 3]

    Returns:
        The coefficients in the new frame, float32 (computed in float64). [N, K, 3]
    """
    src = shn.astype(np.float64)
    out = np.empty_like(src)
    start = 0
    for l, mat in enumerate(sh_rotation_matrices(rotation, DEGREE_BY_K[shn.shape[1]]), start=1):
        band = slice(start, start + 2 * l + 1)
        out[:, band, :] = np.einsum("ij,njc->nic", mat, src[:, band, :])
        start += 2 * l + 1
    return out.astype(np.float32)


def quat_to_rotmat(quats: np.ndarray) -> np.ndarray:
    """Rotation matrices of (w, x, y, z) quaternions, normalised here.

    Args:
        quats: quaternions, any non-zero length. [N, 4]

    Returns:
        Proper rotation matrices. [N, 3, 3]
    """
    q = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=1).reshape(-1, 3, 3)


def rotmat_to_quat(rot: np.ndarray) -> np.ndarray:
    """(w, x, y, z) unit quaternions of proper rotation matrices, with w >= 0.

    Picks, per matrix, the largest of 4w^2, 4x^2, 4y^2, 4z^2 to divide by (Shepperd's method),
    so no branch loses precision.

    Args:
        rot: proper rotation matrices. [N, 3, 3]

    Returns:
        Unit quaternions. [N, 4]
    """
    m = rot
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    pick = np.argmax(np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1), axis=1)
    q = np.empty((len(m), 4))
    # w largest
    s = np.sqrt(np.maximum(1.0 + tr, 1e-30)) * 2
    q_w = np.stack([0.25 * s, (m[:, 2, 1] - m[:, 1, 2]) / s, (m[:, 0, 2] - m[:, 2, 0]) / s,
                    (m[:, 1, 0] - m[:, 0, 1]) / s], 1)
    s = np.sqrt(np.maximum(1.0 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], 1e-30)) * 2
    q_x = np.stack([(m[:, 2, 1] - m[:, 1, 2]) / s, 0.25 * s, (m[:, 0, 1] + m[:, 1, 0]) / s,
                    (m[:, 0, 2] + m[:, 2, 0]) / s], 1)
    s = np.sqrt(np.maximum(1.0 + m[:, 1, 1] - m[:, 0, 0] - m[:, 2, 2], 1e-30)) * 2
    q_y = np.stack([(m[:, 0, 2] - m[:, 2, 0]) / s, (m[:, 0, 1] + m[:, 1, 0]) / s, 0.25 * s,
                    (m[:, 1, 2] + m[:, 2, 1]) / s], 1)
    s = np.sqrt(np.maximum(1.0 + m[:, 2, 2] - m[:, 0, 0] - m[:, 1, 1], 1e-30)) * 2
    q_z = np.stack([(m[:, 1, 0] - m[:, 0, 1]) / s, (m[:, 0, 2] + m[:, 2, 0]) / s,
                    (m[:, 1, 2] + m[:, 2, 1]) / s, 0.25 * s], 1)
    for i, cand in enumerate((q_w, q_x, q_y, q_z)):
        q[pick == i] = cand[pick == i]
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of (w, x, y, z) quaternions, broadcast over leading dimensions.

    Args:
        a: left factors. [..., 4]
        b: right factors. [..., 4]

    Returns:
        The products, float64. [..., 4]
    """
    aw, ax, ay, az = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=-1)


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
    check_gaussians(gaussians)
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3) or not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
        raise FormatError(f"rotation must be a proper 3x3 rotation matrix, got {r.tolist()}")
    out = dict(gaussians)
    out["means"] = (gaussians["means"].astype(np.float64) @ r.T).astype(np.float32)
    q_r = rotmat_to_quat(r[None])[0]
    out["quats"] = quat_multiply(q_r, gaussians["quats"].astype(np.float64)).astype(np.float32)
    out["shN"] = rotate_sh_rest(gaussians["shN"], r)
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
