"""``image.generate`` with tiny random-weight models built here with the real diffusers classes,
saved with save_pretrained and loaded through the model registry like a user's weights.

The reference for every output is a direct diffusers call of the family's pipeline class,
loaded separately from the same folder, with the same prompt, seed and steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import image_models  # tests/image_models.py: the tiny model builders
from addon.wire.schema import PipelineError, check_inputs, parse_params
from pipelines.base import Cancelled
from pipelines.image import generate
from pipelines.image.families import FAMILIES
from recording_job import RecordingJob
from server.models import ModelMissing, ModelRegistry

REPO = Path(__file__).resolve().parents[2]

SIZE = 32
PROMPT = "a red cube"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Every tiny model, built once: family -> folder, plus ControlNets and a LoRA."""
    root = tmp_path_factory.mktemp("tiny-diffusion")
    folders = {family: getattr(image_models, f"build_{family}")(root / family)
               for family in FAMILIES}
    folders["controlnet-sd"] = image_models.build_controlnet(root, "sd")
    folders["controlnet-sdxl"] = image_models.build_controlnet(root, "sdxl")
    folders["lora"] = image_models.build_lora(root, folders["sd"])
    return folders


@pytest.fixture(scope="session")
def registry(tmp_path_factory, tiny):
    registry = ModelRegistry(tmp_path_factory.mktemp("models"), budget_bytes=1 << 30)
    registry.add("tiny-sd", tiny["sd"], doc="tiny random SD 1.x")
    return registry


def _params(**values):
    base = {"prompt": PROMPT, "steps": 2, "width": SIZE, "height": SIZE, "seed": 7}
    base.update(values)
    return parse_params(generate.Params, base)


def _run(registry, inputs=None, job=None, **values):
    params = _params(**values)
    inputs = inputs or {}
    check_inputs(generate.INPUTS, inputs)
    generate.check(inputs, params)
    models = registry.acquire(generate.PIPELINE, params)
    try:
        return generate.run(inputs, params, job or RecordingJob(), models)
    finally:
        models.close()


def _source(seed=3):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 8:24] = 255
    return image, mask


def _direct(folder, family, mode, seed=7, num_images=1, image=None, mask=None, **extra):
    """The same generation as a plain diffusers call (the reference)."""
    import diffusers
    import torch
    from PIL import Image

    pipe = getattr(diffusers, FAMILIES[family].classes[mode]).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=PROMPT, num_inference_steps=2, guidance_scale=7.0, output_type="np",
                  num_images_per_prompt=num_images,
                  generator=[torch.Generator().manual_seed(seed + i) for i in range(num_images)])
    if mode == "txt2img" or family == "flux":
        kwargs.update(height=SIZE, width=SIZE)
    if mode != "txt2img":
        kwargs.update(image=Image.fromarray(image), strength=0.75)
    if mode == "inpaint":
        kwargs.update(mask_image=Image.fromarray(mask), height=SIZE, width=SIZE)
    kwargs.update(extra)
    out = pipe(**kwargs).images
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint"])
def test_each_family_and_mode_equals_a_direct_diffusers_call(tiny, registry, family, mode):
    image, mask = _source()
    inputs = {"txt2img": {}, "img2img": {"image": image},
              "inpaint": {"image": image, "mask": mask}}[mode]
    job = RecordingJob()
    out = _run(registry, inputs, job, model=str(tiny[family]))
    assert out["images"].shape == (1, SIZE, SIZE, 3) and out["images"].dtype == np.uint8
    assert out["seeds"].tolist() == [7] and out["seeds"].dtype == np.int64
    expected = _direct(tiny[family], family, mode, image=image, mask=mask)
    np.testing.assert_array_equal(out["images"], expected)
    # One progress report per denoising step, the last one complete; a preview on the first
    # and the last step and at most every PREVIEW_EVERY_S between them.
    steps = [(stage, step, total) for stage, step, total, _, _ in job.progress_log]
    total = steps[-1][2]
    assert steps == [("denoise", i, total) for i in range(1, total + 1)]
    previews = [p for *_, p in job.progress_log if p is not None]
    assert job.progress_log[0][-1] is not None and job.progress_log[-1][-1] is not None
    for preview in previews:
        assert preview.dtype == np.uint8 and preview.ndim == 3 and preview.shape[2] == 3


