"""Front-surface depth (`RenderOutput.depth_front`): where along the pixel's ray the Gaussian peaks
whose contribution makes the transmittance first fall to 0.5; the same in the numba kernel, the
pure-torch tiles, the dense reference and the gradient-free pass the gsplat backend uses."""

import math

import pytest
import torch

from nskernels._gsplat_backend import front_depth_pass
from nskernels.camera import Cameras
from nskernels.conventions import PEAK_SUPPORT_SIGMA
from nskernels.rasterize import _rasterize_torch, rasterize
from nskernels.reference import rasterize_dense
from nskernels.gaussians import covariances
from nskernels.projection import peak_depth
from tests.kernels.kernel_scenes import look_at, make_cameras, make_gaussians

PARAMS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def _front_camera(width=16, height=16):
    # At the origin looking down -Z... of the world: camera at z = 0 looking along world -Z.
    m = torch.eye(4)
    return Cameras(world_from_camera=m[None], fx=torch.tensor([20.0]), fy=torch.tensor([20.0]),
                   cx=torch.tensor([width / 2]), cy=torch.tensor([height / 2]), width=width, height=height)


def _layers(alphas_depths):
    """Wide flat Gaussians straight in front of the camera: opacity alpha at depth z each."""
    n = len(alphas_depths)
    means = torch.tensor([[0.0, 0.0, -z] for _, z in alphas_depths])
    opac = torch.tensor([a for a, _ in alphas_depths])
    return {
        "means": means, "quats": torch.tensor([[1.0, 0, 0, 0]] * n),
        "scales": torch.log(torch.tensor([[50.0, 50.0, 0.01]] * n)),
        "opacities": torch.log(opac / (1 - opac)), "sh0": torch.zeros(n, 3), "shN": torch.zeros(n, 0, 3),
    }


@pytest.mark.parametrize("impl", ["numba", "torch", "dense"])
@pytest.mark.parametrize("layers, front", [
    ([(0.4, 2.0), (0.9, 3.0)], 3.0),     # T: 1 -> 0.6 -> 0.06: crosses 0.5 at the back layer
    ([(0.6, 2.0), (0.9, 3.0)], 2.0),     # crosses at the front layer
    ([(0.3, 2.0), (0.1, 3.0)], 2.0),     # never crosses (alpha 0.37): the heaviest contribution
])
def test_layers(impl, layers, front):
    g = _layers(layers)
    cams = _front_camera()
    if impl == "dense":
        out = rasterize_dense(**g, cameras=cams)
    else:
        out = _rasterize_torch(**g, cameras=cams, degree=0, background=None, impl=impl)
    centre = out.depth_front[0, 8, 8]
    assert float(centre) == pytest.approx(front, abs=1e-4)
    # the expected depth lies between the layers: it is what composited the wrong side before
    assert 2.0 < float(out.depth[0, 8, 8]) < 3.0


@pytest.mark.parametrize("impl", ["numba", "torch"])
def test_backends_agree_with_dense(impl):
    params = make_gaussians(250, sh_degree=1, seed=3, log_scale=(-3.0, -1.0), requires_grad=False)
    cams = make_cameras(2, 40, 32, seed=3)
    p = {k: params[k] for k in PARAMS}
    out = _rasterize_torch(**p, cameras=cams, degree=1, background=None, impl=impl)
    ref = rasterize_dense(**p, cameras=cams)
    fin = torch.isfinite(ref.depth_front)
    assert torch.equal(fin, torch.isfinite(out.depth_front))
    assert fin.float().mean() > 0.3
    # The crossing picks one Gaussian's depth; float-order differences may pick a neighbour
    # on a handful of pixels where T lands on 0.5 within rounding.
    close = torch.isclose(out.depth_front[fin], ref.depth_front[fin], atol=1e-4)
    assert close.float().mean() > 0.995
    # the gsplat backend's front pass (pure torch, any device) is the same rule
    front = front_depth_pass(p["means"], p["quats"], p["scales"], p["opacities"], cams)
    assert torch.isclose(front[fin], ref.depth_front[fin], atol=1e-4).float().mean() > 0.995


def test_front_depth_has_no_gradient_and_does_not_break_backward():
    params = make_gaussians(60, sh_degree=0, seed=1)
    cams = make_cameras(1, 24, 24, seed=1)
    out = rasterize(**{k: params[k] for k in PARAMS}, cameras=cams, backend="torch")
    assert not out.depth_front.requires_grad
    (out.rgb.sum() + out.depth[torch.isfinite(out.depth)].sum()).backward()
    assert params["means"].grad is not None and torch.isfinite(params["means"].grad).all()


