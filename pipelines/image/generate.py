"""``image.generate``: text, image, mask and ControlNet conditioned generation on diffusers.

Contract: PROTOCOL.md ``image.generate``; methods: METHODS.md 2.B (LDM sampling with
classifier-free guidance, SDEdit-style img2img via ``strength``, ControlNet, LoRA).

The model comes from the registry (``server/models.py``): ``params.model`` names a diffusers
folder, a single-file .safetensors checkpoint, a hub id in the local cache or a name added with
``nstudio models add``. The family (SD 1.x/2.x, SDXL, SD3, FLUX) picks the diffusers pipeline
class for the mode: txt2img without ``inputs.image``, img2img with it, inpaint with
``inputs.mask`` too; the ControlNet variant when ``params.controlnets`` is set. Every mode
shares the warm model's modules (``from_pipe``), so switching modes loads nothing.

Seeds: image ``i`` of a request uses ``seed + i`` through its own CPU ``torch.Generator``, so
any image can be made again alone, on any device, from its entry in ``outputs.seeds``. The one
exception: SD3 ControlNet pipelines also draw the control image's VAE latents from torch's global
generator, which each request seeds with ``seed`` (see ``_global_rng``): such images come back
with the same ``seed`` and ``num_images``.

ControlNets fit when their class is the family's (``ControlNetModel`` for SD/SDXL with the
UNet's cross-attention width, ``SD3ControlNetModel``/``FluxControlNetModel`` with the
transformer's width); several at once go to diffusers' Multi* wrappers with one scale each.
"""

from __future__ import annotations

import importlib.util
import inspect
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from addon.wire.depth import inverse_depth_image
from addon.wire.schema import Array, PipelineError, Value

from ..base import Job, ModelSpec, Pipeline
from .families import FAMILIES, SCHEDULERS, make_scheduler
from .loading import ImageModel, load_controlnet, load_pipeline

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
_MODEL_KINDS = ("folder", "file", "hub-cache", "models-dir")

MODEL = ModelSpec("pipe", DEFAULT_MODEL, load_pipeline, param="model", kinds=_MODEL_KINDS,
                  doc="the diffusion model (SD 1.x/2.x, SDXL, SD3, FLUX)")
CONTROLNET = ModelSpec("controlnet", "", load_controlnet,
                       kinds=("folder", "hub-cache", "models-dir"),
                       doc="a ControlNet (per request, params.controlnets)")
LORA_KINDS = ("folder", "file", "hub-cache", "models-dir")


@dataclass
class Params:
    """Settings of ``image.generate`` (PROTOCOL.md)."""

    model: str = field(default="", metadata={
        "doc": f"model name, diffusers folder, .safetensors file or cached hub id; '' = "
               f"{DEFAULT_MODEL}"})
    prompt: str = field(default="", metadata={"doc": "what to generate"})
    negative_prompt: str = field(default="", metadata={"doc": "what to avoid"})
    steps: int = field(default=30, metadata={"doc": "denoising steps", "min": 1, "max": 500})
    guidance_scale: float = field(default=7.0, metadata={
        "doc": "classifier-free guidance weight (FLUX-dev: its distilled guidance, ~3.5)",
        "min": 0.0, "max": 50.0})
    seed: int = field(default=0, metadata={"doc": "image i uses seed + i", "min": 0,
                                           "max": 2**63 - 17})
    width: int = field(default=0, metadata={
        "doc": "pixels; 0 = the input image's width, else the model's native size",
        "min": 0, "max": 4096})
    height: int = field(default=0, metadata={"doc": "pixels; 0 as width", "min": 0,
                                             "max": 4096})
    num_images: int = field(default=1, metadata={"doc": "images in the batch", "min": 1,
                                                 "max": 16})
    scheduler: str = field(default="", metadata={
        "doc": "'' = the model's own", "choices": ("", *SCHEDULERS)})
    strength: float = field(default=0.75, metadata={
        "doc": "img2img/inpaint: how much of the input is repainted (1 = all)", "min": 0.0,
        "max": 1.0})
    controlnets: list[dict] = field(default_factory=list, metadata={
        "doc": "[{model, scale}], one per inputs.control image"})
    loras: list[dict] = field(default_factory=list, metadata={"doc": "[{model, scale}]"})

    def __post_init__(self):
        self.controlnets = _records(self.controlnets, "controlnets", 1.0)
        self.loras = _records(self.loras, "loras", 1.0)


