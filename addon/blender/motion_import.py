"""The recovered body in the scene (bpy layer): armature, action, contacts, camera, skinned mesh.

Gather, convert, create: the Motion map is validated by `addon.core.motion.motion`; the armature
is built from its rest joints (each bone from a joint to its main child; rolls chosen so every
bone's Z axis faces the body's front, -Y, or up for bones that point forwards: knees and elbows
then bend about the bone's X axis, as animators expect); bases are computed in numpy
(`motion.pose_bases`) and written as whole fcurves (`anim_write`). Contacts become animated
custom properties (``nstudio_contact_<point>``, constant interpolation) and timeline markers
where a foot lands; the source camera becomes an animated camera whose background is the video.
"""

from __future__ import annotations

import logging
import os

import bpy
import numpy as np

from ..core.motion import motion as motion_mod
from ..core.motion.retarget import main_children
from ..wire.contracts import CONTACT_POINTS
from . import anim_write

log = logging.getLogger(__name__)

PROP_SOURCE = "nstudio_motion"       # on the armature: marks a recovered body (its fps)
PROP_JOB = "nstudio_job"
PROP_CONTACT = "nstudio_contact_"    # + CONTACT_POINTS[i]


def build_armature(motion: motion_mod.Motion, name: str, collection=None):
    """An armature object with one bone per joint, in rest pose, linked to ``collection``."""
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    (collection or bpy.context.scene.collection).objects.link(obj)
    mains = main_children(motion)
    rest = motion.rest.astype(np.float64)
    view_layer = bpy.context.view_layer
    previous = view_layer.objects.active
    view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        bones = []
        for j, jname in enumerate(motion.names):
            bone = data.edit_bones.new(jname)
            head = rest[j]
            if j in mains and np.linalg.norm(rest[mains[j]] - head) > 1e-4:
                tail = rest[mains[j]]
            else:
                p = motion.parents[j]
                d = head - rest[p] if p >= 0 else np.array([0.0, 0.0, 1.0])
                d = d / max(np.linalg.norm(d), 1e-9)
                tail = head + d * 0.08
            bone.head, bone.tail = head.tolist(), tail.tolist()
            direction = (tail - head) / np.linalg.norm(tail - head)
            # Z to the front, or up for bones pointing forwards/backwards (feet).
            bone.align_roll((0.0, 0.0, 1.0) if abs(direction[1]) > 0.7 else (0.0, -1.0, 0.0))
            if motion.parents[j] >= 0:
                bone.parent = bones[motion.parents[j]]
            bones.append(bone)
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = previous
    return obj


def bone_rest_matrices(obj, names) -> np.ndarray:
    """``Bone.matrix_local`` of ``names``, armature space. [J, 4, 4] float64"""
    bones = obj.data.bones
    flat = np.empty(len(bones) * 16, np.float32)
    bones.foreach_get("matrix_local", flat)
    # foreach_get gives matrices column-major (Blender's memory order).
    mats = flat.reshape(-1, 4, 4).transpose(0, 2, 1).astype(np.float64)
    order = {b.name: i for i, b in enumerate(bones)}
    return mats[[order[n] for n in names]]


def write_motion_action(obj, motion: motion_mod.Motion, frame_start: int = 1, name: str | None = None):
    """Animate the armature built by `build_armature` with ``motion`` (whole fcurves).

    Returns:
        (action, quaternions written [T, J, 4] float32, root location written [T, 3] float32).
    """
    rest = bone_rest_matrices(obj, motion.names)
    quats, loc = motion_mod.pose_bases(motion, rest)
    for pb in obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
    root = motion.names[int(np.flatnonzero(motion.parents < 0)[0])]
    channels = list(anim_write.bone_channels(motion.names, quats, root, loc))
    channels += [(f'["{PROP_CONTACT}{point}"]', 0, "Contacts", motion.contacts[:, i])
                 for i, point in enumerate(CONTACT_POINTS)]
    for point in CONTACT_POINTS:
        obj[PROP_CONTACT + point] = 0.0
    action = anim_write.write_channels(obj, name or f"{obj.name} Motion", "OBJECT", channels, frame_start)
    # Contacts step from one frame to the next; rotations interpolate linearly.
    for fc in action_fcurves(obj):
        if fc.data_path.startswith(f'["{PROP_CONTACT}'):
            fc.keyframe_points.foreach_set("interpolation", np.zeros(len(fc.keyframe_points), np.uint8))
    return action, quats, loc


