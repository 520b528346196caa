"""ControlNet sources from the scene, without bpy: depth, normals, silhouette masks and OpenPose
images, plus the ``controlnets`` params and the OpenPose joint map for common rigs.

The Blender layer (``addon/blender/generate_sources.py``) renders the passes and reads the
bones; everything here takes numpy arrays. Pass buffers come as Blender stores them (flat
float32 RGBA, row 0 at the bottom); every image returned is a wire image: (H, W, 3) or (H, W)
uint8, row 0 at the top (PROTOCOL.md "Image").

Conventions, chosen to match what the ControlNets were trained on:

- Depth (MiDaS-style, the depth ControlNets' training data): inverse depth ``1/z`` scaled to
  0..1 over the visible pixels (nearest = 1 = white, farthest = 0), empty pixels 0 (black).
  This is the same map the server makes of an ``(H, W) <f4`` depth input.
- Normals (ControlNet 1.1 "normalbae", ScanNet's protocol): camera-space unit normals mapped
  ``rgb = (n + 1) / 2`` with red towards the image's left, green up and blue towards the
  viewer; a face looking straight at the camera is (128, 128, 255); empty pixels
  ``EMPTY_NORMAL`` (the colour of a far wall facing the camera).
- OpenPose: the 18 COCO body joints, limbs drawn as filled capsules in the standard OpenPose
  colours at 60 % and joints as full-colour discs, on black.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

import numpy as np

from ..wire.depth import inverse_depth_image

#: Blender's Depth pass writes this (10^10 m) where no surface was hit.
EMPTY_DEPTH = 1e9
#: Camera-space axis signs per RGB channel: red = -x (left), green = +y (up), blue = +z (front),
#: in Blender's camera frame (x right, y up, the camera looking down -z). Source: the
#: ControlNet 1.1 README (lllyasviel/ControlNet-v1-1-nightly, section "ControlNet 1.1 Normal"):
#: control_v11p_sd15_normalbae reads rendered normal maps "as long as the colors are correct
#: (blue is front, red is left, green is top)", i.e. ScanNet's protocol, which its annotator
#: (annotator/normalbae: Bae et al.'s ScanNet model, ``rgb = (n + 1) / 2``) produces.
#: Dream Textures' normalbae renderer does the same (view-space normal, red flipped: ``1 - r``).
NORMAL_AXIS_SIGNS = (-1.0, 1.0, 1.0)
EMPTY_NORMAL = (128, 128, 255)

SOURCE_KINDS = ("DEPTH", "NORMAL", "OPENPOSE", "MASK", "IMAGE")

# OpenPose-18 (COCO body) -------------------------------------------------------------------

JOINTS = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow",
          "l_wrist", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye",
          "l_eye", "r_ear", "l_ear")
#: The 17 limbs OpenPose draws (joint index pairs), in its drawing order.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
         (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
#: OpenPose's colour per joint (RGB) and per limb (the first 17).
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
           (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
           (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
           (255, 0, 255), (255, 0, 170), (255, 0, 85))

_L, _R = "l_", "r_"


def _sided(table: Mapping[str, str]) -> dict:
    """``{"shoulder": "upper_arm.{s}"}`` -> both sides (``{s}`` is L/R, ``{side}`` Left/Right)."""
    out = {}
    for joint, pattern in table.items():
        for prefix, s, side in ((_L, "L", "Left"), (_R, "R", "Right")):
            out[prefix + joint] = pattern.format(s=s, side=side)
    return out


#: Joint -> bone whose *head* is the joint, per rig naming preset. The nose, eyes and ears use
#: face bones when the rig has them, else they are estimated from the head bone (``face_from_head``).
RIG_PRESETS: dict[str, dict[str, str]] = {
    # Rigify's human metarig and the ORG-/DEF- bones of a generated Rigify rig.
    "metarig": {"neck": "spine.004", "head": "spine.006", "nose": "nose",
                **_sided({"shoulder": "upper_arm.{s}", "elbow": "forearm.{s}",
                          "wrist": "hand.{s}", "hip": "thigh.{s}", "knee": "shin.{s}",
                          "ankle": "foot.{s}", "eye": "eye.{s}", "ear": "ear.{s}"})},
    # Rigify's generated control bones.
    "rigify": {"neck": "neck", "head": "head",
               **_sided({"shoulder": "upper_arm_fk.{s}", "elbow": "forearm_fk.{s}",
                         "wrist": "hand_fk.{s}", "hip": "thigh_fk.{s}", "knee": "shin_fk.{s}",
                         "ankle": "foot_fk.{s}"})},
    # Mixamo (any "mixamorig<N>:" prefix is stripped first).
    "mixamo": {"neck": "Neck", "head": "Head",
               **_sided({"shoulder": "{side}Arm", "elbow": "{side}ForeArm",
                         "wrist": "{side}Hand", "hip": "{side}UpLeg", "knee": "{side}Leg",
                         "ankle": "{side}Foot", "eye": "{side}Eye"})},
}
_PREFIXES = ("ORG-", "DEF-")

#: The motion work's canonical (SMPL-24) joints, ``addon/core/motion/bone_maps.py``, that sit
#: where OpenPose joints do; a bone mapped to canonical joint j starts at j.
CANONICAL_TO_OPENPOSE = {
    "neck": "neck", "head": "head",
    **{f"{side}_{part}": f"{side[0]}_{joint}" for side in ("left", "right")
       for part, joint in (("shoulder", "shoulder"), ("elbow", "elbow"), ("wrist", "wrist"),
                           ("hip", "hip"), ("knee", "knee"), ("ankle", "ankle"))},
}


def joints_from_canonical(canonical: Mapping[str, str]) -> dict[str, str]:
    """{OpenPose joint or "head": bone} from a motion bone map ({canonical joint: bone})."""
    return {CANONICAL_TO_OPENPOSE[k]: bone for k, bone in canonical.items()
            if k in CANONICAL_TO_OPENPOSE}


def _bare(name: str) -> str:
    """A bone name without Mixamo's namespace and Rigify's ORG-/DEF- prefixes."""
    name = name.split(":", 1)[1] if ":" in name and name.lower().startswith("mixamorig") \
        else name
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def match_rig(bone_names: Iterable[str], canonical: Optional[Mapping[str, str]] = None
              ) -> tuple[str, dict[str, str]]:
    """Pick the preset that names most of the rig's body joints.

    Args:
        bone_names: the armature's bone names.
        canonical: the motion work's bone map of the rig ({canonical joint: bone}, by preset,
            names and topology), when available: used when it places more joints than the
            name presets here ("bone map").

    Returns:
        (preset name, {joint or "head": the rig's bone name}) with only the bones the rig has.

    Raises:
        ValueError: no preset finds a neck, both shoulders and both hips (not a humanoid rig
            this map knows).
    """
    bare: dict[str, str] = {}
    for name in bone_names:
        bare.setdefault(_bare(name), name)   # ORG- before DEF-? the first one found wins
    best, best_map = "", {}
    for preset, table in RIG_PRESETS.items():
        found = {joint: bare[bone] for joint, bone in table.items() if bone in bare}
        if len(found) > len(best_map):
            best, best_map = preset, found
    if canonical:
        present = set(bare.values())
        mapped = {j: b for j, b in joints_from_canonical(canonical).items() if b in present}
        # Face bones the presets found are kept: the canonical skeleton has none.
        face = {j: b for j, b in best_map.items()
                if j in ("nose", "l_eye", "r_eye", "l_ear", "r_ear")}
        if len(mapped) > len({j: b for j, b in best_map.items() if j not in face}):
            best, best_map = "bone map", {**mapped, **face}
    needed = ("neck", "l_shoulder", "r_shoulder", "l_hip", "r_hip")
    if not all(joint in best_map for joint in needed):
        known = ", ".join(RIG_PRESETS)
        raise ValueError(f"the armature's bones do not name a humanoid body this add-on knows "
                         f"(presets: {known}; it needs a neck, shoulders and hips)")
    return best, best_map


def face_from_head(head: np.ndarray, tail: np.ndarray, left: np.ndarray) -> dict[str, np.ndarray]:
    """Nose, eyes and ears estimated from the head bone, for rigs without face bones.

    The head bone runs from the base of the skull (head) to the crown (tail); the face is in
    front of its middle. Proportions are an adult's, in units of the bone's length.

    Args:
        head, tail: the head bone's ends, world frame. [3]
        left: a vector towards the character's left (its right shoulder to its left). [3]

    Returns:
        {"nose", "l_eye", "r_eye", "l_ear", "r_ear": world point [3]}.
    """
    up = tail - head
    length = float(np.linalg.norm(up))
    if length <= 0:
        raise ValueError("the head bone has zero length")
    up = up / length
    side = left - np.dot(left, up) * up
    side = side / max(float(np.linalg.norm(side)), 1e-12)
    forward = np.cross(side, up)   # the character faces away from its left x up
    centre = head + 0.45 * length * up
    nose = centre + 0.5 * length * forward
    eyes = centre + 0.15 * length * up + 0.42 * length * forward
    return {"nose": nose, "l_eye": eyes + 0.2 * length * side, "r_eye": eyes - 0.2 * length * side,
            "l_ear": centre + 0.45 * length * side, "r_ear": centre - 0.45 * length * side}


# Projection ----------------------------------------------------------------------------------

def project_points(points: np.ndarray, camera_from_world: np.ndarray, projection: np.ndarray,
                   width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions of world points through a Blender camera (perspective or orthographic).

    Args:
        points: world frame, metres. [P, 3]
        camera_from_world: the camera object's ``matrix_world`` inverted. [4, 4]
        projection: ``Camera.calc_matrix_camera(depsgraph, x=width, y=height)``. [4, 4]
        width, height: render size, pixels.

    Returns:
        pixels: (column, row from the top); pixel (r, c) covers [c, c+1) x [r, r+1). [P, 2]
        in_front: the point is in front of the camera (w > 0). [P]
    """
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    homo = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    clip = homo @ (np.asarray(projection, np.float64) @ np.asarray(camera_from_world,
                                                                    np.float64)).T
    w = clip[:, 3]
    safe = np.where(np.abs(w) > 1e-12, w, 1e-12)
    u = (clip[:, 0] / safe + 1.0) * 0.5 * width
    v = (1.0 - clip[:, 1] / safe) * 0.5 * height
    return np.stack([u, v], axis=1), w > 0


# Pass buffers -> control images ------------------------------------------------------------

def pass_image(pixels: np.ndarray, width: int, height: int, channels: int = 4) -> np.ndarray:
    """A flat Blender buffer (row 0 at the bottom) as (height, width, channels), row 0 at the top."""
    return np.asarray(pixels, np.float32).reshape(height, width, channels)[::-1]


def depth_control(depth: np.ndarray) -> np.ndarray:
    """A depth map in metres as the depth ControlNets' image.

    Args:
        depth: distance along the view axis, metres; >= ``EMPTY_DEPTH``, inf, NaN or <= 0
            where nothing was hit. [H, W]

    Returns:
        uint8 (H, W, 3) grey: inverse depth scaled to 0..255 over the visible pixels (nearest
        255), empty pixels 0. All visible at one depth: 255.
    """
    return inverse_depth_image(depth, far=EMPTY_DEPTH)


def normal_control(world_normals: np.ndarray, world_from_camera: np.ndarray,
                   covered: Optional[np.ndarray] = None) -> np.ndarray:
    """World-space normals (Blender's Normal pass) as the normal ControlNets' image.

    Args:
        world_normals: [H, W, 3], world frame (averaged over samples: renormalised here).
        world_from_camera: the camera's ``matrix_world`` (rotation part used). [4, 4] or [3, 3]
        covered: pixels where a surface was hit. [H, W] bool; default: non-zero normals.

    Returns:
        uint8 (H, W, 3): ``(s * n_cam + 1) / 2 * 255`` with ``s = NORMAL_AXIS_SIGNS``;
        ``EMPTY_NORMAL`` where nothing was hit.
    """
    normals = np.asarray(world_normals, np.float64)[..., :3]
    rotation = np.asarray(world_from_camera, np.float64)[:3, :3]
    # Columns of the rotation are the camera's axes in the world: n_cam = R^T n_world. Scale
    # is removed (a scaled camera object still has unit axes after normalising).
    rotation = rotation / np.linalg.norm(rotation, axis=0, keepdims=True)
    camera = normals @ rotation
    length = np.linalg.norm(camera, axis=-1, keepdims=True)
    if covered is None:
        covered = length[..., 0] > 1e-6
    camera = camera / np.maximum(length, 1e-12) * np.asarray(NORMAL_AXIS_SIGNS)
    rgb = np.round((camera + 1.0) * 0.5 * 255.0).clip(0, 255).astype(np.uint8)
    rgb[~covered] = EMPTY_NORMAL
    return np.ascontiguousarray(rgb)


def decode_normal_control(image: np.ndarray) -> np.ndarray:
    """The camera-space normals a normal control image stands for (its inverse). [H, W, 3]"""
    return (np.asarray(image, np.float64) / 255.0 * 2.0 - 1.0) * np.asarray(NORMAL_AXIS_SIGNS)


def index_mask(object_index: np.ndarray, index: int) -> np.ndarray:
    """The inpaint mask of the pixels an object covers, from Blender's Object Index pass.

    Returns:
        uint8 (H, W): 255 where the pass holds ``index``, else 0.
    """
    hit = np.abs(np.asarray(object_index, np.float64) - index) < 0.5
    return np.ascontiguousarray(np.where(hit, 255, 0).astype(np.uint8))


# OpenPose drawing --------------------------------------------------------------------------

def draw_openpose(joints: np.ndarray, visible: np.ndarray, width: int, height: int,
                  stick_width: float = 4.0, radius: float = 4.0) -> np.ndarray:
    """An OpenPose body image (what the openpose ControlNets take) from 2D joints.

    Args:
        joints: (column, row from the top) per OpenPose-18 joint, pixels. [18, 2]
        visible: which joints exist (a limb is drawn when both ends do). [18] bool
        width, height: image size.
        stick_width: half the limbs' thickness, pixels (OpenPose draws 4 at 512 px).
        radius: the joints' disc radius, pixels.

    Returns:
        uint8 (height, width, 3) RGB on black.
    """
    joints = np.asarray(joints, np.float64).reshape(len(JOINTS), 2)
    visible = np.asarray(visible, bool).reshape(len(JOINTS))
    canvas = np.zeros((height, width, 3), np.uint8)
    # Pixel centres: pixel (r, c) is at (c + 0.5, r + 0.5).
    cols = np.arange(width, dtype=np.float64) + 0.5
    rows = np.arange(height, dtype=np.float64) + 0.5
    for limb, (a, b) in enumerate(LIMBS):
        if not (visible[a] and visible[b]):
            continue
        p, q = joints[a], joints[b]
        box = _box(np.minimum(p, q) - stick_width, np.maximum(p, q) + stick_width, width, height)
        if box is None:
            continue
        r0, r1, c0, c1 = box
        x, y = np.meshgrid(cols[c0:c1], rows[r0:r1])
        d = q - p
        t = np.clip(((x - p[0]) * d[0] + (y - p[1]) * d[1]) / max(float(d @ d), 1e-12), 0, 1)
        inside = (x - p[0] - t * d[0]) ** 2 + (y - p[1] - t * d[1]) ** 2 <= stick_width ** 2
        colour = np.floor(np.asarray(COLOURS[limb], np.float64) * 0.6).astype(np.uint8)
        canvas[r0:r1, c0:c1][inside] = colour
    for joint in range(len(JOINTS)):
        if not visible[joint]:
            continue
        p = joints[joint]
        box = _box(p - radius, p + radius, width, height)
        if box is None:
            continue
        r0, r1, c0, c1 = box
        x, y = np.meshgrid(cols[c0:c1], rows[r0:r1])
        inside = (x - p[0]) ** 2 + (y - p[1]) ** 2 <= radius ** 2
        canvas[r0:r1, c0:c1][inside] = COLOURS[joint]
    return canvas


def _box(low: np.ndarray, high: np.ndarray, width: int, height: int):
    c0, r0 = max(0, int(math.floor(low[0]))), max(0, int(math.floor(low[1])))
    c1, r1 = min(width, int(math.ceil(high[0])) + 1), min(height, int(math.ceil(high[1])) + 1)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def pose_joints(bone_heads: Mapping[str, np.ndarray], joint_bones: Mapping[str, str],
                head_tail: Optional[tuple[np.ndarray, np.ndarray]] = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """World positions of the OpenPose-18 joints from a rig's bone heads.

    Args:
        bone_heads: bone name -> head position, world frame. [3] each
        joint_bones: ``match_rig``'s map (joint -> bone).
        head_tail: the head bone's (head, tail), world frame, to estimate missing face joints.

    Returns:
        (points [18, 3], found [18] bool).
    """
    points = np.zeros((len(JOINTS), 3))
    found = np.zeros(len(JOINTS), bool)
    for i, joint in enumerate(JOINTS):
        bone = joint_bones.get(joint)
        if bone is not None and bone in bone_heads:
            points[i], found[i] = bone_heads[bone], True
    if head_tail is not None and found[JOINTS.index("l_shoulder")] and found[
            JOINTS.index("r_shoulder")]:
        left = points[JOINTS.index("l_shoulder")] - points[JOINTS.index("r_shoulder")]
        for joint, point in face_from_head(np.asarray(head_tail[0], np.float64),
                                           np.asarray(head_tail[1], np.float64), left).items():
            i = JOINTS.index(joint)
            if not found[i]:
                points[i], found[i] = point, True
    return points, found


# Panel params --------------------------------------------------------------------------------

def controlnet_params(items: Iterable[Mapping]) -> list[dict]:
    """The ``controlnets`` param from the panel's list, checked before anything is rendered.

    Args:
        items: {"model": str, "scale": float, "kind": one of SOURCE_KINDS, "enabled": bool}.

    Returns:
        [{"model", "scale"}] for the enabled items, in order (one ``inputs.control`` each).

    Raises:
        ValueError: an empty model name, a scale outside [-10, 10] (the server's range) or an
            unknown source kind, naming the entry.
    """
    params = []
    for i, item in enumerate(items):
        if not item.get("enabled", True):
            continue
        model = str(item.get("model", "")).strip()
        where = f"ControlNet {i + 1}"
        if not model:
            raise ValueError(f"{where}: choose a ControlNet model")
        scale = float(item.get("scale", 1.0))
        if not (math.isfinite(scale) and -10.0 <= scale <= 10.0):
            raise ValueError(f"{where}: scale {scale} is outside [-10, 10]")
        kind = item.get("kind", "")
        if kind not in SOURCE_KINDS:
            raise ValueError(f"{where}: unknown source {kind!r} (one of {', '.join(SOURCE_KINDS)})")
        params.append({"model": model, "scale": scale})
    return params


def mask_to_control(mask: np.ndarray) -> np.ndarray:
    """An (H, W) uint8 mask as a control image (grey RGB), e.g. for a segmentation ControlNet."""
    mask = np.asarray(mask, np.uint8)
    return np.ascontiguousarray(np.repeat(mask[..., None], 3, axis=2))