def _records(items: list, name: str, default_scale: float) -> list[dict]:
    checked = []
    for i, item in enumerate(items):
        path = f"params.{name}[{i}]"
        if not isinstance(item, dict) or set(item) - {"model", "scale"}:
            raise PipelineError("invalid_params", f"{path}: must be a map with 'model' and "
                                "optional 'scale'", path)
        model, scale = item.get("model"), item.get("scale", default_scale)
        if not isinstance(model, str) or not model.strip():
            raise PipelineError("invalid_params", f"{path}.model: must name a model",
                                f"{path}.model")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
                -10.0 <= scale <= 10.0):
            raise PipelineError("invalid_params", f"{path}.scale: must be a number in "
                                f"[-10, 10], got {scale!r}", f"{path}.scale")
        checked.append({"model": model.strip(), "scale": float(scale)})
    return checked


INPUTS = {
    "image": Array(("|u1",), ("H", "W", (3, 4)), "img2img/inpaint source, sRGB", optional=True),
    "mask": Array(("|u1",), ("H", "W"), "inpaint: 255 repaints, 0 keeps", optional=True),
    "control": Value("list", "ControlNet inputs in params.controlnets order: (H,W,3) |u1 "
                     "images or (H,W) <f4 depth maps in metres (inf where empty)",
                     optional=True),
}
OUTPUTS = {
    "images": Array(("|u1",), ("N", "H", "W", 3), "sRGB"),
    "seeds": Array(("<i8",), ("N",), "the seed of each image"),
}


def check(inputs: dict, params: Params) -> None:
    """What the schema cannot say: sizes agree, a mask has an image, one control per ControlNet."""
    image, mask = inputs.get("image"), inputs.get("mask")
    if mask is not None and image is None:
        raise PipelineError("invalid_input", "inputs.mask: inpainting needs inputs.image too",
                            "inputs.mask")
    size = image.shape[:2] if image is not None else None
    if size is not None:
        for name, got in (("height", size[0]), ("width", size[1])):
            want = getattr(params, name)
            if want and want != got:
                raise PipelineError("invalid_params", f"params.{name}: {want} differs from "
                                    f"inputs.image's {got}; leave it 0 to use the image's "
                                    "size", f"params.{name}")
    control = inputs.get("control") or []
    if len(control) != len(params.controlnets):
        raise PipelineError("invalid_input", f"inputs.control: {len(control)} images for "
                            f"{len(params.controlnets)} params.controlnets", "inputs.control")
    for i, item in enumerate(control):
        path = f"inputs.control[{i}]"
        if not isinstance(item, np.ndarray) or not (
                (item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3)
                or (item.dtype == np.float32 and item.ndim == 2)):
            raise PipelineError("invalid_input", f"{path}: expected (H,W,3) |u1 or (H,W) "
                                f"<f4, got {_describe(item)}", path)
        want = size or (params.height or None, params.width or None)
        if any(w and w != g for w, g in zip(want, item.shape[:2])):
            raise PipelineError("invalid_input", f"{path}: {item.shape[0]}x{item.shape[1]} "
                                f"(HxW) differs from the output's {want[0]}x{want[1]}", path)
        size = size or item.shape[:2]


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array {value.dtype.str} {list(value.shape)}"
    return type(value).__name__


