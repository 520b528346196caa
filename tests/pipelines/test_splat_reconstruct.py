"""splat.reconstruct through run() with a real Job, on a tiny scene rendered by the kernels."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from addon.wire.schema import PipelineError, check_inputs
from pipelines.base import Cancelled
from pipelines.splat import reconstruct

# Small but real: 32x32 views, random initialisation, the paper's loss and densification.
FAST = dict(steps=200, test_every=5, random_points=1500, preview_every=50, partial_every=0)


def _psnr_of(message: str) -> float:
    return float(re.search(r"psnr ([-\d.]+) dB", message).group(1))


@pytest.fixture(scope="module")
def trained(tiny_scene):
    from recording_job import RecordingJob

    job = RecordingJob()
    inputs = {"images": tiny_scene["images"], "cameras": tiny_scene["cameras"]}
    out = reconstruct.run(inputs, reconstruct.Params(**FAST), job)
    return out, job


def test_psnr_rises_and_outputs_match_contract(trained):
    out, job = trained
    train = [p for p in job.progress_log if p[0] == "train"]
    assert [p[1] for p in train] == list(range(1, FAST["steps"] + 1))
    first = _psnr_of(train[0][3])
    m = out["metrics"]
    assert m["views"] == "held_out" and m["steps"] == FAST["steps"]
    # Random init renders a grey-ish haze (~10-15 dB); 200 steps recover the scene well.
    assert m["psnr"] > first + 8.0, (first, m)
    assert m["psnr"] > 22.0 and 0.6 < m["ssim"] <= 1.0
    assert m["count"] == len(out["gaussians"]["means"]) > 0
    assert out["gaussians"]["shN"].shape[1:] == (15, 3)  # sh_degree 3 by default
    assert out["color_space"] == "linear"
    check_inputs(reconstruct.OUTPUTS, out)
    previews = [p[4] for p in train if p[4] is not None]
    assert len(previews) == FAST["steps"] // FAST["preview_every"]
    assert all(p.dtype == np.uint8 and p.shape == (32, 32, 3) for p in previews)


def test_alpha_supervision_keeps_background_empty(trained, tiny_scene):
    from pipelines.splat import render

    from recording_job import RecordingJob

    out, _ = trained
    target_alpha = tiny_scene["images"][..., 3]
    frames = render.run({"gaussians": out["gaussians"], "cameras": tiny_scene["cameras"]}, render.Params(),
                        RecordingJob())
    empty = target_alpha < 1e-3
    covered = target_alpha > 0.9
    assert empty.sum() > 100 and covered.sum() > 100
    assert frames["alpha"][empty].mean() < 0.05
    assert frames["alpha"][covered].mean() > 0.85


def test_cancel_keeps_the_state_of_that_step(tiny_scene, make_job):
    inputs = {"images": tiny_scene["images"], "cameras": tiny_scene["cameras"]}
    params = reconstruct.Params(steps=30, test_every=5, random_points=800, preview_every=0, partial_every=5,
                                densify_from=0.1, densify_every=10, seed=7)
    full = make_job()
    reconstruct.run(inputs, params, full)
    at = {p["step"]: p["gaussians"] for p in full.partials}
    assert sorted(at) == [5, 10, 15, 20, 25, 30]
    # Densification at steps 10 and 20 changed the count: the state at 25 is not the initial one.
    assert len(at[25]["means"]) != len(at[5]["means"])

    k = 23  # between two partials: only the cancel itself can deliver this state
    job = make_job(cancel_after=k)
    with pytest.raises(Cancelled):
        reconstruct.run(inputs, params, job)
    assert time.monotonic() - job.cancelled_at < 1.0
    assert [p["step"] for p in job.partials] == [5, 10, 15, 20, k]
    # Same seed, deterministic kernels: identical to the uncancelled run at the same steps.
    for p in job.partials[:-1]:
        for key, value in at[p["step"]].items():
            np.testing.assert_array_equal(p["gaussians"][key], value)
    job_at_25 = make_job(cancel_after=25)
    with pytest.raises(Cancelled):
        reconstruct.run(inputs, params, job_at_25)
    assert job_at_25.partials[-1]["step"] == 25
    for key, value in at[25].items():
        np.testing.assert_array_equal(job_at_25.partials[-1]["gaussians"][key], value)


def test_points_initialise_and_u1_images(tiny_scene, make_job):
    rng = np.random.default_rng(0)
    pts = (rng.random((300, 3)) * 1.2 - 0.6).astype(np.float32)
    cols = rng.random((300, 3)).astype(np.float32)
    images = (np.clip(tiny_scene["images"], 0, 1) * 255 + 0.5).astype(np.uint8)
    job = make_job()
    out = reconstruct.run({"images": images, "cameras": tiny_scene["cameras"], "points": pts, "colors": cols},
                          reconstruct.Params(steps=5, sh_degree=1, preview_every=0, partial_every=5), job)
    assert out["color_space"] == "srgb"
    g0 = job.partials[0]["gaussians"]
    assert len(g0["means"]) == 300  # no densification yet within 5 steps
    assert out["gaussians"]["shN"].shape == (300, 3, 3)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda i: {**i, "images": i["images"][:-1]}, "inputs.cameras.world_from_camera"),
        (lambda i: {**i, "images": i["images"][..., :2]}, "inputs.images"),
        (lambda i: {**i, "images": i["images"].astype(np.int16)}, "inputs.images"),
        (lambda i: {**i, "images": np.where(np.arange(4) == 1, np.nan, i["images"]).astype(np.float32)}, "inputs.images"),
        (lambda i: {**i, "colors": np.zeros((5, 3), np.float32)}, "inputs.colors"),
        (lambda i: {**i, "points": np.full((5, 3), np.inf, np.float32)}, "inputs.points"),
        (lambda i: {**i, "points": np.zeros((5, 3), np.float32), "colors": np.zeros((4, 3), np.float32)}, "inputs.colors"),
        (lambda i: {**i, "cameras": {**i["cameras"], "width": 31}}, "inputs.cameras.width"),
    ],
)
def test_invalid_inputs_name_the_field(tiny_scene, make_job, change, field):
    inputs = change({"images": tiny_scene["images"], "cameras": tiny_scene["cameras"]})
    job = make_job()
    with pytest.raises(PipelineError) as err:
        reconstruct.run(inputs, reconstruct.Params(steps=2), job)
    assert err.value.field == field, err.value.message
    assert err.value.code == "invalid_input"
    assert job.progress_log == [], "inputs are checked before any work"


def test_invalid_params_name_the_field(tiny_scene, make_job):
    inputs = {"images": tiny_scene["images"], "cameras": tiny_scene["cameras"]}
    with pytest.raises(PipelineError) as err:
        reconstruct.run(inputs, reconstruct.Params(test_every=1), make_job())
    assert err.value.field == "params.test_every"
    with pytest.raises(PipelineError) as err:
        reconstruct.run(inputs, reconstruct.Params(background=[0.0, float("nan"), 0.0]), make_job())
    assert err.value.field == "params.background"


def test_schedule_scales_with_steps():
    paper = reconstruct.schedule(reconstruct.Params(steps=30_000, densify_from=500 / 30_000))
    assert (paper.densify_from, paper.densify_until, paper.reset_every, paper.sh_every) == (500, 15_000, 3000, 1000)
    short = reconstruct.schedule(reconstruct.Params(steps=3000))  # the paper shape, 10x shorter
    assert short.densify_until == 1500 and short.sh_every == 100


def test_sh_degree_rises_as_the_paper(tiny_scene, make_job, monkeypatch):
    # The paper: `if iteration % 1000 == 0: oneupSHdegree()` before rendering iteration 1000.
    import nskernels.rasterize

    real = nskernels.rasterize.rasterize
    degrees = []

    def recording(*args, **kwargs):
        degrees.append(kwargs["sh_degree"])
        return real(*args, **kwargs)

    monkeypatch.setattr(nskernels.rasterize, "rasterize", recording)
    params = reconstruct.Params(steps=9, sh_degree=2, sh_degree_every=3 / 9, test_every=0, random_points=200,
                                preview_every=0, partial_every=0)
    reconstruct.run({"images": tiny_scene["images"], "cameras": tiny_scene["cameras"]}, params, make_job())
    # Steps 1..9, then one evaluation render per view at the full degree.
    assert degrees[:9] == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert set(degrees[9:]) == {2}


def test_densification_window_and_opacity_reset():
    # The paper densifies at iteration % 100 == 0 for densify_from < iteration < densify_until
    # and resets opacities to min(opacity, 0.01) every 3000 iterations inside that window.
    import torch

    from pipelines.splat.densify import CappedStrategy

    n = 50
    g = torch.Generator().manual_seed(0)
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.randn(n, 3, generator=g)),
        "quats": torch.nn.Parameter(torch.randn(n, 4, generator=g)),
        "scales": torch.nn.Parameter(torch.full((n, 3), -6.0)),  # small: clone, not split
        "opacities": torch.nn.Parameter(torch.full((n,), 3.0)),
    })
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = CappedStrategy(refine_start_iter=2, refine_stop_iter=8, refine_every=4, reset_every=6,
                              grow_grad2d=1e-9, prune_opa=0.005)
    state = strategy.initialize_state(scene_scale=1.0)
    counts, opacities = {}, {}
    for step in range(1, 13):
        means2d = (params["means"][None, :, :2] * 10.0).clone()
        means2d.retain_grad()
        means2d.sum().backward()
        info = {"means2d": means2d, "radii": torch.ones(1, len(params["means"]), 2, dtype=torch.int32),
                "gaussian_ids": None, "width": 32, "height": 32, "n_cameras": 1}
        strategy.step_post_backward(params, optimizers, state, step, info)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        counts[step] = len(params["means"])
        opacities[step] = float(torch.sigmoid(params["opacities"].detach()).max())
    # Growth at step 4 only: 8 is densify_until itself, so nothing happens there or after.
    assert counts[3] == n and counts[4] == 2 * n and counts[12] == 2 * n
    # Reset at 6 (< 8) to 2 x prune_opa = 0.01; none at 12 (outside the window).
    assert opacities[5] > 0.9 and opacities[6] == pytest.approx(0.01, rel=1e-5)
