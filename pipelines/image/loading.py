"""Loading diffusion models for the registry, and the warm :class:`ImageModel` it keeps.

``load_pipeline(source, device)`` and ``load_controlnet(source, device)`` are the
``ModelSpec.load`` functions of ``image.generate``. They read local files only
(``local_files_only=True``): a request never reaches the network.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from addon.wire.schema import PipelineError

from ..base import ModelSource
from .families import FAMILIES, Family, family_of_class
from .preview import fit_latent_rgb, latents_to_rgb

#: Single-file checkpoints: key prefixes that tell the family apart (A1111/ComfyUI layouts).
_SINGLE_FILE_KEYS = (
    ("conditioner.embedders.1", "sdxl"),
    ("model.diffusion_model.joint_blocks", "sd3"),
    ("double_blocks.", "flux"),
    ("model.diffusion_model.double_blocks.", "flux"),
    ("model.diffusion_model.input_blocks", "sd"),
)


def torch_dtype(family: Family, device: str):
    import torch

    if not device.startswith("cuda"):
        return torch.float32
    return getattr(torch, family.cuda_dtype)


class ImageModel:
    """A loaded diffusers pipeline with its family, kept warm by the registry.

    Attributes:
        pipe: the txt2img pipeline as loaded (its modules are shared by every mode).
        family: :class:`Family`.
        device: where it lives.
    """

    def __init__(self, pipe, family: Family, source: ModelSource, device: str):
        self.pipe = pipe
        self.family = family
        self.source = source
        self.device = device
        self.scheduler_class = type(pipe.scheduler)
        self.scheduler_config = dict(pipe.scheduler.config)
        self._modes: dict = {"txt2img": pipe} if type(pipe).__name__ == family.classes[
            "txt2img"] else {}
        self._rgb_map = None
        self.lock = threading.Lock()   # one job at a time changes adapters/schedulers

    @property
    def components(self) -> dict:
        """The torch modules (the registry sizes the model from these)."""
        return self.pipe.components

    @property
    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * (2 if self.family.packed else 1)

    @property
    def default_size(self) -> int:
        """The resolution the model was trained at, in pixels."""
        denoiser = getattr(self.pipe, "unet", None) or self.pipe.transformer
        sample = getattr(denoiser.config, "sample_size", None) or 64
        if self.family.key == "flux":
            return 1024 if sample >= 64 else sample * self.pipe.vae_scale_factor
        return int(sample) * self.pipe.vae_scale_factor * (
            denoiser.config.get("patch_size", 1) if self.family.key == "sd3" else 1)

    def pipeline_for(self, mode: str, controlnets: list):
        """The diffusers pipeline for ``mode`` sharing this model's modules (``from_pipe``)."""
        import diffusers

        if not controlnets:
            if mode not in self._modes:
                cls = getattr(diffusers, self.family.classes[mode])
                self._modes[mode] = cls.from_pipe(self.pipe)
                self._modes[mode].set_progress_bar_config(disable=True)
            return self._modes[mode]
        name = self.family.control.get(mode)
        if name is None:
            raise PipelineError("invalid_params",
                                f"params.controlnets: {self.family.title} models have no "
                                f"ControlNet pipeline for {mode} in diffusers "
                                f"{diffusers.__version__}; use "
                                f"{sorted(self.family.control)} with ControlNets",
                                "params.controlnets")
        pipe = getattr(diffusers, name).from_pipe(
            self.pipe, controlnet=controlnets[0] if len(controlnets) == 1 else list(controlnets))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def preview(self, pipe, latents, height: int, width: int):
        """uint8 (h, w, 3) preview of the first image of ``latents`` (see preview.py)."""
        if self._rgb_map is None:
            self._rgb_map = fit_latent_rgb(self.pipe.vae, self.pipe.vae.device,
                                           self.pipe.vae.dtype)
        if self.family.packed:
            latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        return latents_to_rgb(latents, self._rgb_map)