def run(inputs: dict, params: Params, job: Job, models: Mapping) -> dict:
    """Generate ``params.num_images`` images. See the module docstring."""
    import torch

    check(inputs, params)
    model: ImageModel = models["pipe"]
    family = model.family
    image, mask = inputs.get("image"), inputs.get("mask")
    mode = "inpaint" if mask is not None else "img2img" if image is not None else "txt2img"
    height, width = _output_size(model, image, inputs.get("control") or [], params)
    controlnets = [_controlnet(models, model, item, i) for i, item in
                   enumerate(params.controlnets)]
    job.check_cancel()
    with model.lock:
        pipe = model.pipeline_for(mode, controlnets)
        pipe.scheduler = (make_scheduler(family, params.scheduler, model.scheduler_config)
                          if params.scheduler else
                          model.scheduler_class.from_config(model.scheduler_config))
        adapters = _load_loras(models, model, params.loras)
        try:
            seeds = [params.seed + i for i in range(params.num_images)]
            kwargs = _call_arguments(pipe, params, mode, image, mask, height, width,
                                     inputs.get("control") or [], seeds)
            kwargs.update(callback_on_step_end=_on_step(model, job, height, width, params),
                          callback_on_step_end_tensor_inputs=["latents"])
            try:
                with torch.inference_mode(), _global_rng(params.seed, model.device):
                    result = pipe(**kwargs).images
            except torch.OutOfMemoryError as error:
                raise _out_of_memory(models, params, height, width, error) from None
        finally:
            if adapters:
                model.pipe.unload_lora_weights()
    images = np.round(np.clip(result, 0.0, 1.0) * 255.0).astype(np.uint8)
    return {"images": np.ascontiguousarray(images[..., :3]),
            "seeds": np.asarray(seeds, dtype=np.int64)}


def _output_size(model: ImageModel, image, control: list, params: Params) -> tuple[int, int]:
    if image is not None:
        height, width = image.shape[:2]
    elif control:
        height, width = control[0].shape[:2]
    else:
        height = params.height or model.default_size
        width = params.width or model.default_size
    multiple = model.size_multiple
    for name, value in (("height", height), ("width", width)):
        if value % multiple:
            field_path = "inputs.image" if image is not None else f"params.{name}"
            raise PipelineError("invalid_input" if image is not None else "invalid_params",
                                f"{field_path}: {name} {value} is not a multiple of "
                                f"{multiple}, which {model.family.title} models need",
                                field_path)
    return int(height), int(width)


def _controlnet(models, model: ImageModel, item: dict, i: int):
    field_path = f"params.controlnets[{i}].model"
    if not hasattr(models, "load"):
        raise PipelineError("unavailable", "ControlNets need the server's model registry",
                            field_path)
    net = models.load(CONTROLNET, item["model"], field=field_path)
    family = model.family
    net_class = type(net).__name__
    wanted = family.controlnet_class
    if net_class != wanted and not (net_class == "ControlNetUnionModel"
                                    and family.key == "sdxl"):
        raise PipelineError("invalid_params", f"{field_path}: {item['model']} is a "
                            f"{net_class}, which does not fit {family.title} models (they take "
                            f"a {wanted})", field_path)
    if family.key in ("sd3", "flux"):
        _check_transformer_fit(model, net, item["model"], field_path)
    if family.key in ("sd", "sdxl"):
        base = model.pipe.unet.config
        ours = (base.cross_attention_dim, base.get("addition_embed_type"))
        theirs = (net.config.cross_attention_dim, net.config.get("addition_embed_type"))
        if ours != theirs:
            made_for = "SDXL" if theirs[1] == "text_time" else "SD 1.x/2.x"
            raise PipelineError(
                "invalid_params",
                f"{field_path}: {item['model']} is a {made_for} ControlNet (cross-attention "
                f"width {theirs[0]}), but the model is {family.title} (width {ours[0]})",
                field_path)
    return net