def action_fcurves(obj):
    from . import compat

    return compat.fcurves_for(obj)


def add_contact_markers(scene, motion: motion_mod.Motion, frame_start: int, prefix: str = "") -> int:
    """A timeline marker where each foot lands ("L down"/"R down"). Returns how many."""
    count = 0
    for side, cols in (("L", (0, 1)), ("R", (2, 3))):
        on = motion.contacts[:, list(cols)].max(axis=1) > 0.5
        starts = np.flatnonzero(on & ~np.concatenate([[False], on[:-1]]))
        for f in starts:
            scene.timeline_markers.new(f"{prefix}{side} down", frame=int(frame_start + f))
            count += 1
    return count


def build_camera(camera: dict, name: str, frame_start: int, video_path: str | None = None, collection=None):
    """An animated camera from a cameras map (T frames), the video as its background."""
    from ..core.motion import rotations as rot

    w2c = np.asarray(camera["world_from_camera"], np.float64).reshape(-1, 4, 4)
    width, height = int(camera["width"]), int(camera["height"])
    fx = np.broadcast_to(np.asarray(camera["fx"], np.float64), (len(w2c),))
    data = bpy.data.cameras.new(name)
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = 36.0
    obj = bpy.data.objects.new(name, data)
    (collection or bpy.context.scene.collection).objects.link(obj)
    obj.rotation_mode = "QUATERNION"
    quats = rot.quat_continuous(rot.matrix_to_quat(w2c[:, :3, :3]), axis=0)
    channels = [("location", i, "Object Transforms", w2c[:, i, 3]) for i in range(3)]
    channels += [("rotation_quaternion", i, "Object Transforms", quats[:, i]) for i in range(4)]
    anim_write.write_channels(obj, f"{name} Path", "OBJECT", channels, frame_start)
    lens = fx * data.sensor_width / width
    data.lens = float(lens[0])
    if np.ptp(lens) > 1e-6:
        anim_write.write_channels(data, f"{name} Lens", "CAMERA", [("lens", 0, "Lens", lens)], frame_start)
    if video_path and os.path.isfile(video_path):
        clip = bpy.data.movieclips.load(video_path, check_existing=True)
        clip.frame_start = frame_start
        bg = data.background_images.new()
        bg.source = "MOVIE_CLIP"
        bg.clip = clip
        bg.alpha = 1.0
        data.show_background_images = True
    obj["nstudio_resolution"] = [width, height]
    return obj


def build_skinned_mesh(mesh_map: dict, armature, names, name: str, collection=None):
    """The body mesh at rest, with one vertex group per joint and an Armature modifier."""
    verts = np.asarray(mesh_map["vertices"], np.float32)
    faces = np.asarray(mesh_map["faces"], np.int32)
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(verts))
    me.vertices.foreach_set("co", verts.ravel())
    me.loops.add(faces.size)
    me.loops.foreach_set("vertex_index", faces.ravel())
    me.polygons.add(len(faces))
    me.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    me.update()
    obj = bpy.data.objects.new(name, me)
    (collection or bpy.context.scene.collection).objects.link(obj)
    index = np.asarray(mesh_map["skin_index"], np.int64)
    weight = np.asarray(mesh_map["skin_weight"], np.float32)
    groups = [obj.vertex_groups.new(name=n) for n in names]
    # One add() per (joint, distinct weight): weights are few distinct values per joint in
    # practice; vertex groups have no bulk setter.
    for j, group in enumerate(groups):
        rows, cols = np.nonzero((index == j) & (weight > 0))
        if not len(rows):
            continue
        w = weight[rows, cols]
        for value in np.unique(w):
            group.add(rows[w == value].tolist(), float(value), "REPLACE")
    obj.parent = armature
    mod = obj.modifiers.new("Armature", "ARMATURE")
    mod.object = armature
    return obj


