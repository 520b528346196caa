"""splat.select (semantic tracing) and the numpy selections/edits of addon.core.splat_edit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from addon.core import splat_edit
from addon.wire.schema import PipelineError, check_inputs
from pipelines.splat import select
from tests.kernels.kernel_scenes import look_at

C0 = 0.28209479177387814


def _ball(n, centre, radius, rng):
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = radius * rng.uniform(0.0, 1.0, n) ** (1 / 3)
    return d * r[:, None] + centre


def two_objects(n=600, seed=0):
    """Two balls of Gaussians side by side (labels 0 and 1), partly overlapping in the view."""
    rng = np.random.default_rng(seed)
    means = np.concatenate([_ball(n, [-0.45, 0.0, 0.0], 0.5, rng), _ball(n, [0.45, 0.3, 0.05], 0.5, rng)])
    m = len(means)
    g = {
        "means": means.astype(np.float32), "quats": rng.standard_normal((m, 4)).astype(np.float32),
        "scales": np.log(rng.uniform(0.02, 0.06, (m, 3))).astype(np.float32),
        "opacities": rng.normal(0.0, 1.0, m).astype(np.float32),
        "sh0": rng.standard_normal((m, 3)).astype(np.float32), "shN": np.zeros((m, 0, 3), np.float32),
    }
    return g, np.repeat([0, 1], n)


def _camera(w=96, h=72):
    m = look_at((0.0, -3.5, 0.8), (0.0, 0.0, 0.0)).numpy()
    return {"world_from_camera": m[None].astype(np.float32), "fx": 1.2 * w, "fy": 1.2 * w, "cx": w / 2, "cy": h / 2,
            "width": w, "height": h}


def test_mask_selects_one_object(make_job):
    from nskernels.camera import Cameras
    from nskernels.rasterize import rasterize

    g, labels = two_objects()
    cams = _camera()
    # The painted mask: where object 0 is what one sees (it covers the pixel more than object 1 does).
    t = {k: torch.tensor(v) for k, v in g.items()}
    with torch.no_grad():
        only0 = rasterize(*(t[k][labels == 0] for k in ("means", "quats", "scales", "opacities", "sh0", "shN")),
                          Cameras.from_wire(cams))
    mask = (only0.alpha[0].numpy() > 0.5).astype(np.uint8)[None]
    job = make_job()
    out = select.run({"gaussians": g, "cameras": cams, "mask": mask}, select.Params(), job)
    check_inputs(select.OUTPUTS, out)
    sel = out["selected"]
    # Recall over the Gaussians the view actually shows (a hidden one leaves no trace to follow).
    seen = (out["weight_in"] + out["weight_out"]) > 0.01
    truth = (labels == 0) & seen
    tp = int((sel & truth).sum())
    precision, recall = tp / max(int(sel.sum()), 1), tp / max(int(truth.sum()), 1)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall, int(truth.sum()))
    assert truth.sum() > 300
    assert [s for s, *_ in job.progress_log] == ["trace"]


def test_weights_are_the_compositing_weights(make_job):
    from nskernels.camera import Cameras
    from nskernels.rasterize import rasterize

    g, _ = two_objects(n=80, seed=2)
    cams = _camera(40, 30)
    mask = np.ones((1, 30, 40), np.uint8)
    out = select.run({"gaussians": g, "cameras": cams, "mask": mask}, select.Params(), make_job())
    assert np.all(out["weight_out"] == 0)
    # the weights of all Gaussians add up to the image's alpha
    t = {k: torch.tensor(v) for k, v in g.items()}
    with torch.no_grad():
        alpha = rasterize(*(t[k] for k in ("means", "quats", "scales", "opacities", "sh0", "shN")),
                          Cameras.from_wire(cams)).alpha
    assert out["weight_in"].sum() == pytest.approx(float(alpha.sum()), rel=1e-4)


def test_mask_shape_is_checked(make_job):
    g, _ = two_objects(n=10)
    with pytest.raises(PipelineError) as err:
        select.run({"gaussians": g, "cameras": _camera(), "mask": np.ones((1, 10, 10), np.uint8)},
                   select.Params(), make_job())
    assert err.value.field == "inputs.mask"


# ---------------------------------------------------------------- numpy selections and edits

def test_selections_and_edits():
    g, labels = two_objects(n=200, seed=1)
    box = splat_edit.select_box(g["means"], [-1.0, -1.0, -1.0], [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(box, g["means"][:, 0] <= 0.0)
    # an oriented box: the same box moved by +1 in x through box_from_world
    m = np.eye(4)
    m[0, 3] = -1.0
    np.testing.assert_array_equal(splat_edit.select_box(g["means"] + [1.0, 0, 0], [-1, -1, -1], [0, 1, 1], m), box)
    sph = splat_edit.select_sphere(g["means"], [0.45, 0.3, 0.05], 0.5)
    assert sph[labels == 1].all() and not sph[labels == 0][np.linalg.norm(g["means"][labels == 0] - [0.45, 0.3, 0.05], axis=1) > 0.5].any()
    red = np.array([0.9, 0.1, 0.1])
    g["sh0"][:5] = (red - 0.5) / C0
    assert splat_edit.select_colour(g["sh0"], red, 0.01)[:5].all()
    op = splat_edit.select_opacity(g["opacities"], 0.5, 1.0)
    np.testing.assert_array_equal(op, g["opacities"] >= 0)

    kept, sep = splat_edit.separate(g, labels == 1)
    assert len(kept["means"]) == len(sep["means"]) == 200
    np.testing.assert_array_equal(splat_edit.delete(g, labels == 1)["means"], kept["means"])

    g["shN"] = np.random.default_rng(0).standard_normal((400, 3, 3)).astype(np.float32)
    rc = splat_edit.recolour(g, labels == 0, [0.2, 0.8, 0.3])
    np.testing.assert_allclose(splat_edit.base_colour(rc["sh0"][labels == 0]), np.tile([0.2, 0.8, 0.3], (200, 1)), atol=1e-6)
    np.testing.assert_array_equal(rc["shN"], g["shN"])  # view dependence kept
    np.testing.assert_array_equal(rc["sh0"][labels == 1], g["sh0"][labels == 1])
    sh = splat_edit.recolour(g, labels == 0, [0.1, 0.0, 0.0], mode="shift")
    np.testing.assert_allclose(splat_edit.base_colour(sh["sh0"]) - splat_edit.base_colour(g["sh0"]),
                               np.where((labels == 0)[:, None], [0.1, 0, 0], 0.0), atol=1e-6)

    move = np.eye(4)
    move[:3, 3] = [0.0, 0.0, 2.0]
    tr = splat_edit.transform(g, labels == 1, move)
    np.testing.assert_allclose(tr["means"][labels == 1], g["means"][labels == 1] + [0, 0, 2], atol=1e-6)
    np.testing.assert_array_equal(tr["means"][labels == 0], g["means"][labels == 0])
    with pytest.raises(ValueError, match="selection mask"):
        splat_edit.delete(g, np.ones(3, bool))
