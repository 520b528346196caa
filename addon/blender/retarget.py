"""Retargeting onto the user's rig (bpy layer): gather the rig, compute in numpy, bake whole fcurves.

`target_rig` reads an armature's rest pose and the *effective* parent of each bone: walking up
from a bone, an ancestor that copies another bone's transforms (a full-influence Copy
Transforms, as Rigify's ORG/MCH bones do) moves with that bone, so the walk continues there;
the first bone reached that is keyed (or the top) is the parent `addon.core.motion.retarget`
uses. `bake` writes the result as a new action (quaternions for every mapped bone, location for
the root) and pushes it down onto a new NLA track as a strip (`compat.push_down`), so the user
can blend, layer and edit it; several retargets stack as tracks.

Rigify generated rigs are switched to FK (IK_FK = 1 on the limbs, FK limb follow 0, neck and
head following the chest) because the preset keys the FK controls.
"""

from __future__ import annotations

import logging

import numpy as np

from ..core.motion import bone_maps
from ..core.motion import retarget as rt
from ..core.motion.motion import Motion
from . import anim_write, compat
from .motion_import import bone_rest_matrices

log = logging.getLogger(__name__)

PROP_RETARGET = "nstudio_retarget_source"


def effective_parent(obj, name: str, keyed: set) -> str | None:
    """The bone ``name`` rotates with: the nearest keyed ancestor, through Copy Transforms chains.

    Copy Transforms influences towards the same bone add up along the way up: Rigify's spine
    splits the chest's rotation over two MCH bones at 0.5 each (local space), which together
    turn the upper body exactly as the chest does; at a full sum the walk continues from the
    copied bone.
    """
    pose = obj.pose.bones
    bone = pose[name].parent
    seen = set()
    copied: dict = {}
    while bone is not None and bone.name not in seen:
        seen.add(bone.name)
        if bone.name in keyed:
            return bone.name
        jump = None
        for c in bone.constraints:
            if c.type == "COPY_TRANSFORMS" and not c.mute and getattr(c, "target", None) == obj \
                    and c.subtarget in pose:
                copied[c.subtarget] = copied.get(c.subtarget, 0.0) + c.influence
                if copied[c.subtarget] > 0.999:
                    jump = c.subtarget
        bone = pose[jump] if jump is not None else bone.parent
    return None


def target_rig(obj, keyed_names) -> rt.TargetRig:
    """The `TargetRig` of armature ``obj`` for keying ``keyed_names``: those bones and their effective parents."""
    keyed = set(keyed_names)
    chosen: list[str] = []
    parent_of: dict = {}

    def visit(name):
        if name in parent_of:
            return
        parent = effective_parent(obj, name, keyed)
        if parent is not None:
            visit(parent)
        parent_of[name] = parent
        chosen.append(name)

    for name in keyed_names:
        visit(name)
    rest = bone_rest_matrices(obj, chosen)
    lengths = np.array([obj.data.bones[n].length for n in chosen])
    parents = np.array([chosen.index(parent_of[n]) if parent_of[n] is not None else -1 for n in chosen])
    return rt.TargetRig(names=chosen, parents=parents, rest=rest, lengths=lengths,
                        world_from_armature=np.array(obj.matrix_world, dtype=np.float64))


def auto_map(source: Motion, obj) -> list[tuple[str, str]]:
    """(source joint, target bone) pairs from presets, names and topology."""
    bones = obj.data.bones
    names = [b.name for b in bones]
    index = {n: i for i, n in enumerate(names)}
    parents = [index[b.parent.name] if b.parent else -1 for b in bones]
    heads = np.array([b.head_local for b in bones], dtype=np.float64).reshape(-1, 3)
    src = bone_maps.canonical_names(source.names, source.parents, source.rest)
    tgt = bone_maps.canonical_names(names, parents, heads)
    return bone_maps.bone_map(src, tgt)


def prepare_rig(obj) -> None:
    """Switch a Rigify generated rig to plain FK so the FK controls drive it."""
    pose = obj.pose.bones
    for pb in pose:
        if "IK_FK" in pb.keys():
            pb["IK_FK"] = 1.0
        if "FK_limb_follow" in pb.keys():
            pb["FK_limb_follow"] = 0.0
    if "torso" in pose:
        for key in ("neck_follow", "head_follow"):
            if key in pose["torso"].keys():
                pose["torso"][key] = 1.0


def bake(obj, result: rt.RetargetResult, frame_start: int = 1, name: str | None = None, nla: bool = True):
    """Write a retarget result as an action on ``obj`` and keep it as an NLA strip.

    Returns:
        The action.
    """
    pose = obj.pose.bones
    for bone in result.bones:
        pose[bone].rotation_mode = "QUATERNION"
    action_name = name or f"{obj.name} Retarget"
    channels = anim_write.bone_channels(result.bones, result.quaternions, result.root_bone, result.root_location)
    action = anim_write.write_channels(obj, action_name, "OBJECT", channels, frame_start)
    if nla:
        strip = compat.push_down(obj, action, action_name, frame_start)
        strip.blend_type = "REPLACE"
    return action


def retarget_onto(source: Motion, obj, pairs=None, settings: rt.RetargetSettings | None = None,
                  frame_start: int = 1, nla: bool = True):
    """Retarget ``source`` onto armature ``obj`` and bake it. Returns (action, result)."""
    pairs = pairs or auto_map(source, obj)
    if not pairs:
        raise ValueError(f"no bones of '{obj.name}' could be mapped to the motion's skeleton")
    if bone_maps.detect_preset([b.name for b in obj.data.bones]) == "rigify":
        prepare_rig(obj)
    rig = target_rig(obj, [dst for _, dst in pairs])
    result = rt.retarget(source, rig, pairs, settings)
    action = bake(obj, result, frame_start, nla=nla)
    return action, result