def import_motion(context, motion_map, name: str = "Body", frame_start: int | None = None,
                  video_path: str | None = None, markers: bool = True):
    """Validate a Motion map and bring it into the scene.

    Returns:
        The armature object (its mesh and camera, when the map had them, are children/siblings
        named after it).

    Raises:
        motion.MotionError: the map does not follow the contract (naming the field).
    """
    motion = motion_map if isinstance(motion_map, motion_mod.Motion) else motion_mod.decode_motion(motion_map)
    scene = context.scene
    start = scene.frame_start if frame_start is None else int(frame_start)
    obj = build_armature(motion, name, scene.collection)
    write_motion_action(obj, motion, start)
    obj[PROP_SOURCE] = float(motion.fps)
    # 29.97 fps is fps 30 with fps_base 1.001.
    scene.render.fps = max(1, int(round(motion.fps)))
    scene.render.fps_base = scene.render.fps / motion.fps
    scene.frame_start = start
    scene.frame_end = start + motion.frames - 1
    if markers:
        add_contact_markers(scene, motion, start)
    if motion.mesh is not None:
        build_skinned_mesh(motion.mesh, obj, motion.names, f"{name} Mesh", scene.collection)
    if motion.camera is not None:
        cam = build_camera(motion.camera, f"{name} Camera", start, video_path, scene.collection)
        scene.camera = cam
        scene.render.resolution_x, scene.render.resolution_y = (int(v) for v in cam["nstudio_resolution"])
    return obj


def motion_from_armature(obj, frames: int | None = None, fps: float | None = None) -> motion_mod.Motion:
    """The Motion of any armature's current action (our imports, BVH/FBX imports, user rigs)."""
    bones = list(obj.data.bones)
    roots = [b for b in bones if b.parent is None]
    if len(roots) > 1:
        # A Motion has one root: keep the biggest tree (FBX/glTF imports may add stray roots).
        keep = max(roots, key=lambda b: len(b.children_recursive))
        log.info("'%s': %d root bones; reading the tree under '%s'", obj.name, len(roots), keep.name)
        bones = [b for b in bones if b == keep or keep in b.parent_recursive]
    # Parents before children, as a Motion's skeleton must be.
    ordered, seen = [], set()
    for bone in bones:
        chain = []
        while bone is not None and bone.name not in seen:
            chain.append(bone)
            bone = bone.parent
        for b in reversed(chain):
            seen.add(b.name)
            ordered.append(b)
    bones = ordered
    names = [b.name for b in bones]
    index = {n: i for i, n in enumerate(names)}
    parents = [index[b.parent.name] if b.parent else -1 for b in bones]
    rest = bone_rest_matrices(obj, names)
    if frames is None:
        action = obj.animation_data.action if obj.animation_data else None
        if action is None:
            raise ValueError(f"armature '{obj.name}' has no action to read motion from")
        lo, hi = action.frame_range
        frames = int(round(hi - lo)) + 1
    quats, locs = anim_write.read_bone_quaternions(obj, names, frames)
    roots = [i for i, p in enumerate(parents) if p < 0]
    # Contacts ride along when the armature is one of ours.
    contacts = None
    fcurves = {fc.data_path: fc for fc in action_fcurves(obj)}
    if all(f'["{PROP_CONTACT}{p}"]' in fcurves for p in CONTACT_POINTS):
        columns = []
        for point in CONTACT_POINTS:
            keys, values = anim_write.read_channel(fcurves[f'["{PROP_CONTACT}{point}"]'])
            columns.append(np.interp(np.arange(frames), keys - keys[0], values))
        contacts = np.stack(columns, axis=1)
    fps = fps or float(obj.get(PROP_SOURCE, 0.0)) or bpy.context.scene.render.fps
    # The object's transform (rotation, translation, uniform scale: BVH/FBX imports use them)
    # moves the rest frames into the world; pose locations scale with it.
    world = np.array(obj.matrix_world, dtype=np.float64)
    scale = float(np.cbrt(abs(np.linalg.det(world[:3, :3]))))
    rest_w = rest.copy()
    rest_w[:, :3, :3] = (world[:3, :3] / scale) @ rest[:, :3, :3]
    rest_w[:, :3, 3] = rest[:, :3, 3] @ world[:3, :3].T + world[:3, 3]
    motion = motion_mod.motion_from_pose(names, parents, rest_w, quats, locs[:, roots[0]] * scale, fps,
                                         contacts=None if contacts is None else contacts.astype(np.float32))
    return motion
