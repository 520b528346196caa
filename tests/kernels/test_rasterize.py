"""The torch backend (numba kernels and the pure-torch fallback) against the dense reference.

The gsplat backend has its own file, test_gsplat_backend.py.
"""

import subprocess
import sys

import pytest
import torch

import nskernels.reference as reference
from kernel_scenes import (
    ATOL_IMAGE, PARAMS, compare, cotangents, edge_scene, loss_of, make_cameras, make_gaussians,
)
from nskernels.camera import Cameras
from nskernels.output import RenderMeta
from nskernels.rasterize import _rasterize_torch, backend_status, rasterize
from nskernels.reference import rasterize_dense


def _render(params, cams, impl, **kw):
    p = {k: params[k] for k in PARAMS}
    if impl == "numba":
        return rasterize(**p, cameras=cams, backend="torch", **kw)
    degree = kw.get("sh_degree")
    degree = {0: 0, 3: 1, 8: 2, 15: 3}[params["shN"].shape[1]] if degree is None else degree
    return _rasterize_torch(**p, cameras=cams, degree=degree, background=kw.get("background"), impl=impl)


SCENES = {
    # name: (N, cameras, width, height, sh degree, off-centre principal point, background)
    "sh3_two_cams_offcentre": (200, 2, 48, 40, 3, True, None),
    "sh0_background": (150, 1, 37, 29, 0, False, (0.2, 0.5, 0.9)),
    "sh1_three_cams": (120, 3, 32, 32, 1, True, None),
    "sh2_dense_64px": (300, 1, 64, 64, 2, False, (1.0, 1.0, 1.0)),
}


# The fallback runs on one scene (plus the edge cases) to keep the suite short.
@pytest.mark.parametrize("name, impl", [(name, "numba") for name in SCENES] + [("sh3_two_cams_offcentre", "torch")])
def test_matches_dense_reference(name, impl):
    n, n_cams, W, H, degree, off_centre, bg = SCENES[name]
    seed = sorted(SCENES).index(name)
    params = make_gaussians(n, sh_degree=degree, seed=seed, log_scale=(-3.5, -1.0))
    cams = make_cameras(n_cams, W, H, seed=seed, off_centre=off_centre)
    background = None if bg is None else torch.tensor(bg)
    out = _render(params, cams, impl, background=background)
    ref = rasterize_dense(**{k: params[k] for k in PARAMS}, cameras=cams, background=background)
    assert float(ref.alpha.detach().max()) > 0.5 and float(ref.alpha.detach().min()) < 0.1  # a real, partly empty image
    compare(out, ref, params)


def test_lower_sh_degree_than_stored():
    params = make_gaussians(100, sh_degree=3, seed=7)
    cams = make_cameras(1, 32, 24, seed=7)
    out = rasterize(**params, cameras=cams, sh_degree=1, backend="torch")
    ref = rasterize_dense(**params, cameras=cams, sh_degree=1)
    compare(out, ref, params)
    # Degree-2/3 coefficients must not matter at degree 1.
    assert torch.autograd.grad(out.rgb.sum(), params["shN"])[0][:, 3:].abs().max() == 0


@pytest.mark.parametrize("impl", ["numba", "torch"])
def test_edge_cases_match_dense(impl):
    params, cams = edge_scene()
    out = _render(params, cams, impl)
    ref = rasterize_dense(**params, cameras=cams)
    compare(out, ref, params)
    visible = out.meta["visible"][0]
    assert not visible[30] and not visible[31] and not visible[32] and not visible[36]
    assert visible[33] and visible[34] and visible[35]