def test_peak_depth_is_where_the_gaussian_is_densest_along_the_ray():
    """t* = r^T P mu / r^T P r against a brute-force search along each ray (the density from
    `covariances`, inverted by torch.linalg.inv: not the R S^-1 factor `peak_depth` uses);
    the answer stays within PEAK_SUPPORT_SIGMA largest standard deviations of the centre's depth."""
    params = make_gaussians(60, sh_degree=0, seed=5, log_scale=(-4.0, -0.5), requires_grad=False)
    cams = make_cameras(2, 24, 20, seed=5)
    camera_from_world = cams.camera_from_world(torch.float64)
    g = torch.Generator().manual_seed(5)
    counts = {"peak": 0, "bounded": 0}
    for c in range(len(cams)):
        R, t = camera_from_world[c, :3, :3], camera_from_world[c, :3, 3]
        mu = params["means"].double() @ R.T + t  # [N, 3]
        precision = torch.linalg.inv(R @ covariances(params["quats"], params["scales"]).double() @ R.T)
        # Rays towards each Gaussian, some jittered off it by more than its size.
        jitter = torch.where(torch.arange(len(mu)) % 2 == 0, 0.02, 1.0).double()[:, None]
        aim = mu + jitter * torch.randn(mu.shape, generator=g, dtype=torch.float64)
        u, v = aim[:, 0] / aim[:, 2], aim[:, 1] / aim[:, 2]
        rays = torch.stack([u, v, torch.ones_like(u)], -1)  # [N, 3]
        got = peak_depth(params["means"], params["quats"], params["scales"], camera_from_world[c].expand(len(mu), 4, 4),
                         u, v, mu[:, 2])
        coarse = torch.linspace(0.05, 12.0, 4001, dtype=torch.float64)  # 3 mm steps, then 3 um steps

        def densest(ts, i):
            d = ts[:, None] * rays[i] - mu[i]
            exponent = ((d @ precision[i]) * d).sum(-1)
            k = exponent.argmin()
            return ts[k], exponent[k]

        reach = PEAK_SUPPORT_SIGMA * torch.exp(params["scales"].double().amax(-1))
        for i in range(len(mu)):
            t0, _ = densest(coarse, i)
            best, _ = densest(torch.linspace(float(t0) - 0.003, float(t0) + 0.003, 2001, dtype=torch.float64), i)
            lo, hi = float(mu[i, 2] - reach[i]), float(mu[i, 2] + reach[i])
            if lo < float(best) < hi:
                assert float(got[i]) == pytest.approx(float(best), abs=1e-5), i
                counts["peak"] += 1
            else:  # a ray that passes beside the Gaussian (the EWA footprint lets a few through)
                assert float(got[i]) == pytest.approx(min(max(float(best), lo), hi), abs=1e-9), i
                counts["bounded"] += 1
    assert min(counts.values()) >= 10, counts


@pytest.mark.parametrize("impl", ["numba", "torch", "dense"])
def test_flat_floor_gives_the_plane_depth(impl):
    """A floor of large flat Gaussians seen at a grazing angle: depth_front is the depth where each
    pixel's ray meets the floor, which no per-Gaussian (centre) depth gives."""
    spacing = 0.25
    ax = torch.arange(-3.0, 3.0 + 1e-6, spacing)
    x, y = torch.meshgrid(ax, torch.arange(-1.0, 6.0 + 1e-6, spacing), indexing="ij")
    n = x.numel()
    g = {"means": torch.stack([x.reshape(-1), y.reshape(-1), torch.zeros(n)], 1),
         "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(n, 4).contiguous(),
         "scales": torch.log(torch.tensor([[0.8 * spacing, 0.8 * spacing, 0.002]])).expand(n, 3).contiguous(),
         "opacities": torch.full((n,), 5.0), "sh0": torch.zeros(n, 3), "shN": torch.zeros(n, 0, 3)}
    w, h, f = 48, 36, 50.0
    eye = (0.3, -3.0, 1.0)  # about 17 degrees down onto the floor
    cams = Cameras(world_from_camera=look_at(eye, (0.0, 1.0, 0.2))[None], fx=torch.tensor([f]), fy=torch.tensor([f]),
                   cx=torch.tensor([w / 2]), cy=torch.tensor([h / 2]), width=w, height=h)
    if impl == "dense":
        out = rasterize_dense(**g, cameras=cams)
    else:
        out = _rasterize_torch(**g, cameras=cams, degree=0, background=None, impl=impl)
    # The analytic depth of the plane z = 0 along each pixel's ray (camera depth = t, ray z = 1).
    rows, cols = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    m = cams.world_from_camera[0].double()
    d_cam = torch.stack([(cols - w / 2) / f, -(rows - h / 2) / f, -torch.ones_like(cols)], -1).double()
    d = d_cam @ m[:3, :3].T
    t_plane = torch.where(d[..., 2] < 0, -m[2, 3] / d[..., 2], torch.full_like(d[..., 2], math.inf))
    hit = torch.tensor(eye, dtype=torch.float64) + t_plane[..., None] * d
    inside = (hit[..., 0].abs() < 2.5) & (hit[..., 1] > -0.5) & (hit[..., 1] < 5.5) & (out.alpha[0] > 0.5)
    assert inside.sum() > 0.3 * w * h
    front = out.depth_front[0].double()
    # Within a centimetre out to 8 m: a Gaussian 2 mm thick peaks along a grazing ray a little
    # off its mid-plane, towards its centre.
    # Within a few millimetres out to 6 m: a Gaussian 2 mm thick peaks along a grazing ray a
    # little off its mid-plane, towards its centre. Farther out one pixel row spans more than a
    # metre of this floor (8 degrees), the 0.3 px dilation lets Gaussians a metre from the ray's
    # floor point cover it, and their depths are kept within their reach (0.67 m) of their centres.
    inside &= t_plane < 6.0
    assert inside.sum() > 0.25 * w * h
    torch.testing.assert_close(front[inside], t_plane[inside], atol=5e-3, rtol=0)
    # Per-Gaussian depths (the expected depth mixes the centres' depths) miss the floor by
    # tens of centimetres at this angle: what composited the wrong side of a floor's contacts.
    assert (out.depth[0].double()[inside] - t_plane[inside]).abs().max() > 0.1
