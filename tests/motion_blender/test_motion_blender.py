"""Motion in Blender: import writes exactly what was sent, retargeting onto Rigify and onto an
A-pose rig with other names, lengths and rolls, BVH round trip (real bpy 5.0.1)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon.blender import anim_write, compat, motion_import, retarget  # noqa: E402
from addon.core.motion import footpin, motion as motion_mod, retarget as rt, rotations as rot, synthetic  # noqa: E402
from tests.motion import rigs  # noqa: E402


def _evaluated(obj, bones, frames, start=1):
    """Evaluated armature-space matrices of ``bones`` per frame (constraints, drivers, NLA). {name: [T, 4, 4]}"""
    out = {b: np.empty((frames, 4, 4)) for b in bones}
    scene = bpy.context.scene
    for f in range(frames):
        scene.frame_set(start + f)
        for b in bones:
            out[b][f] = np.array(obj.pose.bones[b].matrix)
    return out


def _check_retarget(motion, obj, result, evaluated):
    """Every mapped bone follows its source bone's world direction; feet stay put on contacts."""
    mains, directions = rt.source_directions(motion)
    root_joint = motion.names[int(np.flatnonzero(motion.parents < 0)[0])]
    g, _ = motion_mod.forward_kinematics(motion.parents, motion.rest, motion.rotations, motion.root_translation)
    near = {side: np.convolve(result.pinned[side], np.ones(7), mode="same") > 0 for side in ("left", "right")}
    legs = {}
    for side in ("left", "right"):
        for k in ("hip", "knee"):
            legs[next(d for s, d in result.pairs if s == f"{side}_{k}")] = side
    checked = 0
    for src, dst in result.pairs:
        j = motion.index(src)
        m = evaluated[dst]
        if src == root_joint:
            # The root turns as the source root does (rest-aligned: no direction offset).
            rest = np.array(obj.data.bones[dst].matrix_local)[:3, :3]
            delta = m[:, :3, :3] @ rest.T
            assert rot.angle_between(delta[:, :, 1], g[:, j, :, 1]).max() < 2.0
            continue
        if j not in mains:
            continue
        frames = ~near[legs[dst]] if dst in legs else np.ones(motion.frames, bool)
        # A bone's direction runs to the head of the bone mapped to its source's main child
        # (a control such as Rigify's chest need not point along what it moves); its Y axis
        # where that child is unmapped or shares its head.
        axis = m[:, :3, 1]
        child = next((d for s, d in result.pairs if motion.index(s) == mains[j]), None)
        if child is not None and child in evaluated:
            span = evaluated[child][:, :3, 3] - m[:, :3, 3]
            if np.linalg.norm(span, axis=-1).min() > 0.02:
                axis = span
        err = rot.angle_between(axis[frames], directions[frames, j])
        assert err.max() < 2.0, f"{dst}: {err.max():.2f} degrees from {src}"
        checked += 1
    for side in ("left", "right"):
        ankle = next(d for s, d in result.pairs if s == f"{side}_ankle")
        heads = evaluated[ankle][:, :3, 3]
        segments = footpin.contact_segments(result.pinned[side])
        assert segments
        for a, b in segments:
            assert np.linalg.norm(heads[a:b] - heads[a:b].mean(axis=0), axis=1).max() < 0.01
    return checked


def test_import_3000_frames_24_bones_writes_exactly_the_values_sent():
    motion = synthetic.random_motion(3000, seed=4)
    obj = motion_import.import_motion(bpy.context, motion.to_map(), "Body", frame_start=1)
    quats, loc = motion_mod.pose_bases(motion, motion_import.bone_rest_matrices(obj, motion.names))
    fcurves = {(fc.data_path, fc.array_index): fc for fc in compat.fcurves_for(obj)}
    assert len(fcurves) == 24 * 4 + 3 + 4
    for k, name in enumerate(motion.names):
        for i in range(4):
            frames, values = anim_write.read_channel(fcurves[(f'pose.bones["{name}"].rotation_quaternion', i)])
            np.testing.assert_array_equal(frames, np.arange(1, 3001, dtype=np.float32))
            np.testing.assert_array_equal(values, quats[:, k, i])
    for i in range(3):
        _, values = anim_write.read_channel(fcurves[('pose.bones["pelvis"].location', i)])
        np.testing.assert_array_equal(values, loc[:, i])
    _, contact = anim_write.read_channel(fcurves[('["nstudio_contact_left_heel"]', 0)])
    np.testing.assert_array_equal(contact, motion.contacts[:, 0])
    # What Blender evaluates is the motion that was sent: joints where the map put them.
    for frame in (0, 1234, 2999):
        bpy.context.scene.frame_set(frame + 1)
        heads = np.array([obj.matrix_world @ obj.pose.bones[n].head for n in motion.names])
        np.testing.assert_allclose(heads, motion.joints[frame], atol=1e-4)
    # Rolls: knees and elbows bend about their bone's X axis (Z faces the body's front, -Y).
    for name in ("left_knee", "right_hip", "left_elbow", "spine2"):
        z_axis = np.array(obj.data.bones[name].matrix_local)[:3, 2]
        assert z_axis @ np.array([0.0, -1.0, 0.0]) > 0.9, name
    # Reading the armature back gives the same motion.
    back = motion_import.motion_from_armature(obj)
    np.testing.assert_allclose(back.joints[:, [back.names.index(n) for n in motion.names]], motion.joints, atol=1e-4)


