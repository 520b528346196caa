"""Bone maps: canonical joint names, presets for common rigs, and automatic mapping.

The canonical skeleton is SMPL's 24 joints (`CANONICAL`). A bone map relates a source skeleton
to a target rig through it: ``{canonical joint: bone name}`` on each side. A target bone mapped
to canonical joint j follows the source *bone* that starts at j (towards j's main child).

Automatic mapping, in order: an exact preset (most of its names present), then names (prefix
and side conventions of Rigify, Mixamo, UE5, MakeHuman/Anny, SMPL, CMU BVH), then topology
(legs are the chains reaching lowest, arms the chains reaching furthest sideways, the spine the
chain to the highest point; +X is the character's left, it faces -Y).
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

CANONICAL = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)
CANONICAL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
#: The canonical joint whose bone a canonical joint's bone points to (its main child).
MAIN_CHILD = {
    "pelvis": "spine1", "spine1": "spine2", "spine2": "spine3", "spine3": "neck", "neck": "head",
    "left_hip": "left_knee", "left_knee": "left_ankle", "left_ankle": "left_foot",
    "left_collar": "left_shoulder", "left_shoulder": "left_elbow", "left_elbow": "left_wrist",
    "left_wrist": "left_hand",
}
MAIN_CHILD.update({k.replace("left", "right"): v.replace("left", "right") for k, v in MAIN_CHILD.items()
                   if k.startswith("left")})

# Left side and centre of each preset; the right side is made by the preset's mirror rule.
_PRESETS_LEFT = {
    "rigify": ({"pelvis": "torso", "spine3": "chest", "neck": "neck", "head": "head",
                "left_collar": "shoulder.L", "left_shoulder": "upper_arm_fk.L", "left_elbow": "forearm_fk.L",
                "left_wrist": "hand_fk.L", "left_hip": "thigh_fk.L", "left_knee": "shin_fk.L",
                "left_ankle": "foot_fk.L", "left_foot": "toe_fk.L"}, (".L", ".R")),
    "rigify_metarig": ({"pelvis": "spine", "spine1": "spine.001", "spine2": "spine.002", "spine3": "spine.003",
                        "neck": "spine.004", "head": "spine.006", "left_collar": "shoulder.L",
                        "left_shoulder": "upper_arm.L", "left_elbow": "forearm.L", "left_wrist": "hand.L",
                        "left_hip": "thigh.L", "left_knee": "shin.L", "left_ankle": "foot.L", "left_foot": "toe.L"},
                       (".L", ".R")),
    "mixamo": ({"pelvis": "mixamorig:Hips", "spine1": "mixamorig:Spine", "spine2": "mixamorig:Spine1",
                "spine3": "mixamorig:Spine2", "neck": "mixamorig:Neck", "head": "mixamorig:Head",
                "left_collar": "mixamorig:LeftShoulder", "left_shoulder": "mixamorig:LeftArm",
                "left_elbow": "mixamorig:LeftForeArm", "left_wrist": "mixamorig:LeftHand",
                "left_hip": "mixamorig:LeftUpLeg", "left_knee": "mixamorig:LeftLeg", "left_ankle": "mixamorig:LeftFoot",
                "left_foot": "mixamorig:LeftToeBase"}, ("Left", "Right")),
    "ue5_mannequin": ({"pelvis": "pelvis", "spine1": "spine_01", "spine2": "spine_03", "spine3": "spine_05",
                       "neck": "neck_01", "head": "head", "left_collar": "clavicle_l", "left_shoulder": "upperarm_l",
                       "left_elbow": "lowerarm_l", "left_wrist": "hand_l", "left_hip": "thigh_l", "left_knee": "calf_l",
                       "left_ankle": "foot_l", "left_foot": "ball_l"}, ("_l", "_r")),
    "anny_makehuman": ({"pelvis": "root", "spine1": "spine04", "spine2": "spine03", "spine3": "spine01",
                        "neck": "neck01", "head": "head", "left_collar": "clavicle.L", "left_shoulder": "upperarm01.L",
                        "left_elbow": "lowerarm01.L", "left_wrist": "wrist.L", "left_hip": "upperleg01.L",
                        "left_knee": "lowerleg01.L", "left_ankle": "foot.L"}, (".L", ".R")),
    "smpl": ({name: name for name in CANONICAL if not name.startswith("right")}, ("left_", "right_")),
    "cmu_bvh": ({"pelvis": "Hips", "spine1": "LowerBack", "spine2": "Spine", "spine3": "Spine1", "neck": "Neck",
                 "head": "Head", "left_collar": "LeftShoulder", "left_shoulder": "LeftArm", "left_elbow": "LeftForeArm",
                 "left_wrist": "LeftHand", "left_hip": "LeftUpLeg", "left_knee": "LeftLeg", "left_ankle": "LeftFoot",
                 "left_foot": "LeftToeBase"}, ("Left", "Right")),
}


def _mirror(left: dict, rule: tuple) -> dict:
    out = dict(left)
    a, b = rule
    for canon, bone in left.items():
        if canon.startswith("left_"):
            # Replace the last occurrence: "mixamorig:LeftArm" -> "mixamorig:RightArm".
            i = bone.rfind(a)
            out[canon.replace("left_", "right_")] = bone[:i] + b + bone[i + len(a):] if i >= 0 else bone
    return out


#: preset name -> {canonical joint: bone name}, both sides.
PRESETS = {name: _mirror(left, rule) for name, (left, rule) in _PRESETS_LEFT.items()}
PRESET_LABELS = {
    "rigify": "Rigify (generated rig, FK controls)", "rigify_metarig": "Rigify metarig",
    "mixamo": "Mixamo", "ue5_mannequin": "Unreal Engine 5 mannequin", "anny_makehuman": "Anny / MakeHuman",
    "smpl": "SMPL", "cmu_bvh": "CMU BVH",
}


def detect_preset(names, minimum: float = 0.75) -> Optional[str]:
    """The preset whose bone names are (mostly) present in ``names``, or None.

    Args:
        names: the rig's bone names.
        minimum: fraction of a preset's names that must exist.
    """
    have = set(names)
    best, best_score = None, 0.0
    for preset, mapping in PRESETS.items():
        score = sum(b in have for b in mapping.values()) / len(mapping)
        if score > best_score:
            best, best_score = preset, score
    return best if best_score >= minimum else None


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

# Base-name patterns (after prefix/side stripping, lower case, separators removed), per joint.
_SYNONYMS = {
    "pelvis": ("pelvis", "hips", "hip", "root", "mpelvis"),
    "spine1": ("spine1", "spine01", "lowerback", "spine", "abdomen"),
    "spine2": ("spine2", "spine02", "spine03", "chest"),
    "spine3": ("spine3", "spine04", "spine05", "upperchest", "chest1", "spine1"),
    "neck": ("neck", "neck01", "neck1"),
    "head": ("head",),
    "collar": ("collar", "clavicle", "shoulder"),
    "shoulder": ("shoulder", "upperarm", "upperarm01", "arm", "uparm"),
    "elbow": ("elbow", "forearm", "lowerarm", "lowerarm01"),
    "wrist": ("wrist", "hand"),
    "hand": ("hand", "handend", "fingers"),
    "hip": ("hip", "upleg", "upperleg", "upperleg01", "thigh", "femur"),
    "knee": ("knee", "leg", "lowerleg", "lowerleg01", "shin", "calf"),
    "ankle": ("ankle", "foot"),
    "foot": ("foot", "toe", "toebase", "toes", "ball"),
}
_SIDED = ("collar", "shoulder", "elbow", "wrist", "hand", "hip", "knee", "ankle", "foot")
_SIDE_PATTERNS = (
    (re.compile(r"(^|[._\-\s])(l|left|lft)($|[._\-\s])", re.I), "left"),
    (re.compile(r"(^|[._\-\s])(r|right|rgt)($|[._\-\s])", re.I), "right"),
    (re.compile(r"^left", re.I), "left"), (re.compile(r"^right", re.I), "right"),
    (re.compile(r"left", re.I), "left"), (re.compile(r"right", re.I), "right"),
    (re.compile(r"^l(?=[A-Z])"), "left"), (re.compile(r"^r(?=[A-Z])"), "right"),
)


def split_name(name: str) -> tuple[str, Optional[str]]:
    """(base name, side) of a bone name: ``"mixamorig:LeftUpLeg"`` -> ("upleg", "left").

    Strips namespaces (``x:``), Rigify's DEF-/ORG-/MCH- prefixes, side markers (.L, _l, L_,
    Left...), separators and case.
    """
    base = name.split(":")[-1]
    base = re.sub(r"^(DEF|ORG|MCH)-", "", base)
    side = None
    for pattern, which in _SIDE_PATTERNS:
        if pattern.search(base):
            side = which
            base = pattern.sub("", base, count=1)
            break
    base = re.sub(r"[._\-\s]", "", base).lower()
    return base, side


def _by_names(names) -> dict:
    """{canonical: name} from names alone (first match wins, in the synonym order)."""
    split = [split_name(n) for n in names]
    out: dict = {}
    for key, patterns in _SYNONYMS.items():
        sides = ("left", "right") if key in _SIDED else (None,)
        for side in sides:
            canon = f"{side}_{key}" if side else key
            if canon in out:
                continue
            # Exact base names first, then names that end with one ("bipthigh" -> "thigh").
            for match in (str.__eq__, str.endswith):
                for pattern in patterns:
                    hit = next((n for n, (b, s) in zip(names, split) if match(b, pattern) and s == side
                                and n not in out.values()), None)
                    if hit is not None:
                        out[canon] = hit
                        break
                if canon in out:
                    break
    return out


# ---------------------------------------------------------------------------------------------
# Topology
# ---------------------------------------------------------------------------------------------

def _chain(parents, leaf: int, stop: int) -> list[int]:
    """Joints from ``stop`` (exclusive) down to ``leaf`` (inclusive), top first."""
    out = []
    j = leaf
    while j != stop and j >= 0:
        out.append(j)
        j = int(parents[j])
    return out[::-1]


def _ancestors(parents, j: int) -> list[int]:
    out = []
    while j >= 0:
        out.append(j)
        j = int(parents[j])
    return out


def _common(parents, a: int, b: int) -> int:
    up = set(_ancestors(parents, a))
    return next(j for j in _ancestors(parents, b) if j in up)


def _by_topology(names, parents, heads) -> dict:
    """{canonical: name} from the hierarchy and rest head positions (+X left, -Y front, +Z up)."""
    parents = np.asarray(parents)
    heads = np.asarray(heads, dtype=np.float64)
    n = len(names)
    children = [[] for _ in range(n)]
    for j, p in enumerate(parents):
        if p >= 0:
            children[p].append(j)
    leaves = [j for j in range(n) if not children[j]]
    if len(leaves) < 5:
        return {}
    height = heads[:, 2].max() - heads[:, 2].min()
    side = height * 0.02
    out: dict = {}
    # Legs: the lowest leaf on each side; pelvis: their common ancestor.
    left_foot = min((j for j in leaves if heads[j, 0] > side), key=lambda j: heads[j, 2], default=None)
    right_foot = min((j for j in leaves if heads[j, 0] < -side), key=lambda j: heads[j, 2], default=None)
    if left_foot is None or right_foot is None:
        return {}
    pelvis = _common(parents, left_foot, right_foot)
    out["pelvis"] = pelvis
    for s, leaf in (("left", left_foot), ("right", right_foot)):
        chain = _chain(parents, leaf, pelvis)
        lengths = [np.linalg.norm(heads[chain[i + 1]] - heads[chain[i]]) for i in range(len(chain) - 1)]
        if len(lengths) < 2:
            continue
        # Thigh and shin: the two longest segments (a short offset bone under the pelvis, as
        # MakeHuman's pelvis.L or CMU's LHipJoint, is skipped that way).
        thigh, shin = sorted(sorted(range(len(lengths)), key=lambda i: -lengths[i])[:2])
        out[f"{s}_hip"] = chain[thigh]
        out[f"{s}_knee"] = chain[shin]
        out[f"{s}_ankle"] = chain[shin + 1]
        if shin + 2 < len(chain):
            out[f"{s}_foot"] = chain[shin + 2]
    # Arms: the leaf furthest out on each side above the pelvis.
    above = [j for j in leaves if heads[j, 2] > heads[pelvis, 2]]
    left_hand = max((j for j in above if heads[j, 0] > side), key=lambda j: heads[j, 0], default=None)
    right_hand = min((j for j in above if heads[j, 0] < -side), key=lambda j: heads[j, 0], default=None)
    chest = None
    if left_hand is not None and right_hand is not None:
        chest = _common(parents, left_hand, right_hand)
        out["spine3"] = chest
        for s, leaf in (("left", left_hand), ("right", right_hand)):
            chain = _chain(parents, leaf, chest)
            lengths = [np.linalg.norm(heads[chain[i + 1]] - heads[chain[i]]) for i in range(len(chain) - 1)]
            if len(lengths) < 2:
                continue
            # Upper arm and forearm: the two longest segments, ignoring fingers (past the wrist).
            order = sorted(range(len(lengths)), key=lambda i: -lengths[i])[:2]
            upper, fore = sorted(order)
            out[f"{s}_shoulder"] = chain[upper]
            out[f"{s}_elbow"] = chain[fore]
            if fore + 1 < len(chain):
                out[f"{s}_wrist"] = chain[fore + 1]
            if fore + 2 < len(chain):
                out[f"{s}_hand"] = chain[fore + 2]
            if upper > 0:
                out[f"{s}_collar"] = chain[upper - 1]
    # Spine: from the pelvis to the highest leaf.
    top = max(leaves, key=lambda j: heads[j, 2])
    spine = _chain(parents, top, pelvis)
    if chest is not None and chest in spine:
        lower = spine[:spine.index(chest)]
        if len(lower) >= 1:
            out["spine1"] = lower[0]
        if len(lower) >= 2:
            out["spine2"] = lower[len(lower) // 2] if len(lower) > 2 else lower[1]
        upper = spine[spine.index(chest) + 1:]
        if upper:
            out["neck"] = upper[0]
            if len(upper) > 1:
                # The head: the last joint whose segment to the top is the longest remaining.
                out["head"] = upper[-2] if len(upper) > 2 else upper[-1]
    return {k: names[v] for k, v in out.items()}


def canonical_names(names, parents, heads) -> dict:
    """{canonical joint: name} for a skeleton or rig: preset, then names, then topology.

    Args:
        names: joint or bone names. [J]
        parents: parent indices, -1 for roots. [J]
        heads: rest positions of the joints (bone heads), +X left, -Y front, +Z up. [J, 3]
    """
    names = list(names)
    preset = detect_preset(names)
    if preset is not None:
        return {k: v for k, v in PRESETS[preset].items() if v in names}
    out = _by_names(names)
    topo = _by_topology(names, parents, heads)
    core = {"pelvis", "left_hip", "right_hip", "left_knee", "right_knee", "left_shoulder", "right_shoulder",
            "left_elbow", "right_elbow"}
    if not core <= set(out):
        # Topology decides the structure; names fill in what topology could not place.
        merged = dict(topo)
        for k, v in out.items():
            if k not in merged and v not in merged.values():
                merged[k] = v
        return merged
    # Names place the limbs (sides from names survive a rig that faces +Y); the spine's
    # segments are numbered differently by every convention, so topology places those.
    spine = ("pelvis", "spine1", "spine2", "spine3", "neck", "head")
    if all(k in topo for k in ("pelvis", "spine3")):
        out = {k: v for k, v in out.items() if k not in spine}
        taken = set(out.values())
        out.update({k: v for k, v in topo.items() if k in spine and v not in taken})
    return out


def bone_map(source: dict, target: dict) -> list[tuple[str, str]]:
    """(source joint, target bone) pairs through the canonical names both sides have.

    Args:
        source: {canonical: source joint name}.
        target: {canonical: target bone name}.
    """
    return [(source[k], target[k]) for k in CANONICAL if k in source and k in target]


# ---------------------------------------------------------------------------------------------
# User presets: {canonical joint: target bone} as JSON, independent of the source skeleton
# ---------------------------------------------------------------------------------------------

def save_preset(path: str, target: dict, label: str = "") -> None:
    """Write a bone-map preset: ``{"label": ..., "target": {canonical: bone}}`` (JSON)."""
    import json
    import os

    unknown = sorted(set(target) - set(CANONICAL))
    if unknown:
        raise ValueError(f"bone map preset: {unknown} are not canonical joints ({', '.join(CANONICAL)})")
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"label": label, "target": {k: target[k] for k in CANONICAL if k in target}}, f, indent=1)
    os.replace(tmp, path)


def load_preset(path: str) -> dict:
    """Read a preset written by `save_preset`. Returns {canonical: bone}.

    Raises:
        ValueError: not a preset file (naming what is wrong).
    """
    import json

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    target = data.get("target") if isinstance(data, dict) else None
    if not isinstance(target, dict) or not all(isinstance(v, str) for v in target.values()):
        raise ValueError(f"{path}: not a bone-map preset (expected {{'target': {{canonical: bone}}}})")
    unknown = sorted(set(target) - set(CANONICAL))
    if unknown:
        raise ValueError(f"{path}: {unknown} are not canonical joints")
    return dict(target)
