"""Gaussians uploaded once (splat.upload) and rendered by reference (splat.render gaussians_ref)."""

from __future__ import annotations

import numpy as np
import pytest

from addon.wire.schema import PipelineError, check_inputs
from pipelines.splat import gaussian_cache, render, upload


def test_render_by_reference_equals_render_by_value(tiny_scene, make_job):
    g, cams = tiny_scene["gaussians"], tiny_scene["cameras"]
    out = upload.run({"gaussians": g}, upload.Params(), make_job())
    check_inputs(upload.OUTPUTS, out)
    ref = out["gaussians_ref"]
    assert out["count"] == len(g["means"]) and ref in gaussian_cache.CACHE
    # the same content gives the same reference, stored once
    assert upload.run({"gaussians": {k: v.copy() for k, v in g.items()}}, upload.Params(), make_job())["gaussians_ref"] == ref
    by_ref_inputs = {"gaussians_ref": ref, "cameras": cams}
    render.PIPELINE.check(by_ref_inputs, render.Params())  # the server's submit-time check passes
    a = render.run(by_ref_inputs, render.Params(), make_job())
    b = render.run({"gaussians": g, "cameras": cams}, render.Params(), make_job())
    for key in ("rgb", "alpha", "depth"):
        np.testing.assert_array_equal(a[key], b[key])


def test_bad_references(tiny_scene, make_job):
    cams = tiny_scene["cameras"]
    with pytest.raises(PipelineError) as err:
        render.PIPELINE.check({"gaussians_ref": "g-nope", "cameras": cams}, render.Params())
    assert err.value.code == "invalid_input" and err.value.field == "inputs.gaussians_ref"
    assert "upload the Gaussians again" in str(err.value)
    with pytest.raises(PipelineError) as err:
        render.run({"cameras": cams}, render.Params(), make_job())
    assert "exactly one of" in str(err.value)
    ref = upload.run({"gaussians": tiny_scene["gaussians"]}, upload.Params(), make_job())["gaussians_ref"]
    with pytest.raises(PipelineError, match="exactly one of"):
        render.run({"gaussians": tiny_scene["gaussians"], "gaussians_ref": ref, "cameras": cams}, render.Params(), make_job())


def test_cache_keeps_the_most_recent_within_its_bytes(tiny_scene):
    g = tiny_scene["gaussians"]
    size = sum(np.asarray(g[k], np.float32).nbytes for k in gaussian_cache.GAUSSIAN_KEYS)
    cache = gaussian_cache.GaussianCache(max_bytes=2 * size)
    refs = []
    for i in range(3):
        h = {k: v.copy() for k, v in g.items()}
        h["means"] = h["means"] + i
        refs.append(cache.put(h)[0])
        if i == 1:
            cache.get(refs[0])  # touch the first: the second becomes the oldest
    assert refs[0] in cache and refs[2] in cache and refs[1] not in cache
    kept = cache.get(refs[2])
    assert not kept["means"].flags.writeable