def test_retarget_onto_a_generated_rigify_rig():
    import addon_utils

    addon_utils.enable("rigify", default_set=True, handle_error=None)
    bpy.ops.object.armature_human_metarig_add()
    with contextlib.redirect_stdout(io.StringIO()):
        bpy.ops.pose.rigify_generate()
    rig = bpy.data.objects["rig"]
    walk = synthetic.walk(36)  # two contacts per foot; a Rigify frame evaluates in ~0.3 s here
    source = motion_import.import_motion(bpy.context, walk.to_map(), "Body")
    motion = motion_import.motion_from_armature(source)  # the operator's path: from the body in the scene
    action, result = retarget.retarget_onto(motion, rig, frame_start=1)
    assert {d for _, d in result.pairs} >= {"torso", "chest", "upper_arm_fk.L", "shin_fk.R", "foot_fk.L"}
    # The bake plays from an NLA strip (pushed down), not from the active action.
    assert rig.animation_data.nla_tracks[-1].strips[0].action == action and rig.animation_data.action is None
    evaluated = _evaluated(rig, [d for _, d in result.pairs], walk.frames)
    assert _check_retarget(motion, rig, result, evaluated) >= 16
    # The DEF bones (what deforms the mesh) follow the FK controls.
    for control, deform in (("upper_arm_fk.L", "DEF-upper_arm.L"), ("shin_fk.R", "DEF-shin.R")):
        bpy.context.scene.frame_set(20)
        a = np.array(rig.pose.bones[control].matrix)[:3, 1]
        b = np.array(rig.pose.bones[deform].matrix)[:3, 1]
        assert rot.angle_between(a, b) < 2.0
    # The upper spine stands as the source's does (the chest control points backwards at rest:
    # aligning its own axis with the spine tipped DEF-spine.003 over by ~90 degrees).
    mains, directions = rt.source_directions(motion)
    spine = motion.index(next(s for s, d in result.pairs if d == "chest"))
    chest = _evaluated(rig, ["DEF-spine.003"], walk.frames)["DEF-spine.003"]
    assert rot.angle_between(chest[:, :3, 1], directions[:, spine]).max() < 8.0


def _build_other_rig():
    names, parents, heads, tails, rolls = rigs.other_rig()
    data = bpy.data.armatures.new("Other")
    obj = bpy.data.objects.new("Other", data)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    made = []
    for i, name in enumerate(names):
        bone = data.edit_bones.new(name)
        bone.head, bone.tail, bone.roll = heads[i].tolist(), tails[i].tolist(), float(rolls[i])
        if parents[i] >= 0:
            bone.parent = made[parents[i]]
        made.append(bone)
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj


def test_retarget_onto_an_a_pose_rig_with_other_names_lengths_and_rolls():
    obj = _build_other_rig()
    walk = synthetic.walk(60, turn_deg=40.0)
    action, result = retarget.retarget_onto(walk, obj, frame_start=1)
    assert len(result.pairs) == 22
    assert result.scale == pytest.approx(1.12, rel=1e-4)
    evaluated = _evaluated(obj, [d for _, d in result.pairs], walk.frames)
    assert _check_retarget(walk, obj, result, evaluated) == 18  # 22 pairs less the root, the head and the toes (leaves)


def test_bvh_export_import_round_trip(tmp_path):
    import addon_utils

    addon_utils.enable("io_anim_bvh", default_set=True, handle_error=None)
    walk = synthetic.walk(40)
    obj = motion_import.import_motion(bpy.context, walk.to_map(), "Body", frame_start=1)
    path = str(tmp_path / "walk.bvh")
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.ops.export_anim.bvh(filepath=path, frame_start=1, frame_end=40, root_transform_only=True)
    # Blender's BVH exporter writes Z-up coordinates as they are: read them back without conversion.
    bpy.ops.import_anim.bvh(filepath=path, rotate_mode="QUATERNION", axis_forward="Y", axis_up="Z",
                            update_scene_fps=False, update_scene_duration=False)
    imported = bpy.context.active_object
    assert imported is not obj and imported.type == "ARMATURE"
    back = motion_import.motion_from_armature(imported, frames=40, fps=walk.fps)
    order = [back.names.index(n) for n in walk.names]
    np.testing.assert_allclose(back.joints[:, order], walk.joints, atol=1e-3)


def _posed_heads(obj, names, frames):
    scene = bpy.context.scene
    out = np.empty((len(frames), len(names), 3))
    for i, f in enumerate(frames):
        scene.frame_set(f)
        world = np.array(obj.matrix_world)
        for k, n in enumerate(names):
            out[i, k] = (world @ np.append(np.array(obj.pose.bones[n].head), 1.0))[:3]
    return out


