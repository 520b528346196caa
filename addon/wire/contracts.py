"""Schemas of the data contracts in shared/PROTOCOL.md, for pipelines to compose.

``GAUSSIANS`` and ``CAMERAS`` are :class:`~pipelines.base.Struct` fields; use them directly in a
pipeline's inputs/outputs (``{"gaussians": GAUSSIANS, "cameras": CAMERAS}``) or make a variant
with ``dataclasses.replace(GAUSSIANS, optional=True, doc=...)``. Symbols: ``N`` Gaussians,
``K`` SH coefficients beyond degree 0, ``T`` cameras/frames.
"""

from __future__ import annotations

import dataclasses

from .schema import Array, Either, Struct, Value

F4 = ("<f4",)
FLOAT = ("<f4", "<f8")
ALL_DTYPES = ("|b1", "|u1", "|i1", "<u2", "<i2", "<f2", "<u4", "<i4", "<f4", "<u8", "<i8", "<f8")
#: shN [N, K, 3] has K = (degree + 1)**2 - 1 "rest" coefficients for SH degree 0..3: the one
#: table, both ways (nskernels, which imports nothing of ours, uses the formula).
K_BY_DEGREE = {degree: (degree + 1) ** 2 - 1 for degree in range(4)}
DEGREE_BY_K = {k: degree for degree, k in K_BY_DEGREE.items()}
SH_REST_COUNTS = tuple(K_BY_DEGREE.values())

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


# ---------------------------------------------------------------------------------------------
# Motion (PROTOCOL.md "Motion"): symbols T frames, J joints, V/F vertices/faces, I influences.
# ---------------------------------------------------------------------------------------------

#: The COCO-17 keypoint order of ``keypoints3d`` (PROTOCOL.md).
COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)
#: The columns of ``contacts``, in order.
CONTACT_POINTS = ("left_heel", "left_toe", "right_heel", "right_toe")

SKELETON = Struct(
    {
        "names": Value("list", "joint names, J unique strings"),
        "parents": Array(("<i4",), ("J",), "parent joint index, -1 for the root; parents come "
                         "before their children. [J]"),
        "rest": Array(F4, ("J", 3), "rest-pose joint positions in the body's own frame (Z up, "
                      "metres, feet on Z = 0, facing -Y); joint frames at rest are axis-aligned. [J, 3]"),
    },
    doc="The joint hierarchy and its rest pose (PROTOCOL.md Motion.skeleton).",
)

MOTION_MESH = Struct(
    {
        "vertices": Array(F4, ("V", 3), "rest-pose vertices, body frame, metres. [V, 3]"),
        "faces": Array(("<i4",), ("F", 3), "triangles. [F, 3]"),
        "skin_index": Array(("<i4",), ("V", "I"), "joint index of each influence. [V, I]"),
        "skin_weight": Array(F4, ("V", "I"), "weight of each influence (rows sum to 1). [V, I]"),
    },
    doc="The skinned body at rest (PROTOCOL.md Motion.mesh).",
    optional=True,
)

BODY_PARAMS = Struct(
    {
        "model": Value("str", '"anny", "smpl", "smplx"'),
        "*": Value("any", "the model's own parameters: SMPL family betas (B,), global_orient (T,3), "
                   "body_pose (T,69|63) axis-angle, transl (T,3) in SMPL's Y-up frame, "
                   "world_from_body (4,4); Anny phenotype (6,) with phenotype_labels"),
    },
    doc="the body model's own parameters",
    optional=True,
)

MOTION = Struct(
    {
        "fps": Value("float", "frames per second"),
        "skeleton": SKELETON,
        "rotations": Array(F4, ("T", "J", 4), "local joint rotations (w, x, y, z) relative to the "
                           "parent, on axis-aligned rest frames. [T, J, 4]"),
        "root_translation": Array(F4, ("T", 3), "root joint world position, metres. [T, 3]"),
        "joints": Array(F4, ("T", "J", 3), "posed world joint positions (forward kinematics). [T, J, 3]"),
        "keypoints3d": Array(F4, ("T", 17, 3), "COCO-17 keypoints in the world, metres. [T, 17, 3]"),
        "contacts": Array(F4, ("T", 4), "left heel, left toe, right heel, right toe touching the "
                          "ground, in [0, 1]. [T, 4]"),
        "confidence": Array(F4, ("T",), "per-frame confidence in [0, 1]. [T]"),
        "camera": dataclasses.replace(CAMERAS, optional=True,
                                      doc="the source video's camera per frame (T cameras), same world"),
        "body": BODY_PARAMS,
        "mesh": MOTION_MESH,
        "*": Value("any", "further outputs (e.g. keypoints2d), ignored by consumers that do not know them"),
    },
    doc="A body's animation (PROTOCOL.md Motion): skeleton + local rotations + root translation, "
        "COCO-17 world keypoints, foot contacts.",
)

#: The Motion map's fields, for a pipeline's ``outputs`` (it may add its own beside them).
MOTION_FIELDS = {k: v for k, v in MOTION.fields.items() if k != "*"}

__all__ = ["ALL_DTYPES", "BODY_PARAMS", "CAMERAS", "COCO17", "CONTACT_POINTS", "DEGREE_BY_K", "GAUSSIANS",
           "K_BY_DEGREE", "MESH", "MOTION",
           "MOTION_FIELDS", "MOTION_MESH", "SH_REST_COUNTS", "SKELETON"]
