"""Generate (``image.generate``) maths without bpy: params from the panel's settings, image
buffers between Blender's pixel layout and the wire's, sizes and seeds.

Blender images: ``pixels`` is a flat float32 RGBA buffer, row 0 at the bottom; byte images
(PNG, JPEG) hold sRGB-encoded values there, float images (EXR, render results saved as float)
hold scene-linear values. The wire's images are (H, W, C) uint8 sRGB, row 0 at the top
(PROTOCOL.md "Image").
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np

from .colour import linear_to_srgb

#: Largest seed the add-on draws for "new seed" (the server accepts up to 2**63 - 17).
MAX_SEED = 2**31 - 1


def pixels_to_srgb8(pixels: np.ndarray, width: int, height: int, linear: bool = False,
                    channels: int = 4) -> np.ndarray:
    """A Blender image's pixels as a wire image.

    Args:
        pixels: flat float32 [height * width * channels], row 0 at the bottom.
        linear: the values are scene-linear (float images); else sRGB-encoded (byte images).

    Returns:
        uint8 (height, width, 3) sRGB, row 0 at the top.
    """
    image = np.asarray(pixels, dtype=np.float32).reshape(height, width, channels)[::-1, :, :3]
    if linear:
        image = linear_to_srgb(image)
    return np.ascontiguousarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))


def srgb8_to_pixels(image: np.ndarray) -> np.ndarray:
    """A wire image (H, W, 3|4) uint8 sRGB, row 0 at the top, as a byte image's pixels:
    flat float32 RGBA, row 0 at the bottom (alpha 1 where the image has none)."""
    image = np.asarray(image)
    h, w, c = image.shape
    rgba = np.ones((h, w, 4), dtype=np.float32)
    rgba[:, :, :c] = image.astype(np.float32) * (1.0 / 255.0)
    return np.ascontiguousarray(rgba[::-1]).reshape(-1)


def pixels_to_mask8(pixels: np.ndarray, width: int, height: int, channels: int = 4) -> np.ndarray:
    """A painted mask image's pixels as the wire's inpaint mask: (height, width) uint8, 255
    where the painting is light (the brightest channel at least half), 0 elsewhere; row 0 at
    the top."""
    image = np.asarray(pixels, dtype=np.float32).reshape(height, width, channels)[::-1]
    light = image[:, :, :min(3, channels)].max(axis=2) >= 0.5
    return np.ascontiguousarray(np.where(light, 255, 0).astype(np.uint8))


def parse_model_list(text: str, field: str = "LoRAs") -> list[dict]:
    """``"name:0.8, other"`` -> ``[{"model": "name", "scale": 0.8}, {"model": "other",
    "scale": 1.0}]`` (the ``loras`` param). A scale is the text after the last colon when it is
    a number, so Windows paths (``C:\\x.safetensors``) stay whole.

    Raises:
        ValueError: an empty entry.
    """
    items = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            if text.strip():
                raise ValueError(f"{field}: empty entry in {text!r}")
            continue
        model, scale = entry, 1.0
        head, sep, tail = entry.rpartition(":")
        if sep and head:
            try:
                scale = float(tail)
                model = head.strip()
            except ValueError:
                pass
        items.append({"model": model, "scale": scale})
    return items


def render_size(resolution_x: int, resolution_y: int, percentage: int = 100,
                multiple: int = 8) -> tuple[int, int]:
    """The scene's output size in pixels, rounded to the nearest multiple the models need
    (at least one multiple). Returns (width, height)."""
    scale = percentage / 100.0

    def snap(value: float) -> int:
        return max(multiple, int(value * scale / multiple + 0.5) * multiple)  # half up

    return snap(resolution_x), snap(resolution_y)


def new_seed(rng: random.Random | None = None) -> int:
    """A fresh seed for "New Seed"."""
    return (rng or random.SystemRandom()).randint(0, MAX_SEED)


def generate_params(settings: Mapping[str, Any], width: int, height: int,
                    with_image: bool) -> dict:
    """The ``image.generate`` params for the panel's settings.

    Args:
        settings: model, prompt, negative_prompt, steps, guidance_scale, seed, num_images,
            scheduler, strength, loras ("name:scale, ..."): the property group's values.
        width, height: the output size; ignored (0) when an input image sets it.
        with_image: img2img: the source image gives the size and ``strength`` applies.
    """
    params = {
        "model": str(settings.get("model", "")).strip(),
        "prompt": str(settings.get("prompt", "")),
        "negative_prompt": str(settings.get("negative_prompt", "")),
        "steps": int(settings.get("steps", 30)),
        "guidance_scale": float(settings.get("guidance_scale", 7.0)),
        "seed": int(settings.get("seed", 0)),
        "num_images": int(settings.get("num_images", 1)),
        "scheduler": str(settings.get("scheduler", "")),
    }
    loras = parse_model_list(str(settings.get("loras", "")))
    if loras:
        params["loras"] = loras
    if with_image:
        params["strength"] = float(settings.get("strength", 0.75))
    else:
        params.update(width=int(width), height=int(height))
    return params


def image_names(prefix: str, seeds) -> list[str]:
    """Names of the Blender images a result lands in, one per seed."""
    return [f"{prefix} {int(seed)}" for seed in seeds]