def _check_transformer_fit(model: ImageModel, net, name: str, field_path: str) -> None:
    """An SD3/FLUX ControlNet adds its residuals to the transformer's hidden states and embeds
    the VAE-encoded control image like the latents: its width (heads x head size), latent
    channels and patch size must be the transformer's (SD3.5 Large's ControlNets do not fit SD3
    Medium, say). Raises ``invalid_params`` naming the field, instead of a shape error mid-run."""
    ours, theirs = model.pipe.transformer.config, net.config

    def sizes(config) -> tuple[int, int, int]:
        return (config.num_attention_heads * config.attention_head_dim, config.in_channels,
                config.get("patch_size", 1))

    if sizes(ours) != sizes(theirs):
        (width, channels, patch), (w, c, p) = sizes(theirs), sizes(ours)
        raise PipelineError(
            "invalid_params",
            f"{field_path}: {name} is a {model.family.title} ControlNet made for a transformer "
            f"of width {width} ({channels} latent channels, patch {patch}), but this model's "
            f"is {w} ({c} latent channels, patch {p})", field_path)
    if theirs.get("extra_conditioning_channels"):
        # SD3's inpainting ControlNet (the control image with its mask as an extra channel)
        # runs in its own pipeline, with inputs of its own.
        raise PipelineError(
            "invalid_params",
            f"{field_path}: {name} is an SD3 inpainting ControlNet (the mask as "
            f"{theirs.extra_conditioning_channels} extra channel), which image.generate does "
            "not run; use an inpaint request without it or a control ControlNet", field_path)
    if theirs.get("num_mode") is not None:
        # A FLUX ControlNet-Union needs a control mode per image (canny, depth, ...), which
        # params.controlnets does not carry: diffusers would fail mid-run without one.
        raise PipelineError(
            "invalid_params",
            f"{field_path}: {name} is a FLUX ControlNet-Union ({theirs.num_mode} control "
            "modes); image.generate takes single-mode ControlNets only", field_path)


@contextmanager
def _global_rng(seed: int, device: str):
    """Torch's global generators seeded with the request's seed, restored afterwards.

    Some diffusers pipelines draw noise from the global generator instead of the request's
    ``generator``: StableDiffusion3ControlNetPipeline samples the control image's VAE latents
    with ``latent_dist.sample()`` (diffusers 0.42). Seeding it makes those images reproducible
    from ``params.seed`` too (for a batch, as the batch: that noise is drawn once for all
    images); restoring it leaves the server's other users of torch's RNG undisturbed.
    """
    import torch

    devices = []
    if device.startswith("cuda") and torch.cuda.is_available():
        devices = [torch.device(device).index or 0]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _load_loras(models, model: ImageModel, loras: list[dict]) -> list[str]:
    if not loras:
        return []
    names = []
    try:
        for i, item in enumerate(loras):
            field_path = f"params.loras[{i}].model"
            source = models.resolve(item["model"], LORA_KINDS, field_path)
            name = f"nstudio_lora_{i}"
            if source.path.is_file():
                model.pipe.load_lora_weights(str(source.path.parent),
                                             weight_name=source.path.name, adapter_name=name)
            else:
                model.pipe.load_lora_weights(str(source.path), adapter_name=name)
            names.append(name)
        model.pipe.set_adapters(names, adapter_weights=[item["scale"] for item in loras])
    except PipelineError:
        if names:
            model.pipe.unload_lora_weights()
        raise
    except Exception as error:   # a file that is not a LoRA for this model
        if names:
            model.pipe.unload_lora_weights()
        raise PipelineError("invalid_params", f"params.loras[{len(names)}].model: "
                            f"{loras[len(names)]['model']} cannot be applied to this "
                            f"{model.family.title} model: {type(error).__name__}: {error}",
                            f"params.loras[{len(names)}].model") from None
    return names