def test_early_termination_matches_dense_and_cuts_the_back():
    # 60 opaque Gaussians stacked in depth over the image centre: without the stop rule
    # T would reach 0.02^60; with it alpha stays below 1 - 1e-4 and the back ones get nothing.
    n = 60
    g = torch.Generator().manual_seed(5)
    depth = torch.linspace(2.0, 5.0, n)
    params = {
        "means": torch.stack([0.01 * torch.randn(n, generator=g), 0.01 * torch.randn(n, generator=g), -depth], -1),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.full((n, 3), -1.5) + 0.1 * torch.randn(n, 3, generator=g),
        "opacities": torch.full((n,), 4.0),
        "sh0": torch.randn(n, 3, generator=g),
        "shN": torch.zeros(n, 0, 3),
    }
    for t in params.values():
        t.requires_grad_(True)
    cams = Cameras(world_from_camera=torch.eye(4)[None], fx=torch.tensor([30.0]), fy=torch.tensor([30.0]),
                   cx=torch.tensor([16.0]), cy=torch.tensor([16.0]), width=32, height=32)
    out = rasterize(**params, cameras=cams, backend="torch")
    ref = rasterize_dense(**params, cameras=cams)
    compare(out, ref, params)
    assert 0.999 < float(out.alpha.detach().max()) <= 1 - 1e-4 + 1e-6
    # At the centre pixel the stack saturates: only the front Gaussians reach it.
    g_sh0 = torch.autograd.grad(out.rgb[0, 16, 16].sum(), params["sh0"])[0].abs().sum(-1)
    # Two layers of alpha ~0.98 leave T ~ 3e-4; the third would take it below 1e-4 although
    # it covers the pixel just as well, so it and everything behind it get nothing.
    assert g_sh0[:2].min() > 0 and g_sh0[2:].max() == 0


def test_dense_reference_chunking_changes_nothing(monkeypatch):
    params = make_gaussians(80, sh_degree=1, seed=11)
    cams = make_cameras(1, 24, 20, seed=11)
    whole = rasterize_dense(**params, cameras=cams)
    monkeypatch.setattr(reference, "_PAIRS_PER_CHUNK", 80 * 37)  # 37 pixels per chunk
    chunked = rasterize_dense(**params, cameras=cams)
    assert torch.allclose(whole.rgb, chunked.rgb, atol=1e-6) and torch.allclose(whole.alpha, chunked.alpha, atol=1e-6)
    v = cotangents(whole)
    a = torch.autograd.grad(loss_of(whole, v), params["means"])[0]
    b = torch.autograd.grad(loss_of(chunked, v), params["means"])[0]
    assert torch.allclose(a, b, atol=1e-5 * float(a.abs().max()))


def test_meta_matches_gsplat_contract():
    params = make_gaussians(150, sh_degree=1, seed=2, requires_grad=False)
    params["means"][:20] *= 6.0  # some outside the views or behind the cameras
    for t in params.values():
        t.requires_grad_(True)
    cams = make_cameras(2, 40, 30, seed=2)
    out = rasterize(**params, cameras=cams, backend="torch")
    ref = rasterize_dense(**params, cameras=cams)
    m = out.meta
    # The typed meta is pinned: these keys, by name, are what gsplat's strategies read.
    assert isinstance(m, RenderMeta)
    assert list(m) == ["means2d", "radii", "gaussian_ids", "width", "height", "n_cameras", "visible", "depths"]
    assert m["means2d"] is m.means2d and "radii" in m and "absgrad" not in m
    assert m["means2d"].shape == (2, 150, 2) and m["means2d"].requires_grad
    assert m["radii"].shape == (2, 150, 2) and m["radii"].dtype == torch.int32
    assert m["gaussian_ids"] is None and m["width"] == 40 and m["height"] == 30 and m["n_cameras"] == 2
    assert torch.equal(m["visible"], (m["radii"] > 0).all(-1))
    assert m["visible"].any() and not m["visible"].all()
    vis = m["visible"]
    assert torch.allclose(m["means2d"][vis], ref.meta["means2d"][vis], atol=1e-3)
    assert torch.allclose(m["depths"], ref.meta["depths"], atol=1e-5)
    # Every Gaussian the dense reference sees anywhere in an image is marked visible.
    seen = torch.autograd.grad(ref.alpha.sum(), params["opacities"], retain_graph=True)[0] != 0
    assert vis.any(0)[seen].all()