@pytest.mark.parametrize("fmt, module, suffix", [("FBX", "io_scene_fbx", "fbx"), ("GLTF", "io_scene_gltf2", "glb")])
def test_fbx_and_gltf_exports_reimport_with_the_same_animation(tmp_path, fmt, module, suffix):
    import addon_utils

    from addon.blender import motion_ui

    addon_utils.enable(module, default_set=True, handle_error=None)
    walk = synthetic.walk(30)
    obj = motion_import.import_motion(bpy.context, walk.to_map(), "Body", frame_start=1)
    path = str(tmp_path / f"walk.{suffix}")
    motion_ui.export_motion(bpy.context, obj, path, fmt)
    before = set(bpy.data.objects)
    if fmt == "FBX":
        bpy.ops.import_scene.fbx(filepath=path)
    else:
        bpy.ops.import_scene.gltf(filepath=path)
    imported = next(o for o in set(bpy.data.objects) - before if o.type == "ARMATURE")
    frames = [1, 8, 17, 30]
    np.testing.assert_allclose(_posed_heads(imported, walk.names, frames), walk.joints[[f - 1 for f in frames]],
                               atol=2e-3)


def test_motion_from_an_euler_keyed_bvh_import(tmp_path):
    import addon_utils

    addon_utils.enable("io_anim_bvh", default_set=True, handle_error=None)
    walk = synthetic.walk(20)
    obj = motion_import.import_motion(bpy.context, walk.to_map(), "Body", frame_start=1)
    path = str(tmp_path / "walk.bvh")
    bpy.context.view_layer.objects.active = obj
    bpy.ops.export_anim.bvh(filepath=path, frame_start=1, frame_end=20, root_transform_only=True)
    # Blender's own BVH import keys Euler angles in each joint's native order.
    bpy.ops.import_anim.bvh(filepath=path, rotate_mode="NATIVE", axis_forward="Y", axis_up="Z",
                            update_scene_fps=False, update_scene_duration=False)
    imported = bpy.context.active_object
    assert {pb.rotation_mode for pb in imported.pose.bones} != {"QUATERNION"}
    back = motion_import.motion_from_armature(imported, frames=20, fps=walk.fps)
    np.testing.assert_allclose(back.joints[:, [back.names.index(n) for n in walk.names]], walk.joints, atol=1e-3)


def test_retarget_onto_the_anny_body_rig():
    """The Anny/MakeHuman preset on the real Anny skeleton (104 bones, split twist bones)."""
    pytest.importorskip("anny")
    from tools import demo_motion

    body = demo_motion.anny_body()
    obj = demo_motion.build_anny_armature(body)
    assert bpy.data.objects["Anny Body"].vertex_groups.get("upperleg01.L") is not None
    walk = synthetic.walk(30)
    _, result = retarget.retarget_onto(walk, obj, frame_start=1)
    assert dict((d, s) for s, d in result.pairs)["upperleg01.L"] == "left_hip"
    evaluated = _evaluated(obj, [d for _, d in result.pairs], walk.frames)
    assert _check_retarget(walk, obj, result, evaluated) >= 15


def test_demo_sizes_the_rigify_metarig_to_the_body_and_reads_camera_errors():
    """The demo's overlay: the metarig gets the body's leg length (the root motion is scaled by
    the leg ratio about the world origin, so a taller rig walks off the footage), and the
    recovered camera's pitch and height are read in Blender's camera convention."""
    import addon_utils

    from addon.core.motion import bone_maps
    from tools import demo_motion

    addon_utils.enable("rigify", default_set=True, handle_error=None)
    bpy.ops.object.armature_human_metarig_add()
    metarig = bpy.context.object
    walk = synthetic.walk(8)
    size = demo_motion.rig_size(walk, metarig)
    assert abs(size - 1.0) > 0.05          # the template and Rigify's human differ
    metarig.scale = (size, size, size)
    bpy.ops.object.transform_apply(location=False, rotation=False, scale=True)
    bones = metarig.data.bones
    canon = bone_maps.canonical_names(walk.names, walk.parents, walk.rest)
    legs = rt.leg_length({k: walk.rest[walk.index(v)] for k, v in canon.items()})
    assert bones["thigh.L"].length + bones["shin.L"].length == pytest.approx(legs, rel=0.01)
    # A camera 1.1 m up pitched 3 degrees down, and one 1.7 m up pitched 12 degrees down.
    def camera(height, pitch_deg):
        m = np.eye(4)
        m[:3, :3] = rot.axis_angle_to_matrix(np.array([np.radians(90.0 - pitch_deg), 0.0, 0.0]))
        m[2, 3] = height
        return m
    line = demo_motion.camera_error(camera(1.1, 3.0), camera(1.7, 12.0))
    assert line == "camera: pitch -12.0 degrees (true -3.0), height 1.70 m (true 1.10)", line
