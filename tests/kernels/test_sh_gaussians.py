"""SH colours against scipy's complex spherical harmonics; quaternions and covariances."""

import math

import pytest
import torch
from scipy.special import sph_harm_y

from nskernels.gaussians import covariances, quat_to_rotmat
from nskernels.sh import SH_C0, eval_sh, view_colours


def _real_sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Real SH from scipy's complex Y_l^m (Condon-Shortley phase included), in the 3DGS order
    l^2 + l + m: sqrt(2) Im Y_l^|m| for m < 0, Y_l^0, sqrt(2) Re Y_l^m for m > 0. [P, (d+1)^2]"""
    d = dirs.double().numpy()
    polar = torch.from_numpy(d[:, 2]).clamp(-1, 1).acos().numpy()
    azimuth = torch.from_numpy(d[:, 1]).atan2(torch.from_numpy(d[:, 0])).numpy()
    cols = []
    for l in range(degree + 1):
        for m in range(-l, l + 1):
            y = sph_harm_y(l, abs(m), polar, azimuth)
            cols.append(y.real if m == 0 else math.sqrt(2) * (y.imag if m < 0 else y.real))
    return torch.tensor(list(zip(*cols)), dtype=torch.float64)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_eval_sh_matches_scipy(degree):
    g = torch.Generator().manual_seed(degree)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=g, dtype=torch.float64), dim=-1)
    coeffs = torch.randn(64, 16, 3, generator=g, dtype=torch.float64)
    basis = _real_sh_basis(degree, dirs)  # [P, n]
    n = (degree + 1) ** 2
    expected = torch.einsum("pk,pkc->pc", basis, coeffs[:, :n])
    assert torch.allclose(eval_sh(degree, coeffs, dirs), expected, atol=1e-10)


def test_view_colours_direction_is_world_mean_minus_camera_centre_and_clamped():
    # One Gaussian straight above a camera centre: direction (0, 0, 1), where only the
    # l=1, m=0 basis function C1 * z is non-zero among degree-1 terms.
    means = torch.tensor([[1.0, 2.0, 5.0]])
    centres = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 7.0]])  # below and above
    sh0 = torch.tensor([[0.2, -0.1, -3.0]])
    shN = torch.zeros(1, 3, 3)
    shN[0, 1] = torch.tensor([0.5, 0.5, 0.5])
    col = view_colours(means, sh0, shN, centres, degree=1)
    C1 = 0.4886025119029199
    expected_up = (SH_C0 * sh0[0] + C1 * 0.5 + 0.5).clamp_min(0)
    expected_down = (SH_C0 * sh0[0] - C1 * 0.5 + 0.5).clamp_min(0)
    assert torch.allclose(col[0, 0], expected_up, atol=1e-6)
    assert torch.allclose(col[1, 0], expected_down, atol=1e-6)
    assert col[0, 0, 2] == 0.0  # SH + 0.5 < 0 is clamped to 0
    col0 = view_colours(means, sh0, shN, centres, degree=0)
    assert torch.allclose(col0[1, 0], (SH_C0 * sh0[0] + 0.5).clamp_min(0), atol=1e-7)


def test_quaternion_rotations():
    s = math.sqrt(0.5)
    R = quat_to_rotmat(torch.tensor([[1.0, 0, 0, 0], [s, 0, 0, s], [0.0, 2.0, 0, 0]]))
    assert torch.allclose(R[0], torch.eye(3), atol=1e-7)
    # 90 degrees about z maps x to y.
    assert torch.allclose(R[1] @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1.0, 0]), atol=1e-6)
    # Unnormalised (0, 2, 0, 0) is 180 degrees about x.
    assert torch.allclose(R[2], torch.diag(torch.tensor([1.0, -1.0, -1.0])), atol=1e-6)
    q = torch.randn(100, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Rr = quat_to_rotmat(q)
    assert torch.allclose(Rr @ Rr.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(100, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(Rr), torch.ones(100, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(quat_to_rotmat(3.0 * q), Rr, atol=1e-12)


def test_covariance_axes_and_variances():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(20, 4, generator=g, dtype=torch.float64)
    s = torch.randn(20, 3, generator=g, dtype=torch.float64)
    cov = covariances(q, s)
    R = quat_to_rotmat(q)
    for i in range(3):
        axis = R[:, :, i]  # local axis i in world
        assert torch.allclose(torch.einsum("ni,nij,nj->n", axis, cov, axis), torch.exp(2 * s[:, i]), rtol=1e-10)