def test_default_strategy_densifies_with_our_meta():
    from gsplat.strategy import DefaultStrategy

    params = make_gaussians(100, sh_degree=1, seed=4, requires_grad=False)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in params.items()})
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1, grow_grad2d=1e-6, prune_opa=0.0)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    cams = make_cameras(2, 32, 32, seed=4)
    out = rasterize(**params, cameras=cams, backend="torch")
    strategy.step_pre_backward(params, optimizers, state, 1, out.meta)
    (out.rgb - 0.5).abs().mean().backward()
    assert out.meta["means2d"].grad is not None and out.meta["means2d"].grad.abs().max() > 0
    n_before = len(params["means"])
    strategy.step_post_backward(params, optimizers, state, 1, out.meta)
    n_after = len(params["means"])
    assert n_after > n_before
    assert all(len(p) == n_after for p in params.values())
    # The grown set renders.
    out2 = rasterize(**params, cameras=cams, backend="torch")
    assert torch.isfinite(out2.rgb).all()


def test_fallback_stays_memory_bounded_on_big_images():
    # 512 x 384 with a Gaussian covering everything: the fallback must go tile chunk by tile
    # chunk (a [pixels x N] tensor would be 196608 x 40).
    params = make_gaussians(40, sh_degree=0, seed=8, log_scale=(-2.0, 0.5))
    cams = make_cameras(1, 512, 384, seed=8)
    a = _render(params, cams, "torch")
    b = _render(params, cams, "numba")
    assert torch.allclose(a.rgb, b.rgb, atol=ATOL_IMAGE) and float(a.alpha.detach().max()) > 0.5


def test_bad_inputs_are_named():
    params = make_gaussians(10, sh_degree=1, seed=0, requires_grad=False)
    cams = make_cameras(1, 16, 16)
    with pytest.raises(ValueError, match="backend"):
        rasterize(**params, cameras=cams, backend="cuda")
    with pytest.raises(ValueError, match="quats"):
        rasterize(**{**params, "quats": params["quats"][:, :3]}, cameras=cams)
    with pytest.raises(ValueError, match="shN"):
        rasterize(**{**params, "shN": torch.zeros(10, 5, 3)}, cameras=cams)
    with pytest.raises(ValueError, match="sh_degree"):
        rasterize(**params, cameras=cams, sh_degree=2)
    with pytest.raises(ValueError, match="background"):
        rasterize(**params, cameras=cams, background=torch.zeros(4))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="gsplat: no CUDA device"):
            rasterize(**params, cameras=cams, backend="gsplat")


def test_backend_status_and_no_import_time_work():
    status = backend_status()
    assert set(status) == {"torch", "gsplat"}
    assert status["torch"][0] and "numba" in status["torch"][1]
    if not torch.cuda.is_available():
        assert status["gsplat"] == (False, "gsplat: no CUDA device")
    code = (
        "import sys, nskernels.rasterize, nskernels.reference, nskernels.camera\n"
        "assert 'gsplat' not in sys.modules and 'numba' not in sys.modules, sorted(sys.modules)\n"
        "sys.modules['numba'] = None  # numba not importable -> the pure-torch fallback\n"
        "import torch\n"
        "from nskernels.rasterize import backend_status, rasterize\n"
        "from nskernels.camera import Cameras\n"
        "s = backend_status()['torch']\n"
        "assert s[0] and s[1].startswith('pure-torch fallback'), s\n"
        "n = 20\n"
        "cams = Cameras(torch.eye(4)[None], torch.tensor([20.]), torch.tensor([20.]), torch.tensor([8.]), torch.tensor([8.]), 16, 16)\n"
        "m = torch.randn(n, 3) * 0.3 + torch.tensor([0., 0., -3.])\n"
        "out = rasterize(m, torch.randn(n, 4), torch.full((n, 3), -2.), torch.zeros(n), torch.randn(n, 3), torch.zeros(n, 0, 3), cams)\n"
        "assert out.alpha.max() > 0.3 and 'numba' not in str(sys.modules.get('numba'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
