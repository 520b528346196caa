"""Front-surface depth (`RenderOutput.depth_front`): the depth where the transmittance first falls
to 0.5; the same in the numba kernel, the pure-torch tiles, the dense reference and the
gradient-free pass the gsplat backend uses."""


import pytest
import torch

from nskernels._gsplat_backend import front_depth_pass
from nskernels.camera import Cameras
from nskernels.rasterize import _rasterize_torch, rasterize
from nskernels.reference import rasterize_dense
from tests.kernels.kernel_scenes import make_cameras, make_gaussians

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
