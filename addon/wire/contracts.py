"""Schemas of the data contracts in shared/PROTOCOL.md, for pipelines to compose.

``GAUSSIANS`` and ``CAMERAS`` are :class:`~pipelines.base.Struct` fields; use them directly in a
pipeline's inputs/outputs (``{"gaussians": GAUSSIANS, "cameras": CAMERAS}``) or make a variant
with ``dataclasses.replace(GAUSSIANS, optional=True, doc=...)``. Symbols: ``N`` Gaussians,
``K`` SH coefficients beyond degree 0, ``T`` cameras/frames.
"""

from __future__ import annotations

from .schema import Array, Either, Struct, Value

F4 = ("<f4",)
FLOAT = ("<f4", "<f8")
ALL_DTYPES = ("|b1", "|u1", "|i1", "<u2", "<i2", "<f2", "<u4", "<i4", "<f4", "<u8", "<i8", "<f8")
#: shN has K = (degree + 1)**2 - 1 coefficients for SH degree 0..3.
SH_REST_COUNTS = (0, 3, 8, 15)

GAUSSIANS = Struct(
    {
        "means": Array(F4, ("N", 3), "Gaussian centres, world frame (Blender, Z up), metres. [N, 3]"),
        "quats": Array(F4, ("N", 4), "rotations as (w, x, y, z), not necessarily normalised. [N, 4]"),
        "scales": Array(F4, ("N", 3), "log of the per-axis standard deviations, metres. [N, 3]"),
        "opacities": Array(F4, ("N",), "opacity logits (opacity = sigmoid). [N]"),
        "sh0": Array(F4, ("N", 3), "degree-0 SH coefficient per colour channel. [N, 3]"),
        "shN": Array(
            F4, ("N", SH_REST_COUNTS, 3),
            "higher SH coefficients, K in {0, 3, 8, 15} for degree 0..3. [N, K, 3]",
        ),
        "*": Array(
            ALL_DTYPES, ("N", ...),
            "optional extra per-Gaussian arrays, e.g. labels <i4. [N, ...]",
        ),
    },
    doc="3D Gaussians with their raw optimisation parameters (PROTOCOL.md Gaussians).",
)


def _per_camera(doc: str) -> Either:
    return Either(
        (Value("float", doc + " (one value for all cameras)"), Array(FLOAT, ("T",), doc + ". [T]")),
        doc=doc,
    )


CAMERAS = Struct(
    {
        "world_from_camera": Array(
            F4, ("T", 4, 4),
            "camera to world, Blender camera convention (looks down -Z, +Y up), metres. [T, 4, 4]",
        ),
        "fx": _per_camera("focal length along x, pixels"),
        "fy": _per_camera("focal length along y, pixels"),
        "cx": _per_camera("principal point x, pixels from the left edge (centred: width / 2)"),
        "cy": _per_camera("principal point y, pixels from the top edge (centred: height / 2)"),
        "width": Value("int", "image width, pixels"),
        "height": Value("int", "image height, pixels"),
        "near": Value("float", "near clipping distance, metres", optional=True),
        "far": Value("float", "far clipping distance, metres", optional=True),
        "fps": Value("float", "frames per second where the cameras are a path", optional=True),
    },
    doc="T pinhole cameras sharing one resolution (PROTOCOL.md Camera, with a leading axis T).",
)

MESH = Struct(
    {
        "vertices": Array(F4, ("V", 3), "vertex positions, world frame (Blender, Z up), metres. [V, 3]"),
        "faces": Array(("<i4",), ("F", 3), "triangles as vertex indices, counter-clockwise seen from outside. [F, 3]"),
        "uvs": Array(F4, ("F", 3, 2), "per-corner texture coordinates. [F, 3, 2]", optional=True),
        "colors": Array(F4, ("V", (3, 4)), "per-vertex linear colour (RGB or RGBA). [V, 3|4]", optional=True),
    },
    doc="A triangle mesh (PROTOCOL.md Mesh); splat.to_mesh fills vertices, faces and colors.",
)

__all__ = ["ALL_DTYPES", "CAMERAS", "GAUSSIANS", "MESH", "SH_REST_COUNTS"]
