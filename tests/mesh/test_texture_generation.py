"""mesh.texture's generation mode with a tiny random-weight Stable Diffusion inpainting model,
built with the real diffusers/transformers classes, saved as a diffusers folder and loaded by
the pipeline's own loader (`pipelines.mesh.generate.INPAINT`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import image_models
import mesh_scenes
from addon.core import capture_layout
from addon.wire.schema import PipelineError
from pipelines.base import ModelSource
from pipelines.mesh import generate, texture

class FolderModels:
    """The part of the server's per-job model handle (`LoadedModels.load`) generation uses:
    resolve a folder reference and call the spec's own loader."""

    def __init__(self):
        self.loads = []

    def load(self, spec, ref=None, field=None):
        self.loads.append((spec.key, ref, field))
        return spec.load(ModelSource(ref, Path(ref), "folder"), "cpu")


@pytest.fixture(scope="module")
def inpaint_model(tmp_path_factory):
    return image_models.build_sd_inpaint(tmp_path_factory.mktemp("models"))


def test_generated_views_inpaint_what_is_missing(inpaint_model, make_job, monkeypatch):
    V, F, uvs = mesh_scenes.uv_sphere(12, 24)
    cams = capture_layout.capture_cameras([-1] * 3, [1] * 3, layout="ring", count=3, width=32,
                                        height=32, lens_mm=35.0, elevation_deg=10.0)
    calls = []
    real = generate.generate_view

    def recording(pipe, prompt, depth, mask, seed, **kwargs):
        calls.append({"mask": mask.copy(), "depth": depth.copy(), "seed": seed, "prompt": prompt})
        return real(pipe, prompt, depth, mask, seed, **kwargs)

    monkeypatch.setattr(generate, "generate_view", recording)
    models = FolderModels()
    job = make_job()
    params = texture.Params(texture_size=64, prompt="a striped ball", steps=2, seed=7,
                            model=str(inpaint_model))
    out = texture.run({"mesh": {"vertices": V, "faces": F, "uvs": uvs}, "cameras": cams}, params, job, models)

    assert models.loads == [("inpaint", str(inpaint_model), "params.model")]
    assert len(calls) == 3 and [c["seed"] for c in calls] == [7, 8, 9]
    # The mesh's pixels to paint: all of them in the first view, then fewer and fewer.
    painted = []
    for c in calls:
        on_mesh = np.isfinite(c["depth"])
        assert on_mesh.sum() > 100
        painted.append(float((c["mask"][on_mesh] == 255).mean()))
    assert painted[0] == 1.0
    assert painted[1] < painted[0] and painted[2] < painted[1], painted
    # The result: a texture with seen texels and the three generated views, previews per view.
    assert out["texture"].shape == (64, 64, 4) and (out["texture"][..., 3] == 255).mean() > 0.3
    assert out["images"].shape == (3, 32, 32, 3)
    assert [p[1:3] for p in job.progress_log if p[0] == "generate"] == [(0, 3), (1, 3), (2, 3)]
    previews = [p[4] for p in job.progress_log if p[0] == "project"]
    assert len(previews) == 3 and all(p.shape == (32, 32, 3) for p in previews)
    # Kept pixels of later views are the texture baked so far, not repainted.
    keep = calls[2]["mask"] == 0
    assert keep.any()


def test_generation_without_a_registry_is_unavailable(make_job):
    V, F, uvs = mesh_scenes.uv_sphere(6, 12)
    cams = capture_layout.capture_cameras([-1] * 3, [1] * 3, layout="ring", count=2, width=32,
                                        height=32, lens_mm=35.0)
    with pytest.raises(PipelineError) as err:
        texture.run({"mesh": {"vertices": V, "faces": F, "uvs": uvs}, "cameras": cams},
                    texture.Params(prompt="x"), make_job())
    assert err.value.code == "unavailable"
