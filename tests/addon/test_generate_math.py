"""addon/core/generate_math.py: Blender pixels <-> wire images, sizes, seeds, params (no bpy)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from addon.core import generate_math as gm


def test_pixels_round_trip_and_row_order():
    rng = np.random.default_rng(0)
    wire = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    pixels = gm.srgb8_to_pixels(wire)
    assert pixels.dtype == np.float32 and pixels.shape == (5 * 7 * 4,)
    rgba = pixels.reshape(5, 7, 4)
    # Blender's row 0 is the bottom: the wire's last row.
    np.testing.assert_allclose(rgba[0, :, :3], wire[-1] / 255.0, atol=1e-7)
    assert (rgba[..., 3] == 1.0).all()
    np.testing.assert_array_equal(gm.pixels_to_srgb8(pixels, 7, 5), wire)


def test_linear_pixels_are_srgb_encoded():
    linear = np.array([0.0, 0.0031308, 0.18, 0.5, 1.0, 2.0], np.float32)
    pixels = np.repeat(linear, 4).astype(np.float32)        # 1 row, 6 pixels, RGBA
    out = gm.pixels_to_srgb8(pixels, 6, 1, linear=True)[0, :, 0]
    # sRGB(0.18) = 0.4614 -> 118; sRGB(0.5) = 0.7354 -> 188; above 1 clips.
    assert out.tolist() == [0, 10, 118, 188, 255, 255]
    # Three-channel float buffers (channels=3) are read too.
    rgb = np.repeat(linear, 3).astype(np.float32)
    assert gm.pixels_to_srgb8(rgb, 6, 1, linear=True, channels=3)[0, :, 1].tolist() == out.tolist()


@pytest.mark.parametrize("x, y, pct, expected", [
    (1920, 1080, 100, (1920, 1080)), (1920, 1080, 50, (960, 544)), (1000, 750, 100, (1000, 752)),
    (3, 3, 100, (8, 8)),
])
def test_render_size_snaps_to_multiples_of_8(x, y, pct, expected):
    assert gm.render_size(x, y, pct) == expected


def test_params_for_text_and_for_img2img():
    settings = {"model": " tiny ", "prompt": "p", "negative_prompt": "n", "steps": 4,
                "guidance_scale": 5, "seed": 9, "num_images": 2, "scheduler": "euler",
                "strength": 0.3}
    text = gm.generate_params(settings, 64, 32, with_image=False)
    assert text == {"model": "tiny", "prompt": "p", "negative_prompt": "n", "steps": 4,
                    "guidance_scale": 5.0, "seed": 9, "num_images": 2, "scheduler": "euler",
                    "width": 64, "height": 32}
    img = gm.generate_params(settings, 64, 32, with_image=True)
    assert img["strength"] == 0.3 and "width" not in img and "height" not in img


def test_new_seed_and_names():
    seeds = {gm.new_seed(random.Random(i)) for i in range(20)}
    assert len(seeds) == 20 and all(0 <= s <= gm.MAX_SEED for s in seeds)
    assert gm.image_names("Generated", np.array([3, 4])) == ["Generated 3", "Generated 4"]


def test_mask_from_painted_pixels():
    pixels = np.zeros((2, 3, 4), np.float32)
    pixels[0, 1, :3] = 1.0          # bottom row (Blender's row 0), middle: painted white
    pixels[1, 2, 1] = 0.6           # top row, right: light green counts too
    pixels[1, 0, 0] = 0.4           # dim: not repainted
    mask = gm.pixels_to_mask8(pixels.reshape(-1), 3, 2)
    assert mask.dtype == np.uint8 and mask.tolist() == [[0, 0, 255], [0, 255, 0]]


def test_lora_lists():
    assert gm.parse_model_list("") == []
    assert gm.parse_model_list("detail:0.8, /srv/loras/style.safetensors , org/name:-1") == [
        {"model": "detail", "scale": 0.8}, {"model": "/srv/loras/style.safetensors", "scale": 1.0},
        {"model": "org/name", "scale": -1.0}]
    assert gm.parse_model_list(r"C:\loras\a.safetensors") == [
        {"model": r"C:\loras\a.safetensors", "scale": 1.0}]
    with pytest.raises(ValueError, match="empty entry"):
        gm.parse_model_list("a,,b")
    params = gm.generate_params({"loras": "a:0.5"}, 8, 8, with_image=False)
    assert params["loras"] == [{"model": "a", "scale": 0.5}]
    assert "loras" not in gm.generate_params({}, 8, 8, with_image=False)
