"""Test rigs in numpy: an A-pose humanoid with other names, bone lengths and rolls (bpy-free).

`other_rig()` gives (names, parents, heads, tails, rolls): the template body with legs 12%
longer, arms 10% shorter, arms lowered 40 degrees (A-pose), a spine of three bones, random
rolls, and names no preset knows ("Bip_L_Thigh"...), so the mapping comes from names/topology.
The Blender tests build the same rig as a real armature.
"""

from __future__ import annotations

import numpy as np

from addon.core.motion import armature_math, bone_maps, rotations as rot, synthetic
from addon.core.motion.retarget import TargetRig

# Our rig's bones: (name, canonical joint its head sits on, canonical joint its tail sits on, parent).
BONES = (
    ("Bip_Pelvis", "pelvis", "spine1", None),
    ("Bip_Spine_A", "spine1", "spine2", "Bip_Pelvis"),
    ("Bip_Spine_B", "spine2", "spine3", "Bip_Spine_A"),
    ("Bip_Chest", "spine3", "neck", "Bip_Spine_B"),
    ("Bip_Neck", "neck", "head", "Bip_Chest"),
    ("Bip_Head", "head", None, "Bip_Neck"),
)
for _s, _S in (("left", "L"), ("right", "R")):
    BONES += (
        (f"Bip_{_S}_Thigh", f"{_s}_hip", f"{_s}_knee", "Bip_Pelvis"),
        (f"Bip_{_S}_Calf", f"{_s}_knee", f"{_s}_ankle", f"Bip_{_S}_Thigh"),
        (f"Bip_{_S}_Foot", f"{_s}_ankle", f"{_s}_foot", f"Bip_{_S}_Calf"),
        (f"Bip_{_S}_Toe", f"{_s}_foot", None, f"Bip_{_S}_Foot"),
        (f"Bip_{_S}_Clavicle", f"{_s}_collar", f"{_s}_shoulder", "Bip_Chest"),
        (f"Bip_{_S}_UpperArm", f"{_s}_shoulder", f"{_s}_elbow", f"Bip_{_S}_Clavicle"),
        (f"Bip_{_S}_Forearm", f"{_s}_elbow", f"{_s}_wrist", f"Bip_{_S}_UpperArm"),
        (f"Bip_{_S}_Hand", f"{_s}_wrist", f"{_s}_hand", f"Bip_{_S}_Forearm"),
    )
# The canonical joint each bone stands for.
CANONICAL_OF = {name: head for name, head, _, _ in BONES}


def _a_pose_joints() -> dict:
    rest = synthetic.template_rest().astype(np.float64)
    p = {n: rest[i].copy() for i, n in enumerate(bone_maps.CANONICAL)}
    for s, sign in (("left", 1.0), ("right", -1.0)):
        # Legs 12% longer (hips stay, everything below stretches down).
        for k in (f"{s}_knee", f"{s}_ankle", f"{s}_foot"):
            p[k] = p[f"{s}_hip"] + (p[k] - p[f"{s}_hip"]) * 1.12
        # Arms 10% shorter and lowered 40 degrees about the shoulder (A-pose).
        down = rot.axis_angle_to_matrix(np.array([0.0, sign * np.radians(40.0), 0.0]))
        sh = p[f"{s}_shoulder"]
        for k in (f"{s}_elbow", f"{s}_wrist", f"{s}_hand"):
            p[k] = sh + down @ ((p[k] - sh) * 0.9)
    # Put the feet back on the ground.
    lift = 0.02 - min(p["left_foot"][2], p["right_foot"][2])
    return {k: v + np.array([0, 0, lift]) for k, v in p.items()}


def other_rig(seed: int = 3):
    """(names, parents, heads, tails, rolls) of the A-pose test rig (armature space = world)."""
    joints = _a_pose_joints()
    rng = np.random.default_rng(seed)
    names = [b[0] for b in BONES]
    parents = [names.index(b[3]) if b[3] else -1 for b in BONES]
    heads, tails = [], []
    for name, h, tl, parent in BONES:
        head = joints[h]
        if tl is None:
            # Leaves continue their parent's direction (toes forward, head up).
            ph = joints[CANONICAL_OF[parent]]
            d = head - ph
            tail = head + d / np.linalg.norm(d) * 0.1 if "Toe" in name else head + np.array([0, 0, 0.18])
        else:
            tail = joints[tl]
        heads.append(head)
        tails.append(tail)
    rolls = rng.uniform(-np.pi, np.pi, len(names))
    return names, parents, np.array(heads), np.array(tails), rolls


def target_rig(seed: int = 3) -> TargetRig:
    names, parents, heads, tails, rolls = other_rig(seed)
    rest = armature_math.bone_matrix(heads, tails, rolls)
    return TargetRig(names=names, parents=np.array(parents), rest=rest,
                     lengths=np.linalg.norm(tails - heads, axis=1))
