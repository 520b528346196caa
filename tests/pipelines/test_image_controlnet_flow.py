"""ControlNets of the flow-matching families: SD3 (SD3ControlNetModel) and FLUX.1
(FluxControlNetModel), one or several at once, with tiny random-weight models built here with
the real diffusers classes, saved with save_pretrained and loaded through the model registry.

The reference for every output is a direct call of diffusers' own ControlNet pipeline, loaded
separately from the same folders, with the same prompt, control images, scales, seed and steps.
"""

from __future__ import annotations

import numpy as np
import pytest

import image_models  # tests/image_models.py: the tiny model builders
from addon.wire.schema import PipelineError, check_inputs, parse_params
from pipelines.image import generate
from recording_job import RecordingJob
from server.models import ModelRegistry

SIZE = 32
PROMPT = "a red cube"
FAMILIES = ("sd3", "flux")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> model folder; "<family>-net", "<family>-net2" (two ControlNets that fit),
    "<family>-wide" (a ControlNet of the family with twice the transformer's width),
    "flux-union" (a FLUX ControlNet-Union) and "sd3-inpaint" (SD3's inpainting ControlNet)."""
    root = tmp_path_factory.mktemp("tiny-flow")
    folders = {}
    for family in FAMILIES:
        extra = {"layers": 2} if family == "sd3" else {}   # see build_sd3
        folders[family] = getattr(image_models, f"build_{family}")(root / family, **extra)
        folders[f"{family}-net"] = image_models.build_controlnet(root, family, seed=1)
        folders[f"{family}-net2"] = image_models.build_controlnet(
            root, family, seed=4, name=f"controlnet-{family}-2")
        folders[f"{family}-wide"] = image_models.build_controlnet(
            root, family, seed=5, width=2, name=f"controlnet-{family}-wide")
    folders["flux-union"] = image_models.build_controlnet(root, "flux", seed=6, num_mode=2,
                                                          name="controlnet-flux-union")
    folders["sd3-inpaint"] = image_models.build_controlnet(
        root, "sd3", seed=6, extra_conditioning_channels=1, name="controlnet-sd3-inpaint")
    return folders


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny):
    """Models added by name, as ``nstudio models add`` does."""
    registry = ModelRegistry(tmp_path_factory.mktemp("models"), budget_bytes=1 << 30)
    for family in FAMILIES:
        registry.add(f"tiny-{family}", tiny[family])
        registry.add(f"{family}-depth", tiny[f"{family}-net"])
    return registry


def _controls(seed=5, count=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(count)]


def _run(registry, inputs, **values):
    base = {"prompt": PROMPT, "steps": 2, "width": SIZE, "height": SIZE, "seed": 7}
    params = parse_params(generate.Params, dict(base, **values))
    check_inputs(generate.INPUTS, inputs)
    generate.check(inputs, params)
    models = registry.acquire(generate.PIPELINE, params)
    try:
        return generate.run(inputs, params, RecordingJob(), models)["images"]
    finally:
        models.close()


def _direct(folder, family, nets, controls, scales, seed=7, image=None, mask=None):
    """The same generation as a plain diffusers ControlNet pipeline call (the reference)."""
    import diffusers
    import torch
    from PIL import Image

    net_class = {"sd3": diffusers.SD3ControlNetModel, "flux": diffusers.FluxControlNetModel}
    mode = "inpaint" if mask is not None else "img2img" if image is not None else "txt2img"
    pipe_class = getattr(diffusers, generate.FAMILIES[family].control[mode])
    loaded = [net_class[family].from_pretrained(net) for net in nets]
    pipe = pipe_class.from_pretrained(folder, controlnet=loaded[0] if len(loaded) == 1
                                      else loaded)
    pipe.set_progress_bar_config(disable=True)
    pictures = [Image.fromarray(control) for control in controls]
    kwargs = dict(prompt=PROMPT, num_inference_steps=2, guidance_scale=7.0, height=SIZE,
                  width=SIZE, output_type="np", generator=[torch.Generator().manual_seed(seed)],
                  control_image=pictures[0] if len(pictures) == 1 else pictures,
                  controlnet_conditioning_scale=scales[0] if len(scales) == 1 else scales)
    if image is not None:
        kwargs.update(image=Image.fromarray(image), strength=0.75)
    if mask is not None:
        kwargs.update(mask_image=Image.fromarray(mask))
    # SD3's ControlNet pipeline draws the control latents from torch's global generator;
    # the server seeds it with the request's seed for that call (see generate.run).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = pipe(**kwargs).images
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_controlnet_equals_a_direct_call_and_its_input_is_used(tiny, registry, family):
    control, = _controls()
    out = _run(registry, {"control": [control]}, model=f"tiny-{family}",
               controlnets=[{"model": f"{family}-depth", "scale": 0.8}])
    assert out.shape == (1, SIZE, SIZE, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(
        out, _direct(tiny[family], family, [tiny[f"{family}-net"]], [control], [0.8]))
    # The same request again gives the same image; another control image another one.
    again = _run(registry, {"control": [control]}, model=f"tiny-{family}",
                 controlnets=[{"model": f"{family}-depth", "scale": 0.8}])
    np.testing.assert_array_equal(again, out)
    other = _run(registry, {"control": [255 - control]}, model=f"tiny-{family}",
                 controlnets=[{"model": f"{family}-depth", "scale": 0.8}])
    assert np.abs(other.astype(int) - out).max() > 0
    plain = _run(registry, {}, model=f"tiny-{family}")
    assert not np.array_equal(plain, out)


@pytest.mark.parametrize("family", FAMILIES)
def test_several_controlnets_with_scales_equal_a_direct_call(tiny, registry, family):
    controls = _controls(6, count=2)
    nets = [tiny[f"{family}-net"], tiny[f"{family}-net2"]]
    out = _run(registry, {"control": controls}, model=f"tiny-{family}",
               controlnets=[{"model": str(nets[0]), "scale": 0.7},
                            {"model": str(nets[1]), "scale": 0.4}])
    np.testing.assert_array_equal(out, _direct(tiny[family], family, nets, controls, [0.7, 0.4]))
    # The scales are applied: another pair gives another image.
    reweighted = _run(registry, {"control": controls}, model=f"tiny-{family}",
                      controlnets=[{"model": str(nets[0]), "scale": 0.7},
                                   {"model": str(nets[1]), "scale": 0.0}])
    assert not np.array_equal(reweighted, out)


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_flux_controlnet_img2img_and_inpaint_equal_a_direct_call(tiny, registry, mode):
    control, image = _controls(7, count=2)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 8:24] = 255
    inputs = {"control": [control], "image": image}
    if mode == "inpaint":
        inputs["mask"] = mask
    out = _run(registry, inputs, model="tiny-flux",
               controlnets=[{"model": "flux-depth", "scale": 1.0}])
    expected = _direct(tiny["flux"], "flux", [tiny["flux-net"]], [control], [1.0],
                       image=image, mask=mask if mode == "inpaint" else None)
    np.testing.assert_array_equal(out, expected)


def test_controlnets_that_do_not_fit_are_refused_clearly(tiny, registry):
    control, = _controls()
    cases = [
        # Another family's ControlNet class.
        ("tiny-sd3", "flux-depth", "is a FluxControlNetModel, which does not fit Stable "
                                   "Diffusion 3.x models (they take a SD3ControlNetModel)"),
        ("tiny-flux", "sd3-depth", "is a SD3ControlNetModel, which does not fit FLUX.1"),
        # The family's class, made for another size of transformer (say SD3.5 Large's
        # ControlNet on SD3 Medium).
        ("tiny-sd3", str(tiny["sd3-wide"]), "made for a transformer of width 64"),
        ("tiny-flux", str(tiny["flux-wide"]), "made for a transformer of width 32"),
        # A ControlNet-Union wants a control mode per image, which requests do not carry.
        ("tiny-flux", str(tiny["flux-union"]), "is a FLUX ControlNet-Union (2 control modes)"),
        # SD3's inpainting ControlNet belongs to a pipeline of its own.
        ("tiny-sd3", str(tiny["sd3-inpaint"]), "is an SD3 inpainting ControlNet"),
    ]
    for model, net, message in cases:
        # The second of two: the first fits, the error names the one that does not.
        with pytest.raises(PipelineError) as error:
            _run(registry, {"control": [control, control]}, model=model,
                 controlnets=[{"model": _fitting(model)}, {"model": net}])
        assert error.value.code == "invalid_params", error.value.message
        assert error.value.detail == {"field": "params.controlnets[1].model"}
        assert message in error.value.message
    # SD3 has a ControlNet pipeline for txt2img only (its inpainting ControlNet is a model of
    # its own): img2img with a ControlNet names the modes that have one.
    with pytest.raises(PipelineError, match=r"no ControlNet pipeline for img2img .*\['txt2img'\]"):
        _run(registry, {"control": [control], "image": control}, model="tiny-sd3",
             controlnets=[{"model": "sd3-depth"}])
    # The warm model still serves plain requests afterwards.
    assert _run(registry, {}, model="tiny-sd3").shape == (1, SIZE, SIZE, 3)


def _fitting(model: str) -> str:
    return "sd3-depth" if model == "tiny-sd3" else "flux-depth"


def test_over_the_wire_flux_with_two_controlnets_equals_direct(tiny, tmp_path):
    """A real server on loopback: folders named in the request, the control images sent as
    ``inputs.control``, the result equal to the direct call's."""
    from server_harness import serving

    controls = _controls(8, count=2)
    nets = [tiny["flux-net"], tiny["flux-net2"]]
    params = {"model": str(tiny["flux"]), "prompt": PROMPT, "steps": 2, "seed": 7,
              "controlnets": [{"model": str(nets[0]), "scale": 0.6},
                              {"model": str(nets[1]), "scale": 0.9}]}
    with serving(tmp_path, "--models-dir", str(tmp_path / "models")) as (_, client):
        accepted = client.submit("image.generate", params=params, inputs={"control": controls})
        assert accepted["type"] == "accepted", accepted
        events = client.events(accepted["job"], timeout=180)
        assert events[-1]["type"] == "result", events[-1]
        images = events[-1]["outputs"]["images"]
    # The size comes from the control images (no width/height in the request).
    np.testing.assert_array_equal(images,
                                  _direct(tiny["flux"], "flux", nets, controls, [0.6, 0.9]))