def test_a_batch_has_one_seed_per_image_and_seeds_reproduce(tiny, registry):
    batch = _run(registry, model="tiny-sd", num_images=2, seed=11)
    assert batch["seeds"].tolist() == [11, 12]
    np.testing.assert_array_equal(batch["images"],
                                  _direct(tiny["sd"], "sd", "txt2img", seed=11, num_images=2))
    again = _run(registry, model="tiny-sd", num_images=2, seed=11)
    np.testing.assert_array_equal(batch["images"], again["images"])
    assert not np.array_equal(batch["images"][0], batch["images"][1])
    other = _run(registry, model="tiny-sd", seed=12)
    assert not np.array_equal(other["images"][0], batch["images"][0])


def test_a_second_request_does_not_reload(tiny, registry):
    _run(registry, model="tiny-sd")
    loads = registry.loads
    _run(registry, model="tiny-sd", seed=1)
    _run(registry, {"image": _source()[0]}, model="tiny-sd")   # another mode, same modules
    assert registry.loads == loads


def test_lora_changes_the_output_and_scale_zero_does_not(tiny, registry):
    plain = _run(registry, model="tiny-sd")["images"]
    lora = _run(registry, model="tiny-sd", loras=[{"model": str(tiny["lora"]), "scale": 1.0}])
    assert np.abs(lora["images"].astype(int) - plain).max() > 0
    zero = _run(registry, model="tiny-sd", loras=[{"model": str(tiny["lora"]), "scale": 0.0}])
    np.testing.assert_array_equal(zero["images"], plain)
    # The adapter is gone afterwards: the warm model is unchanged for the next request.
    np.testing.assert_array_equal(_run(registry, model="tiny-sd")["images"], plain)
    with pytest.raises(ModelMissing) as missing:
        _run(registry, model="tiny-sd", loras=[{"model": "no-such-lora"}])
    assert missing.value.detail == {"field": "params.loras[0].model"}


def test_controlnet_input_is_used(tiny, registry):
    image, _ = _source(5)
    net = str(tiny["controlnet-sd"])
    first = _run(registry, {"control": [image]}, model="tiny-sd",
                 controlnets=[{"model": net, "scale": 1.0}])
    second = _run(registry, {"control": [255 - image]}, model="tiny-sd",
                  controlnets=[{"model": net, "scale": 1.0}])
    assert np.abs(first["images"].astype(int) - second["images"]).max() > 0
    expected = _direct(tiny["sd"], "sd", "txt2img", image=None, controlnet=None)
    plain_with_net = _direct_controlnet(tiny, image)
    np.testing.assert_array_equal(first["images"], plain_with_net)
    assert not np.array_equal(first["images"], expected)
    # A depth map in metres (inf where empty) is accepted as a control input too; two at once.
    depth = np.full((SIZE, SIZE), np.inf, np.float32)
    depth[4:28, 4:28] = np.linspace(1, 3, 24, dtype=np.float32)[None, :]
    both = _run(registry, {"control": [image, depth]}, model="tiny-sd",
                controlnets=[{"model": net, "scale": 0.5}, {"model": net, "scale": 0.5}])
    assert both["images"].shape == (1, SIZE, SIZE, 3)


def _direct_controlnet(tiny, control):
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny["sd"], controlnet=ControlNetModel.from_pretrained(tiny["controlnet-sd"]))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=PROMPT, image=Image.fromarray(control), num_inference_steps=2,
               guidance_scale=7.0, height=SIZE, width=SIZE, output_type="np",
               generator=[torch.Generator().manual_seed(7)],
               controlnet_conditioning_scale=1.0).images
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def test_a_controlnet_of_another_family_is_refused(tiny, registry):
    image, _ = _source()
    with pytest.raises(PipelineError) as error:
        _run(registry, {"control": [image]}, model="tiny-sd",
             controlnets=[{"model": str(tiny["controlnet-sdxl"])}])
    assert error.value.code == "invalid_params"
    assert error.value.detail == {"field": "params.controlnets[0].model"}
    assert "SDXL ControlNet" in error.value.message and "Stable Diffusion 1.x/2.x" in error.value.message
    with pytest.raises(PipelineError, match="does not fit FLUX.1 models"):
        _run(registry, {"control": [image]}, model=str(tiny["flux"]),
             controlnets=[{"model": str(tiny["controlnet-sd"])}])


