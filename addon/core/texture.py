"""Texturing maths of the add-on (bpy-free): the mesh payload of `mesh.texture`, its params, and
the texture it returns as Blender image pixels.

Frames: vertices go to the wire in Blender's world frame (object matrix applied), metres; UVs
per face corner with Blender's origin (bottom-left). The texture comes back with row 0 at the
top (an image on the wire); Blender images store row 0 at the bottom, so rows are flipped.
"""

from __future__ import annotations

import numpy as np

PIPELINE = "mesh.texture"
SOURCES = ("PHOTOS", "RENDER", "PROMPT")


def mesh_payload(local_vertices: np.ndarray, matrix_world: np.ndarray, tri_vertices: np.ndarray,
                 tri_loops: np.ndarray, loop_uvs: np.ndarray) -> dict:
    """The Mesh map of `mesh.texture` from a triangulated Blender mesh's flat buffers.

    Args:
        local_vertices: vertex positions, object frame. [V, 3]
        matrix_world: the object's world matrix. [4, 4]
        tri_vertices: vertex indices of the loop triangles. [F, 3]
        tri_loops: loop (face corner) indices of the loop triangles. [F, 3]
        loop_uvs: UV per loop of the UV map to bake into. [L, 2]

    Returns:
        {"vertices" [V, 3] <f4 world, "faces" [F, 3] <i4, "uvs" [F, 3, 2] <f4}.

    Raises:
        ValueError: empty mesh or indices out of range (the message says which).
    """
    v = np.asarray(local_vertices, dtype=np.float64).reshape(-1, 3)
    tri_v = np.asarray(tri_vertices, dtype=np.int64).reshape(-1, 3)
    tri_l = np.asarray(tri_loops, dtype=np.int64).reshape(-1, 3)
    uv = np.asarray(loop_uvs, dtype=np.float32).reshape(-1, 2)
    if len(tri_v) == 0:
        raise ValueError("the mesh has no faces to texture")
    if tri_v.max() >= len(v) or tri_l.max() >= len(uv):
        raise ValueError("the mesh's triangles index past its vertices or UVs")
    m = np.asarray(matrix_world, dtype=np.float64)
    world = v @ m[:3, :3].T + m[:3, 3]
    return {
        "vertices": np.ascontiguousarray(world, dtype=np.float32),
        "faces": np.ascontiguousarray(tri_v, dtype=np.int32),
        "uvs": np.ascontiguousarray(uv[tri_l], dtype=np.float32),
    }


def texture_params(texture_size: int, source: str, prompt: str = "", model: str = "",
                   seed: int = 0, steps: int = 30) -> dict:
    """The params of a `mesh.texture` submit (generation settings only for the PROMPT source)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    params = {"texture_size": int(texture_size)}
    if source == "PROMPT":
        if not prompt.strip():
            raise ValueError("a prompt is needed to generate the views")
        params.update(prompt=prompt, seed=int(seed), steps=int(steps))
        if model.strip():
            params["model"] = model.strip()
    return params


def texture_pixels(texture: np.ndarray) -> np.ndarray:
    """Blender image pixels of a wire texture: float32 RGBA in [0, 1], rows bottom to top, flat.

    The colour channels stay sRGB-encoded (the image is tagged sRGB); alpha is linear. The
    padded texels (alpha 0 on the wire) keep their colour but get alpha 1 in Blender, so that a
    material that uses the image's alpha does not cut holes at island borders; the coverage is
    kept in the image's ``nstudio_seen`` property instead.

    Args:
        texture: the `mesh.texture` result. [S, S, 4] uint8

    Returns:
        [S * S * 4] float32
    """
    tex = np.asarray(texture)
    if tex.ndim != 3 or tex.shape[2] != 4 or tex.dtype != np.uint8:
        raise ValueError(f"texture must be [S, S, 4] uint8, got {tex.shape} {tex.dtype}")
    px = tex[::-1].astype(np.float32) / 255.0
    px[..., 3] = 1.0
    return np.ascontiguousarray(px).reshape(-1)


def seen_fraction(texture: np.ndarray) -> float:
    """Fraction of the texels some view saw (alpha 255)."""
    return float((np.asarray(texture)[..., 3] > 0).mean())


def image_rgb8(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """A Blender image's flat float pixels (rows bottom to top) as a wire image, row 0 on top.

    Args:
        pixels: `Image.pixels` values (as stored: sRGB-encoded for byte images). [H * W * C]
        width, height: the image size.

    Returns:
        [H, W, 3] uint8
    """
    px = np.asarray(pixels, dtype=np.float32).reshape(height, width, -1)[::-1, :, :3]
    return (np.clip(px, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
