"""Image helpers shared by the Generate modules (bpy layer): Blender images to and from wire
images, the landing of a result image, and the output size."""

from __future__ import annotations

import bpy
import numpy as np

from ..core import generate_math

PIPELINE = "image.generate"
PROP_SEED = "nstudio_seed"


def image_to_srgb8(image) -> np.ndarray:
    """A Blender image as a wire image (H, W, 3) uint8 sRGB, row 0 at the top."""
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"image '{image.name}' has no pixels (not loaded or empty)")
    pixels = np.empty(width * height * image.channels, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    return generate_math.pixels_to_srgb8(pixels, width, height, linear=image.is_float,
                                         channels=image.channels)


def image_to_mask8(image) -> np.ndarray:
    """A painted mask image as the wire's inpaint mask (H, W) uint8 (255 repaints)."""
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"mask image '{image.name}' has no pixels")
    pixels = np.empty(width * height * image.channels, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    return generate_math.pixels_to_mask8(pixels, width, height, image.channels)


def output_size(scene, settings) -> tuple[int, int]:
    if settings.use_render_size:
        render = scene.render
        return generate_math.render_size(render.resolution_x, render.resolution_y,
                                         render.resolution_percentage)
    return generate_math.render_size(settings.width, settings.height)


def land_image(name: str, pixels: np.ndarray, seed):
    """Create (or overwrite) the Blender image ``name`` from a wire image, packed into the .blend
    (``seed`` None: not a generated image, e.g. a ControlNet source)."""
    h, w = pixels.shape[:2]
    image = bpy.data.images.get(name)
    if image is None or tuple(image.size) != (w, h):
        if image is not None:
            bpy.data.images.remove(image)
        image = bpy.data.images.new(name, w, h, alpha=False)
    image.pixels.foreach_set(generate_math.srgb8_to_pixels(pixels))
    image.update()
    image.pack()   # saved inside the .blend: nothing to lose when the temp folder is cleaned
    if seed is not None:
        image[PROP_SEED] = seed
    image.use_fake_user = True
    return image
