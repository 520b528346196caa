"""Object -> world transforms of Gaussians, checked with the kernels' own SH and covariance code."""

from __future__ import annotations

import numpy as np
import pytest

from addon.core import gaussian_transform as gt

torch = pytest.importorskip("torch")
from nskernels import gaussians as kgauss  # noqa: E402
from nskernels import sh as ksh  # noqa: E402


def _gaussians(n=50, k=15, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "means": rng.normal(size=(n, 3)).astype(np.float32),
        "quats": rng.normal(size=(n, 4)).astype(np.float32),
        "scales": rng.uniform(-4, -1, size=(n, 3)).astype(np.float32),
        "opacities": rng.normal(size=n).astype(np.float32),
        "sh0": rng.normal(size=(n, 3)).astype(np.float32),
        "shN": rng.normal(size=(n, k, 3)).astype(np.float32) * 0.3,
    }


def _rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    x, y, z = axis
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c + x * x * (1 - c), x * y * (1 - c) - z * s, x * z * (1 - c) + y * s],
                     [y * x * (1 - c) + z * s, c + y * y * (1 - c), y * z * (1 - c) - x * s],
                     [z * x * (1 - c) - y * s, z * y * (1 - c) + x * s, c + z * z * (1 - c)]])


def _matrix(lin, t=(0.3, -1.2, 2.0)):
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = t
    return m


def _colour(g, dirs, degree=3):
    coeffs = torch.cat([torch.from_numpy(g["sh0"][:, None, :]), torch.from_numpy(g["shN"])], 1).double()
    return ksh.eval_sh(degree, coeffs, torch.from_numpy(dirs)).numpy()


def _cov(g):
    return kgauss.covariances(torch.from_numpy(g["quats"]).double(), torch.from_numpy(g["scales"]).double()).numpy()


LINEARS = {
    "rotation": _rotation((1, 2, 3), 0.7),
    "rotation+scale": 2.5 * _rotation((0, 0, 1), -1.1),
    "mirror": np.diag([-1.0, 1.0, 1.0]) @ _rotation((1, -1, 0.5), 0.4) * 0.5,
    "non-uniform": _rotation((0, 1, 0), 0.3) @ np.diag([1.0, 3.0, 0.5]),
}


@pytest.mark.parametrize("name", list(LINEARS))
def test_means_and_covariances(name):
    lin = LINEARS[name]
    g = _gaussians()
    w = gt.transform_gaussians(g, _matrix(lin))
    np.testing.assert_allclose(w["means"], g["means"] @ lin.T + (0.3, -1.2, 2.0), rtol=1e-5, atol=1e-5)
    want = lin @ _cov(g) @ lin.T
    np.testing.assert_allclose(_cov(w), want, rtol=1e-4, atol=1e-9)  # float32 storage of the result
    np.testing.assert_array_equal(w["opacities"], g["opacities"])
    np.testing.assert_array_equal(w["sh0"], g["sh0"])
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in w.values())


@pytest.mark.parametrize("name", ["rotation", "rotation+scale", "mirror"])
@pytest.mark.parametrize("k", [3, 8, 15])
def test_view_dependent_colour_follows_the_object(name, k):
    """A world direction d sees what the object-frame direction q^T d saw before."""
    lin = LINEARS[name]
    u, _, vt = np.linalg.svd(lin)
    q = u @ vt
    g = _gaussians(k=k)
    w = gt.transform_gaussians(g, _matrix(lin))
    rng = np.random.default_rng(1)
    dirs = rng.normal(size=(len(g["means"]), 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    degree = {3: 1, 8: 2, 15: 3}[k]
    np.testing.assert_allclose(_colour(w, dirs, degree), _colour(g, dirs @ q, degree), atol=1e-5)


def test_identity_is_bit_exact():
    g = _gaussians()
    w = gt.transform_gaussians(g, np.eye(4))
    for key in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        assert w[key] is g[key]


def test_merge_pads_sh_and_keeps_colour():
    a, b = _gaussians(n=5, k=0, seed=1), _gaussians(n=7, k=8, seed=2)
    m = gt.merge_gaussians([a, b])
    assert m["means"].shape == (12, 3) and m["shN"].shape == (12, 8, 3)
    dirs = np.tile([[0.0, 0.6, 0.8]], (5, 1))
    np.testing.assert_allclose(_colour({k: v[:5] for k, v in m.items()}, dirs, 2), _colour(a, dirs, 0), atol=1e-6)
    np.testing.assert_array_equal(m["shN"][5:], b["shN"])


@pytest.mark.parametrize("matrix, match", [
    (np.zeros((3, 3)), "4x4"),
    (np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
    (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1.0]]), "affine"),
])
def test_bad_matrix(matrix, match):
    with pytest.raises(ValueError, match=match):
        gt.transform_gaussians(_gaussians(), matrix)