def pipeline_class_of(folder: Path) -> str:
    """The pipeline class a diffusers folder names in its model_index.json."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise PipelineError("invalid_params",
                            f"{folder} is not a diffusers pipeline folder: it has no "
                            "model_index.json", "params.model")
    return json.loads(index.read_text()).get("_class_name", "")


def load_pipeline(source: ModelSource, device: str) -> ImageModel:
    """The ``ModelSpec.load`` of the base model: a diffusers folder or a single file."""
    import diffusers

    path = Path(source.path)
    if path.is_file():
        return _load_single_file(source, path, device)
    class_name = pipeline_class_of(path)
    family = family_of_class(class_name)
    if family is None:
        raise PipelineError("invalid_params",
                            f"{source.ref}: {class_name or 'an unnamed pipeline'} is not a "
                            f"family image.generate runs (families: "
                            f"{', '.join(f.title for f in FAMILIES.values())})", "params.model")
    pipe = diffusers.DiffusionPipeline.from_pretrained(
        path, torch_dtype=torch_dtype(family, device), local_files_only=True)
    return _ready(pipe, family, source, device)


def _load_single_file(source: ModelSource, path: Path, device: str) -> ImageModel:
    """A single-file checkpoint (A1111/ComfyUI). Its config comes from a diffusers folder of
    the same family next to it, ``<file stem>.config/`` (or a ``config`` folder beside it),
    never from the hub."""
    import diffusers

    family = FAMILIES[_single_file_family(path)]
    config = next((c for c in (path.with_suffix(".config"), path.parent / "config")
                   if (c / "model_index.json").is_file()), None)
    if config is None:
        raise PipelineError(
            "invalid_params",
            f"{path} is a single-file {family.title} checkpoint; its diffusers config must be "
            f"beside it (a folder {path.with_suffix('.config')} with model_index.json, e.g. "
            "the base model's folder without weights): nothing is fetched from the hub",
            "params.model")
    config_class = pipeline_class_of(config)
    if family_of_class(config_class) is not family:
        raise PipelineError("invalid_params",
                            f"{path} is a single-file {family.title} checkpoint but its config "
                            f"folder {config} is a {config_class or 'pipeline of no class'}: "
                            f"give it the config of a {family.title} model", "params.model")
    cls = getattr(diffusers, family.classes["txt2img"])
    try:
        # config= a local folder: every component's config, the tokenizers and the scheduler
        # come from it (original_config, the LDM yaml, is then not needed); the weights come
        # from the file. A UNet/VAE the file lacks is a SingleFileComponentError; a missing
        # text encoder is taken from the folder if that has its weights.
        pipe = cls.from_single_file(str(path), config=str(config), local_files_only=True,
                                    torch_dtype=torch_dtype(family, device))
    except Exception as error:
        raise _single_file_error(error, path, config, family) from error
    for name, module in pipe.components.items():
        _check_complete(module, name, path, family)
    return _ready(pipe, family, source, device)


def _single_file_error(error: Exception, path: Path, config: Path, family: Family) -> Exception:
    """A clear ``invalid_params`` naming the file for what diffusers raised loading it (out of
    memory and our own errors pass through)."""
    import torch

    if isinstance(error, (PipelineError, torch.OutOfMemoryError, MemoryError)):
        return error
    if isinstance(error, NotImplementedError) and "meta tensor" in str(error):
        # Tensors the file lacks stay on the meta device (accelerate's empty init) and
        # diffusers fails moving the model with a bare "Cannot copy out of meta tensor": the
        # model it was loading (and the component's name) are in the traceback's frames.
        tb, component = error.__traceback__, None
        while tb is not None:
            local = tb.tb_frame.f_locals
            if "class_name" in local and isinstance(local.get("name"), str):
                component = local["name"]   # diffusers' load_single_file_sub_model(name=...)
            if isinstance(local.get("model"), torch.nn.Module):
                try:
                    _check_complete(local["model"], component, path, family)
                except PipelineError as missing:
                    return missing
            tb = tb.tb_next
    # The first sentence only: diffusers' hints (low_cpu_mem_usage=...) are not the user's.
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    reason = reason.split(" If you want to")[0]
    return PipelineError("invalid_params", f"{path}: cannot load this single-file "
                         f"{family.title} checkpoint with the config folder {config}: {reason}",
                         "params.model")


def _check_complete(module, name: str | None, path: Path, family: Family) -> None:
    """Refuse a model some of whose tensors the checkpoint lacked: diffusers leaves those on
    the meta device (no data), which would fail later with an unclear torch error."""
    import torch

    if not isinstance(module, torch.nn.Module):
        return
    # Parameters and persistent buffers: what a checkpoint holds.
    empty = [key for key, tensor in module.state_dict(keep_vars=True).items() if tensor.is_meta]
    if empty:
        what = f"{name} ({type(module).__name__})" if name else type(module).__name__
        raise PipelineError(
            "invalid_params",
            f"{path}: the checkpoint lacks {len(empty)} tensor(s) of the {what}, e.g. "
            f"{', '.join(empty[:3])}: it is incomplete or not a {family.title} checkpoint in "
            "the single-file (LDM) key layout", "params.model")


def _single_file_family(path: Path) -> str:
    if path.suffix != ".safetensors":
        raise PipelineError("invalid_params",
                            f"{path}: single-file checkpoints must be .safetensors (pickled "
                            ".ckpt files are not loaded)", "params.model")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError) as error:
        raise PipelineError("invalid_params", f"{path}: not a readable .safetensors file "
                            f"({error})", "params.model") from error
    for prefix, family in _SINGLE_FILE_KEYS:
        if any(key.startswith(prefix) for key in keys):
            return family
    raise PipelineError("invalid_params", f"{path}: not a Stable Diffusion/SDXL/SD3/FLUX "
                        "checkpoint (unknown key layout)", "params.model")


def _ready(pipe, family: Family, source: ModelSource, device: str) -> ImageModel:
    pipe.set_progress_bar_config(disable=True)
    if device.startswith("cuda"):
        _place_on_gpu(pipe, device)
    else:
        pipe.to(device)
    return ImageModel(pipe, family, source, device)


def _place_on_gpu(pipe, device: str) -> None:
    """Whole model on the GPU when it fits with room for activations; else offload the
    idle modules to the CPU, and slice attention when memory is short."""
    import torch

    need = sum(p.numel() * p.element_size() for module in pipe.components.values()
               if isinstance(module, torch.nn.Module) for p in module.parameters())
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    if need * 1.3 < free:   # activations and the VAE decode need headroom
        pipe.to(device)
        return
    pipe.enable_model_cpu_offload(device=device)
    if hasattr(pipe, "enable_attention_slicing"):
        pipe.enable_attention_slicing()


def load_controlnet(source: ModelSource, device: str):
    """The ``ModelSpec.load`` of a ControlNet folder (its config.json names the class)."""
    import diffusers

    path = Path(source.path)
    config = path / "config.json"
    if not config.is_file():
        raise PipelineError("invalid_params", f"{path} is not a ControlNet folder (no "
                            "config.json)", "params.controlnets")
    class_name = json.loads(config.read_text()).get("_class_name", "")
    if class_name not in ("ControlNetModel", "SD3ControlNetModel", "FluxControlNetModel",
                          "ControlNetUnionModel"):
        raise PipelineError("invalid_params", f"{path} holds a {class_name or 'model'}, not a "
                            "ControlNet", "params.controlnets")
    family = {"SD3ControlNetModel": FAMILIES["sd3"], "FluxControlNetModel": FAMILIES["flux"]}.get(
        class_name, FAMILIES["sd"])
    model = getattr(diffusers, class_name).from_pretrained(
        path, torch_dtype=torch_dtype(family, device), local_files_only=True)
    return model.to(device).eval()