def test_unknown_model_lists_what_the_registry_has(registry):
    with pytest.raises(ModelMissing) as missing:
        _run(registry, model="dreamshaper-9")
    assert missing.value.code == "invalid_params"
    assert missing.value.detail == {"field": "params.model"}
    assert "Known models:" in missing.value.message and "tiny-sd" in missing.value.message


def test_bad_requests_get_clear_errors(tiny, registry):
    image, mask = _source()
    with pytest.raises(PipelineError, match="inputs.mask"):
        check_inputs(generate.INPUTS, {"image": image, "mask": mask[:16]})
    with pytest.raises(PipelineError, match="inpainting needs inputs.image"):
        generate.check({"mask": mask}, _params())
    with pytest.raises(PipelineError, match="params.width: 40 differs from inputs.image's 32"):
        generate.check({"image": image}, _params(width=40))
    with pytest.raises(PipelineError, match="1 images for 0 params.controlnets"):
        generate.check({"control": [image]}, _params())
    with pytest.raises(PipelineError, match=r"inputs.control\[0\]: 16x32"):
        generate.check({"control": [image[:16]]}, _params(controlnets=[{"model": "x"}]))
    with pytest.raises(PipelineError, match=r"params.loras\[0\].scale"):
        _params(loras=[{"model": "x", "scale": "big"}])
    with pytest.raises(PipelineError, match=r"params.controlnets\[0\]: must be a map"):
        _params(controlnets=[{"model": "x", "weight": 1}])
    # The multiple is the model's: the tiny VAE's factor 2, times 2 for FLUX's packed latents.
    with pytest.raises(PipelineError, match="params.width: width 34 is not a multiple of 4, "
                                            "which FLUX.1"):
        _run(registry, model=str(tiny["flux"]), width=34, height=32)
    with pytest.raises(PipelineError, match="params.height: height 33 is not a multiple of 2"):
        _run(registry, model="tiny-sd", height=33)
    with pytest.raises(PipelineError, match="'flow_euler' does not apply to Stable Diffusion"):
        _run(registry, model="tiny-sd", scheduler="flow_euler")
    with pytest.raises(PipelineError, match="'ddim' does not apply to FLUX"):
        _run(registry, model=str(tiny["flux"]), scheduler="ddim")


def test_schedulers_are_selectable(registry):
    default = _run(registry, model="tiny-sd")["images"]
    euler_a = _run(registry, model="tiny-sd", scheduler="euler_a")["images"]
    assert not np.array_equal(default, euler_a)
    np.testing.assert_array_equal(_run(registry, model="tiny-sd", scheduler="euler_a")["images"],
                                  euler_a)
    # The model's own scheduler comes back for the next request.
    np.testing.assert_array_equal(_run(registry, model="tiny-sd")["images"], default)


def test_cancel_between_steps(registry):
    job = RecordingJob(cancel_after=1)   # the first check passes, the one after step 1 raises
    with pytest.raises(Cancelled):
        _run(registry, job=job, model="tiny-sd", steps=5)
    assert [step for _, step, *_ in job.progress_log] == []
    # The warm model serves the next request normally.
    assert _run(registry, model="tiny-sd")["images"].shape == (1, SIZE, SIZE, 3)


# Over the wire -----------------------------------------------------------------------------------

