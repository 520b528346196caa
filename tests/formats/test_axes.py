"""Axis conversion: colour seen along d before equals colour seen along R d after (SH by gsplat)."""

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import _spherical_harmonics

from addon.core.formats import FormatError, axes
from tests.formats.conftest import make_gaussians

DEGREE = {0: 0, 3: 1, 8: 2, 15: 3}


def colours(g, dirs):
    """Per-Gaussian colour seen along dirs [N, 3], with gsplat's own SH evaluation."""
    coeffs = torch.from_numpy(np.concatenate([g["sh0"][:, None], g["shN"]], axis=1).astype(np.float64))
    k = g["shN"].shape[1]
    return _spherical_harmonics(DEGREE[k], torch.from_numpy(dirs), coeffs).numpy()


def quat_to_matrix(q):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


@pytest.mark.parametrize("k", [0, 3, 8, 15])
@pytest.mark.parametrize("conversion", ["y_up_to_z_up", "z_up_to_y_up"])
def test_colour_follows_rotation(k, conversion):
    g = make_gaussians(64, k, seed=k)
    r = axes.AXIS_CONVERSIONS[conversion]
    out = axes.convert_axes(g, conversion)
    rng = np.random.default_rng(3)
    d = rng.standard_normal((64, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    # float32 storage of the rotated coefficients bounds the error.
    np.testing.assert_allclose(colours(out, d @ r.T), colours(g, d), atol=1e-5)
    np.testing.assert_allclose(out["means"], g["means"] @ r.T, atol=1e-6)
    # the covariance frame rotates: R_new = R @ R_old
    np.testing.assert_allclose(quat_to_matrix(out["quats"].astype(np.float64)),
                               r @ quat_to_matrix(g["quats"].astype(np.float64)), atol=1e-6)
    for key in ("scales", "opacities", "sh0"):
        assert np.array_equal(out[key], g[key])


def test_general_rotation_and_mapping():
    # y_up_to_z_up maps (x, y, z) -> (x, -z, y)
    g = make_gaussians(1, 0)
    g["means"][:] = [1.0, 2.0, 3.0]
    assert axes.convert_axes(g, "y_up_to_z_up")["means"].tolist() == [[1.0, -3.0, 2.0]]
    # an arbitrary rotation, degree 3
    a = np.random.default_rng(0).standard_normal((3, 3))
    q, _ = np.linalg.qr(a)
    q *= np.sign(np.linalg.det(q))
    g = make_gaussians(16, 15, seed=2)
    out = axes.rotate_gaussians(g, q)
    d = np.random.default_rng(1).standard_normal((16, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    np.testing.assert_allclose(colours(out, d @ q.T), colours(g, d), atol=1e-5)


def test_bad_conversion():
    with pytest.raises(FormatError, match="unknown axis conversion 'x_up'"):
        axes.convert_axes(make_gaussians(1, 0), "x_up")
    with pytest.raises(FormatError, match="proper 3x3 rotation"):
        axes.rotate_gaussians(make_gaussians(1, 0), np.diag([1.0, 1.0, -1.0]))
