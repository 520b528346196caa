"""Generation mode of `mesh.texture`: views painted by an inpainting diffusion model.

View by view (the "project, then inpaint what is missing" scheme of TEXTure, Richardson et al.
2023, and Text2Tex, Chen et al. 2023, reimplemented on our own bake): the texture baked so far
is looked up through the view's UVs; the pixels it already covers are kept and the rest is
masked for inpainting, so the first view is generated from the prompt alone and every later one
only fills in what the earlier views did not cover (the masks shrink view after view and the
views agree where they overlap). The unknown region starts from the mesh's normal shading and
the view's depth is passed as the control image where the loaded pipeline takes one
(ControlNet inpainting), so the generated view follows the geometry.

The model is not declared in `PIPELINE.models` (projection needs none, and the registry loads
every declared model for every job); it is loaded on demand through the job's `models.load`
(server/models.py `LoadedModels.load`) with the spec :data:`INPAINT`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import numpy as np

from addon.wire.schema import PipelineError

from ..base import ModelSource, ModelSpec
from .colour import linear_to_srgb8

log = logging.getLogger(__name__)

#: Default inpainting model reference (a name in the server's models folder or a hub id).
DEFAULT_INPAINT = "stable-diffusion-inpainting"


def load_inpaint(source: ModelSource, device: str) -> Any:
    """Load a diffusers inpainting pipeline (folder, hub cache, or single-file checkpoint).

    Args:
        source: where the registry found it (`ModelSource.path` a folder or a .safetensors file).
        device: torch device string.

    Returns:
        The pipeline on `device`, float16 on CUDA, float32 elsewhere, progress bars off.
    """
    import torch
    from diffusers import AutoPipelineForInpainting, StableDiffusionInpaintPipeline

    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    path = source.path
    if path is not None and path.is_file():
        pipe = StableDiffusionInpaintPipeline.from_single_file(str(path), torch_dtype=dtype,
                                                               local_files_only=True)
    else:
        pipe = AutoPipelineForInpainting.from_pretrained(str(path or source.ref), dtype=dtype,
                                                         local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


INPAINT = ModelSpec(
    key="inpaint",
    default=DEFAULT_INPAINT,
    load=load_inpaint,
    param="model",
    doc="inpainting diffusion model that paints the views of mesh.texture's generation mode",
)


def generate_view(pipe: Any, prompt: str, depth: np.ndarray, mask: np.ndarray, seed: int, *,
                  init: np.ndarray, negative_prompt: str = "", steps: int = 30,
                  guidance_scale: float = 7.5, strength: float = 1.0,
                  on_step=None) -> np.ndarray:
    """Paint one view with an inpainting pipeline.

    Args:
        pipe: a diffusers inpainting pipeline (optionally ControlNet inpainting).
        prompt: what the object looks like.
        depth: metres along -Z, inf where empty. [H, W]
        mask: 255 where the view is to be painted, 0 where `init` is kept. [H, W] uint8
        seed: generator seed.
        init: sRGB start image (known texture + normal shading). [H, W, 3] uint8
        negative_prompt, steps, guidance_scale, strength: as in `image.generate`.
        on_step: called after every denoising step (cancel checks).

    Returns:
        The painted view, sRGB. [H, W, 3] uint8
    """
    import torch
    from PIL import Image

    H, W = mask.shape
    kwargs = dict(
        prompt=prompt, negative_prompt=negative_prompt or None,
        image=Image.fromarray(init), mask_image=Image.fromarray(mask),
        height=H, width=W, num_inference_steps=steps, guidance_scale=guidance_scale,
        strength=strength, generator=torch.Generator("cpu").manual_seed(int(seed)),
        output_type="np",
    )
    accepted = inspect.signature(pipe.__call__).parameters
    if "control_image" in accepted:
        kwargs["control_image"] = Image.fromarray(depth_image(depth))
    if on_step is not None and "callback_on_step_end" in accepted:
        def callback(_pipe, _step, _t, tensors):
            on_step()
            return tensors
        kwargs["callback_on_step_end"] = callback
    out = pipe(**kwargs).images[0]
    image = np.clip(np.asarray(out, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if image.shape[:2] != (H, W):
        image = np.asarray(Image.fromarray(image).resize((W, H), Image.BICUBIC))
    # Keep the known pixels exactly: VAE round trips drift, and they are already in the texture.
    keep = mask < 128
    image[keep] = init[keep]
    return image


def depth_image(depth: np.ndarray) -> np.ndarray:
    """Depth as a ControlNet-style image: near bright, far dark, empty black. [H, W, 3] uint8"""
    finite = np.isfinite(depth)
    out = np.zeros(depth.shape, dtype=np.float32)
    if finite.any():
        inv = np.where(finite, 1.0 / np.maximum(depth, 1e-9), 0.0)
        lo, hi = inv[finite].min(), inv[finite].max()
        out = np.where(finite, 0.2 + 0.8 * (inv - lo) / max(hi - lo, 1e-12), 0.0)
    return np.repeat((out * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)


def normal_shading(normal: np.ndarray, hit: np.ndarray, view_dir: np.ndarray) -> np.ndarray:
    """Grey Lambert shading of the surface as seen (a neutral start for painting). [H, W, 3] uint8"""
    shade = np.clip(np.abs((normal * view_dir).sum(axis=-1)), 0.0, 1.0) * 0.6 + 0.3
    grey = np.where(hit, shade, 0.5)
    return np.repeat((grey * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)


class ViewGenerator:
    """Paints the views of one job in order, each inpainting what the texture lacks.

    Attributes:
        pipe: the loaded inpainting pipeline.
        params: the job's `mesh.texture` Params.
        mask_fractions: per view, the fraction of the mesh's pixels that were inpainted.
    """

    def __init__(self, pipe: Any, params: Any):
        self.pipe = pipe
        self.params = params
        self.mask_fractions: list[float] = []

    @classmethod
    def load(cls, models: Any, params: Any, device) -> "ViewGenerator":
        """Load the inpainting model through the job's registry handle."""
        loader = getattr(models, "load", None)
        if loader is None:
            raise PipelineError("unavailable", "mesh.texture: generating views needs the server's "
                                "model registry; send `images` to project instead")
        ref = params.model.strip() or None
        return cls(loader(INPAINT, ref, "params.model" if ref else None), params)

    def view(self, index: int, total: int, camera, frags, texels, acc, job) -> np.ndarray:
        """Paint view `index` (sRGB uint8 [H, W, 3]) given the texture accumulated so far.

        Args:
            index: the view's position (its seed is params.seed + index).
            total: the number of views.
            camera: the view (C = 1, `nskernels.camera.Cameras`).
            frags: the view's fragments (with UVs).
            texels, acc: the UV texels and the views accumulated so far (`pipelines.mesh.bake`).
            job: the running job (progress, cancel).
        """
        from . import bake

        texture, seen = bake.resolve(texels, acc, padding=0)
        known_rgb, known = bake.render_texture(frags, texture, seen)
        hit = (frags.triangle >= 0).cpu().numpy()
        known = known.cpu().numpy()
        # The camera looks down its -Z axis: shade by the normals' component along that axis.
        view_dir = camera.world_from_camera[0, :3, 2].cpu().numpy()
        init = normal_shading(frags.normal.cpu().numpy(), hit, view_dir)
        known_srgb = linear_to_srgb8(known_rgb.cpu().numpy())
        init[known] = known_srgb[known]
        mask = np.where(known, 0, 255).astype(np.uint8)
        fraction = float((~known & hit).sum()) / max(int(hit.sum()), 1)
        self.mask_fractions.append(fraction)
        p = self.params
        job.progress("generate", index, total, f"view {index + 1}/{total}: painting "
                     f"{100 * fraction:.0f} % of the mesh's pixels")
        return generate_view(self.pipe, p.prompt, frags.depth.cpu().numpy(), mask, p.seed + index,
                             init=init, negative_prompt=p.negative_prompt, steps=p.steps,
                             guidance_scale=p.guidance_scale, strength=p.strength,
                             on_step=job.check_cancel)

