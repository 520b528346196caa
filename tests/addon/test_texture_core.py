"""addon.core.texture (bpy-free): the Mesh payload, the submit params and the image pixels."""

from __future__ import annotations

import numpy as np
import pytest

from addon.core import texture


def test_mesh_payload_applies_the_world_matrix_and_picks_corner_uvs():
    local = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
    matrix = np.eye(4)
    matrix[:3, :3] *= 2.0
    matrix[:3, 3] = (1.0, 2.0, 3.0)
    tri_v = np.array([0, 1, 2, 1, 3, 2])
    tri_l = np.array([0, 1, 2, 3, 4, 5])
    loop_uv = np.arange(12, dtype=np.float32).reshape(6, 2) / 12
    m = texture.mesh_payload(local, matrix, tri_v, tri_l, loop_uv)
    np.testing.assert_allclose(m["vertices"][3], [3.0, 4.0, 3.0])
    assert m["faces"].dtype == np.int32 and m["faces"].shape == (2, 3)
    assert m["uvs"].dtype == np.float32 and m["uvs"].shape == (2, 3, 2)
    np.testing.assert_array_equal(m["uvs"][1, 2], loop_uv[5])
    with pytest.raises(ValueError, match="no faces"):
        texture.mesh_payload(local, matrix, np.zeros(0), np.zeros(0), loop_uv)
    with pytest.raises(ValueError, match="index past"):
        texture.mesh_payload(local, matrix, np.array([0, 1, 9]), np.array([0, 1, 2]), loop_uv)


def test_texture_pixels_flip_rows_and_keep_padded_texels_opaque():
    tex = np.zeros((4, 4, 4), np.uint8)
    tex[0] = (255, 0, 0, 255)  # top row red and seen
    tex[3] = (0, 0, 255, 0)  # bottom row padding (unseen)
    px = texture.texture_pixels(tex).reshape(4, 4, 4)
    np.testing.assert_allclose(px[3, 0], [1, 0, 0, 1])  # Blender's last row is the top
    np.testing.assert_allclose(px[0, 0], [0, 0, 1, 1])
    assert texture.seen_fraction(tex) == 0.25
    with pytest.raises(ValueError):
        texture.texture_pixels(np.zeros((4, 4, 3), np.uint8))


def test_image_rgb8_is_the_inverse_row_order():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((3, 5, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(texture.image_rgb8(texture.texture_pixels(rgba), 5, 3), rgb)


def test_params_by_source():
    assert texture.texture_params(512, "RENDER") == {"texture_size": 512}
    p = texture.texture_params(256, "PROMPT", prompt="a mug", model="/m", seed=3)
    assert p == {"texture_size": 256, "prompt": "a mug", "seed": 3, "steps": 30, "model": "/m"}
    with pytest.raises(ValueError, match="prompt"):
        texture.texture_params(256, "PROMPT")
    with pytest.raises(ValueError, match="source"):
        texture.texture_params(256, "VIDEO")
