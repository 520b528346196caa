"""Model families: which diffusers pipeline class runs each mode, which ControlNets fit, which
schedulers apply.

A family is recognised from the pipeline class named in a folder's ``model_index.json`` (or the
loaded pipeline's class). Modes are ``txt2img``, ``img2img`` and ``inpaint``; with ControlNets
each has its ControlNet variant where diffusers has one. Classes are named as strings and
looked up in ``diffusers`` only when used, so importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from addon.wire.schema import PipelineError

MODES = ("txt2img", "img2img", "inpaint")


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        key: "sd", "sdxl", "sd3" or "flux".
        title: for people.
        classes: mode -> diffusers pipeline class name.
        control: mode -> the ControlNet pipeline class name (absent: no ControlNet in that mode).
        controlnet_class: the ControlNet model class this family's pipelines take.
        flow: flow-matching (SD3, FLUX): only flow schedulers apply.
        cuda_dtype: "float16" or "bfloat16" on a GPU (CPU runs float32).
        size_multiple: in pixels, width and height must be multiples of it (the VAE's factor,
            times 2 where latents are packed in 2x2 patches).
    """

    key: str
    title: str
    classes: dict
    control: dict = field(default_factory=dict)
    controlnet_class: str = ""
    flow: bool = False
    cuda_dtype: str = "float16"
    packed: bool = False


FAMILIES = {
    "sd": Family(
        "sd", "Stable Diffusion 1.x/2.x",
        {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
         "inpaint": "StableDiffusionInpaintPipeline"},
        {"txt2img": "StableDiffusionControlNetPipeline",
         "img2img": "StableDiffusionControlNetImg2ImgPipeline",
         "inpaint": "StableDiffusionControlNetInpaintPipeline"},
        "ControlNetModel"),
    "sdxl": Family(
        "sdxl", "Stable Diffusion XL",
        {"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
         "inpaint": "StableDiffusionXLInpaintPipeline"},
        {"txt2img": "StableDiffusionXLControlNetPipeline",
         "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
         "inpaint": "StableDiffusionXLControlNetInpaintPipeline"},
        "ControlNetModel"),
    "sd3": Family(
        "sd3", "Stable Diffusion 3.x",
        {"txt2img": "StableDiffusion3Pipeline", "img2img": "StableDiffusion3Img2ImgPipeline",
         "inpaint": "StableDiffusion3InpaintPipeline"},
        {"txt2img": "StableDiffusion3ControlNetPipeline"},
        "SD3ControlNetModel", flow=True, cuda_dtype="bfloat16"),
    "flux": Family(
        "flux", "FLUX.1",
        {"txt2img": "FluxPipeline", "img2img": "FluxImg2ImgPipeline",
         "inpaint": "FluxInpaintPipeline"},
        {"txt2img": "FluxControlNetPipeline", "img2img": "FluxControlNetImg2ImgPipeline",
         "inpaint": "FluxControlNetInpaintPipeline"},
        "FluxControlNetModel", flow=True, cuda_dtype="bfloat16", packed=True),
}

#: Scheduler names a request may give -> (diffusers class, extra config). "" keeps the model's.
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow_heun": ("FlowMatchHeunDiscreteScheduler", {}),
}


def family_of_class(class_name: str) -> Family | None:
    """The family of a diffusers pipeline class name (any of its modes), or None."""
    for prefix, key in (("StableDiffusionXL", "sdxl"), ("StableDiffusion3", "sd3"),
                        ("Flux", "flux"), ("StableDiffusion", "sd")):
        if class_name.startswith(prefix):
            return FAMILIES[key]
    return None


def schedulers_for(family: Family) -> list[str]:
    """The scheduler names that apply to ``family``."""
    return [name for name in SCHEDULERS if name.startswith("flow_") == family.flow]


def make_scheduler(family: Family, name: str, base_config):
    """A fresh scheduler ``name`` built from the model's own scheduler config.

    Raises:
        PipelineError: ``invalid_params`` (``params.scheduler``) for a name that does not
            apply to the family.
    """
    import diffusers

    if name not in SCHEDULERS or name not in schedulers_for(family):
        raise PipelineError("invalid_params",
                            f"params.scheduler: {name!r} does not apply to {family.title} "
                            f"models; choose one of {schedulers_for(family)} (or '' for the "
                            "model's own)", "params.scheduler")
    class_name, extra = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(base_config, **extra)