def _call_arguments(pipe, params: Params, mode: str, image, mask, height: int, width: int,
                    control: list, seeds: list[int]) -> dict:
    import torch
    from PIL import Image

    accepted = inspect.signature(pipe.__call__).parameters
    kwargs = {
        "prompt": params.prompt,
        "num_inference_steps": params.steps,
        "guidance_scale": params.guidance_scale,
        "num_images_per_prompt": params.num_images,
        # CPU generators: the same seed gives the same noise on every device.
        "generator": [torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        "output_type": "np",
    }
    if params.negative_prompt:
        kwargs["negative_prompt"] = params.negative_prompt
    if "height" in accepted:
        kwargs.update(height=height, width=width)
    if mode != "txt2img":
        # One prompt and one source per image: some img2img pipelines (SD3) pair generator i
        # with source image i and cannot repeat a single source for num_images_per_prompt.
        count = params.num_images
        kwargs.update(prompt=[params.prompt] * count, num_images_per_prompt=1,
                      image=[Image.fromarray(np.ascontiguousarray(image[..., :3]))] * count,
                      strength=params.strength)
        if params.negative_prompt:
            kwargs["negative_prompt"] = [params.negative_prompt] * count
    if mode == "inpaint":
        kwargs["mask_image"] = [Image.fromarray(np.ascontiguousarray(mask))] * params.num_images
    if control:
        images = [Image.fromarray(_control_image(item)) for item in control]
        value = images[0] if len(images) == 1 else images
        kwargs["control_image" if "control_image" in accepted else "image"] = value
        scales = [item["scale"] for item in params.controlnets]
        kwargs["controlnet_conditioning_scale"] = scales[0] if len(scales) == 1 else scales
    return {key: value for key, value in kwargs.items() if key in accepted}


def _control_image(item: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 as given; a depth map in metres becomes the inverse-depth image depth
    ControlNets were trained on (MiDaS-style: near bright, far/empty black, scaled to 0..255)."""
    if item.dtype == np.uint8:
        return np.ascontiguousarray(item)
    return inverse_depth_image(item)


#: Seconds between two preview images: the server sends about 10 progress reports a second, so
#: decoding a preview at every fast step would only cost time (progress itself goes every step).
PREVIEW_EVERY_S = 0.1


def _on_step(model: ImageModel, job: Job, height: int, width: int, params: Params):
    last = [float("-inf")]

    def on_step(pipe, index: int, timestep, tensors: dict) -> dict:
        job.check_cancel()   # between steps: a cancel ends the job within one step
        total = getattr(pipe, "_num_timesteps", None) or params.steps
        preview = None
        now = time.monotonic()
        if now - last[0] >= PREVIEW_EVERY_S or index + 1 >= total:
            last[0] = now
            try:
                preview = model.preview(pipe, tensors["latents"], height, width)
            except Exception:   # a preview is a courtesy; never fail a generation for it
                preview = None
        job.progress("denoise", min(index + 1, total), total, preview=preview)
        return {}

    return on_step


def _out_of_memory(models, params: Params, height: int, width: int, error) -> PipelineError:
    import gc

    import torch

    registry = getattr(models, "registry", None)
    if registry is not None:
        registry.evict_all()   # models this job does not hold
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return PipelineError("unavailable", f"out of memory generating {params.num_images} "
                         f"image(s) of {width}x{height}: fewer images or a smaller size may "
                         f"fit ({str(error).splitlines()[0]})")


def probe() -> tuple[bool, str]:
    """Available where diffusers is installed; the model itself is the registry's business."""
    for package in ("torch", "diffusers", "transformers"):
        if importlib.util.find_spec(package) is None:
            return False, f"{package} is not installed (pip install 'neural-studio[server]')"
    return True, ""


PIPELINE = Pipeline(
    name="image.generate",
    summary="Diffusion images from text, an image, a mask and ControlNet inputs (SD, SDXL, "
            "SD3, FLUX; LoRAs)",
    params=Params,
    inputs=INPUTS,
    outputs=OUTPUTS,
    run=run,
    probe=probe,
    check=check,
    models=(MODEL,),
)

__all__ = ["CONTROLNET", "FAMILIES", "MODEL", "PIPELINE", "Params"]