def test_over_the_wire_equals_direct(tiny, tmp_path):
    from server_harness import serving

    models_dir = tmp_path / "models"
    added = subprocess.run([sys.executable, "-m", "server", "models", "add", "tiny-sd",
                            str(tiny["sd"]), "--models-dir", str(models_dir)],
                           cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    with serving(tmp_path, "--models-dir", str(models_dir)) as (server, client):
        _check_over_the_wire(tiny, server, client)


def _check_over_the_wire(tiny, server, client):
    welcome = client.request("hello", client="test", protocols=[1])
    entry = welcome["pipelines"]["image.generate"]
    assert entry["available"] is True
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in entry["reason"]  # default missing
    params = {"model": "tiny-sd", "prompt": PROMPT, "steps": 2, "width": SIZE,
              "height": SIZE, "seed": 7, "num_images": 2}
    results = []
    for _ in range(2):
        accepted = client.submit("image.generate", params=params)
        assert accepted["type"] == "accepted", accepted
        events = client.events(accepted["job"], timeout=120)
        assert events[-1]["type"] == "result", events[-1]
        progress = [e for e in events if e["type"] == "progress"]
        assert progress[-1]["step"] == progress[-1]["total"] == 2
        assert progress[-1]["preview"].dtype == np.uint8
        results.append(events[-1]["outputs"])
    expected = _direct(tiny["sd"], "sd", "txt2img", num_images=2)
    for outputs in results:
        assert outputs["seeds"].tolist() == [7, 8]
        np.testing.assert_array_equal(outputs["images"], expected)
    accepted = client.submit("image.generate", params=dict(params, model="nothing-here"))
    events = client.events(accepted["job"], timeout=60)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "invalid_params"
    assert "tiny-sd" in events[-1]["message"]
    log = server.log()
    assert log.count("loading pipe from") == 1, log


def test_out_of_memory_is_reported_and_frees_idle_models(tiny, registry, monkeypatch):
    import torch

    _run(registry, model=str(tiny["sdxl"]))                 # warm, idle once its job ended
    assert any(w["path"] == str(tiny["sdxl"].resolve()) for w in registry.warm())
    models = registry.acquire(generate.PIPELINE, _params(model="tiny-sd"))
    try:
        def exhausted(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        # The denoiser runs out of memory mid-generation, as a too large request does on a GPU.
        monkeypatch.setattr(models["pipe"].pipe.unet, "forward", exhausted)
        with pytest.raises(PipelineError) as error:
            generate.run({}, _params(num_images=4), RecordingJob(), models)
        assert error.value.code == "unavailable"
        assert "out of memory generating 4 image(s) of 32x32" in error.value.message
        assert "Tried to allocate 20.00 GiB" in error.value.message
        monkeypatch.undo()
    finally:
        models.close()
    # Idle models were dropped to give the memory back; the held one stayed and still works.
    paths = [w["path"] for w in registry.warm()]
    assert str(tiny["sdxl"].resolve()) not in paths and str(tiny["sd"].resolve()) in paths
    assert _run(registry, model="tiny-sd")["images"].shape == (1, SIZE, SIZE, 3)


def test_sdxl_takes_an_sdxl_controlnet(tiny, registry):
    image, _ = _source(6)
    net = str(tiny["controlnet-sdxl"])
    outs = [_run(registry, {"control": [control]}, model=str(tiny["sdxl"]),
                 controlnets=[{"model": net, "scale": 1.0}])["images"]
            for control in (image, 255 - image)]
    assert outs[0].shape == (1, SIZE, SIZE, 3)
    assert not np.array_equal(outs[0], outs[1])


def test_single_file_checkpoints_need_a_local_config(tmp_path, registry):
    import torch
    from safetensors.torch import save_file

    checkpoint = tmp_path / "my-model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(checkpoint))
    with pytest.raises(PipelineError) as error:
        _run(registry, model=str(checkpoint))
    assert error.value.detail == {"field": "params.model"}
    assert "single-file Stable Diffusion 1.x/2.x checkpoint" in error.value.message
    assert str(tmp_path / "my-model.config") in error.value.message
    other = tmp_path / "other.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(other))
    with pytest.raises(PipelineError, match="unknown key layout"):
        _run(registry, model=str(other))
    pickled = tmp_path / "old.ckpt"
    pickled.write_bytes(b"not loaded")
    with pytest.raises(PipelineError, match="pickled .ckpt files are not loaded"):
        _run(registry, model=str(pickled))
