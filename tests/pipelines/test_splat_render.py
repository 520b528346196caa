"""splat.render through run() with a real Job: frames equal nskernels.rasterize's, streamed per frame."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from addon.wire.schema import PipelineError, check_inputs
from pipelines.base import Cancelled
from pipelines.splat import render

KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def _expected(scene, sh_degree=None, background=None):
    from nskernels.camera import Cameras
    from nskernels.rasterize import rasterize

    g = {k: torch.tensor(v) for k, v in scene["gaussians"].items()}
    bg = None if background is None else torch.tensor(background, dtype=torch.float32)
    with torch.no_grad():
        out = rasterize(*(g[k] for k in KEYS), Cameras.from_wire(scene["cameras"]), sh_degree=sh_degree,
                        background=bg)
    return out.rgb.numpy(), out.alpha.numpy(), out.depth.numpy()


def test_frames_equal_rasterize_and_stream(tiny_scene, make_job):
    job = make_job()
    inputs = {"gaussians": tiny_scene["gaussians"], "cameras": tiny_scene["cameras"]}
    out = render.run(inputs, render.Params(), job)
    rgb, alpha, depth = _expected(tiny_scene)
    t = len(tiny_scene["cameras"]["world_from_camera"])
    assert out["rgb"].shape == (t, 32, 32, 3) and out["rgb"].dtype == np.float32
    # Same kernels, one camera at a time vs all at once: per-pixel work is identical, so the
    # only differences are float summation order (none expected, allow 1e-6).
    np.testing.assert_allclose(out["rgb"], rgb, atol=1e-6)
    np.testing.assert_allclose(out["alpha"], alpha, atol=1e-6)
    np.testing.assert_array_equal(np.isinf(out["depth"]), np.isinf(depth))
    finite = np.isfinite(depth)
    np.testing.assert_allclose(out["depth"][finite], depth[finite], rtol=1e-5)
    assert 0.05 < (alpha > 0.5).mean() < 0.95, "the scene should cover part of each view"
    # One partial per frame, in order, each equal to that frame of the result.
    assert [p["frame"] for p in job.partials] == list(range(t))
    for p in job.partials:
        np.testing.assert_array_equal(p["rgb"], out["rgb"][p["frame"]])
        np.testing.assert_array_equal(p["depth"], out["depth"][p["frame"]])
        assert p["alpha"].shape == (32, 32) and p["alpha"].dtype == np.float32
    assert [(s, i, n) for s, i, n, *_ in job.progress_log] == [("render", i + 1, t) for i in range(t)]
    check_inputs(render.OUTPUTS, out)


def test_background_and_sh_degree(tiny_scene, make_job):
    inputs = {"gaussians": tiny_scene["gaussians"], "cameras": tiny_scene["cameras"]}
    out = render.run(inputs, render.Params(sh_degree=0, background=[0.2, 0.4, 1.0]), make_job())
    rgb, alpha, _ = _expected(tiny_scene, sh_degree=0, background=[0.2, 0.4, 1.0])
    np.testing.assert_allclose(out["rgb"], rgb, atol=1e-6)
    # Where nothing covers a pixel the background shows through unchanged.
    empty = alpha < 1e-4
    assert empty.any()
    np.testing.assert_allclose(out["rgb"][empty], np.broadcast_to([0.2, 0.4, 1.0], out["rgb"][empty].shape), atol=1e-3)


def test_cancel_between_frames(tiny_scene, make_job):
    job = make_job(cancel_after=3)
    with pytest.raises(Cancelled):
        render.run({"gaussians": tiny_scene["gaussians"], "cameras": tiny_scene["cameras"]}, render.Params(), job)
    assert [p["frame"] for p in job.partials] == [0, 1, 2]


def test_invalid_inputs_name_the_field(tiny_scene, make_job):
    g = dict(tiny_scene["gaussians"])
    bad = g["means"].copy()
    bad[5, 1] = np.nan
    with pytest.raises(PipelineError) as err:
        render.run({"gaussians": {**g, "means": bad}, "cameras": tiny_scene["cameras"]}, render.Params(), make_job())
    assert err.value.field == "inputs.gaussians.means" and err.value.code == "invalid_input"
    with pytest.raises(PipelineError) as err:
        render.run({"gaussians": g, "cameras": tiny_scene["cameras"]}, render.Params(sh_degree=2), make_job())
    assert err.value.field == "params.sh_degree"  # the Gaussians only have degree 1
    with pytest.raises(PipelineError) as err:
        render.run({"gaussians": {**g, "quats": g["quats"][:10]}, "cameras": tiny_scene["cameras"]},
                   render.Params(), make_job())
    assert err.value.field == "inputs.gaussians.quats"
    cams = {**tiny_scene["cameras"], "fx": -3.0}
    with pytest.raises(PipelineError) as err:
        render.run({"gaussians": g, "cameras": cams}, render.Params(), make_job())
    assert err.value.field.startswith("inputs.cameras")


def test_import_does_no_heavy_work():
    code = ("import sys; import pipelines.splat.render, pipelines.splat.reconstruct; "
            "bad = [m for m in ('torch', 'kernels', 'gsplat', 'numba') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert render.probe() == (True, "")
