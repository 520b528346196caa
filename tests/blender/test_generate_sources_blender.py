"""ControlNet sources rendered from a real scene in real bpy: depth, normals, silhouette mask and
an OpenPose image of an armature, checked against the scene's geometry (projected with
bpy_extras, not the add-on's own projection)."""

from __future__ import annotations

import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon.blender import compat, generate_sources as sources  # noqa: E402
from addon.core import generate_sources as gs  # noqa: E402

W, H = 32, 24


def _pixel(scene, point, width, height):
    """(row, column) of a world point in the camera image, by Blender's own projection."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    ndc = world_to_camera_view(scene, scene.camera, Vector(point))
    return int((1.0 - ndc.y) * height), int(ndc.x * width)


def _scene_from_above():
    """A camera 10 m above a ground plane, looking down; a cube (top at 4 m from the camera),
    a plane tilted 30 degrees about Y; 32 x 24 pixels."""
    scene = bpy.context.scene
    for obj in list(scene.objects):
        bpy.data.objects.remove(obj)
    camera = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(camera)
    camera.location = (0.0, 0.0, 10.0)
    camera.data.lens = 20.0
    scene.camera = camera
    scene.render.resolution_x, scene.render.resolution_y = W, H
    scene.render.resolution_percentage = 100
    bpy.ops.mesh.primitive_plane_add(size=100.0, location=(0.0, 0.0, 0.0))
    ground = bpy.context.active_object
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(-3.0, 0.0, 5.0))
    cube = bpy.context.active_object
    bpy.ops.mesh.primitive_plane_add(size=3.0, location=(4.0, 0.0, 2.0),
                                     rotation=(0.0, math.radians(30.0), 0.0))
    tilted = bpy.context.active_object
    return scene, ground, cube, tilted


def test_depth_normals_and_mask_from_the_camera(blender_addon):
    scene, ground, cube, tilted = _scene_from_above()
    view_layer = bpy.context.view_layer
    before = (scene.render.engine, scene.cycles.samples, scene.cycles.filter_width,
              scene.render.use_compositing, view_layer.use_pass_z, view_layer.use_pass_normal)
    passes = sources.render_passes(scene, ("depth", "normal", "index"), index_object=cube)
    after = (scene.render.engine, scene.cycles.samples, scene.cycles.filter_width,
             scene.render.use_compositing, view_layer.use_pass_z, view_layer.use_pass_normal)
    assert after == before and compat.scene_compositor(scene) is None   # all restored
    assert not any(g.name.startswith("nstudio sources") for g in bpy.data.node_groups)
    assert cube.pass_index == 0
    depth, normal = passes["depth"], passes["normal"]
    assert depth.shape == (H, W) and normal.shape == (H, W, 3)
    r_ground = _pixel(scene, (0.0, -3.5, 0.0), W, H)
    r_cube = _pixel(scene, (-3.0, 0.0, 6.0), W, H)
    r_tilt = _pixel(scene, (4.0, 0.0, 2.0), W, H)
    assert depth[r_ground] == pytest.approx(10.0, abs=1e-3)
    assert depth[r_cube] == pytest.approx(4.0, abs=1e-3)

    control = sources.depth_source(scene)
    assert control.shape == (H, W, 3) and control.dtype == np.uint8
    # Inverse depth, near white: cube top (4 m) > tilted plane (~8 m) > ground (10 m).
    assert control[r_cube][0] == 255 and control[r_ground][0] == 0
    assert control[r_cube][0] > control[r_tilt][0] > control[r_ground][0]
    flat = depth.reshape(-1)
    order = np.argsort(flat)
    grey = control[..., 0].reshape(-1)[order].astype(int)
    assert (np.diff(grey) <= 0).all()   # monotone: farther is never brighter

    image = sources.normal_source(scene)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    decoded = gs.decode_normal_control(image)
    assert np.allclose(np.linalg.norm(decoded, axis=-1), 1.0, atol=0.02)
    # Ground and cube top face the camera: (128, 128, 255).
    assert tuple(image[r_ground]) == (128, 128, 255) and tuple(image[r_cube]) == (128, 128, 255)
    # The tilted plane's normal leans to +x (the image's right): red below 128.
    np.testing.assert_allclose(decoded[r_tilt], (0.5, 0.0, math.sqrt(3) / 2), atol=0.02)
    assert image[r_tilt][0] < 128

    mask = sources.mask_source(scene, cube)
    assert mask.shape == (H, W) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    # The cube is what the camera sees nearer than 7 m on the left half (its top at 4 m, its
    # sides down to the ground): the silhouette is exactly those pixels.
    left = np.zeros((H, W), bool)
    left[:, : W // 2] = True
    np.testing.assert_array_equal(mask == 255, (depth < 7.0) & left)
    assert cube.pass_index == 0


def _metarig():
    """A standing humanoid with Rigify metarig bone names, facing -Y, 1.8 m tall."""
    arm = bpy.data.armatures.new("Rig")
    obj = bpy.data.objects.new("Rig", arm)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    bones = {
        "spine": ((0, 0, 1.0), (0, 0, 1.2), None),
        "spine.004": ((0, 0, 1.45), (0, 0, 1.55), "spine"),
        "spine.006": ((0, 0, 1.55), (0, 0, 1.8), "spine.004"),
    }
    for s, x in (("L", 1.0), ("R", -1.0)):
        bones.update({
            f"upper_arm.{s}": ((0.2 * x, 0, 1.45), (0.45 * x, 0, 1.45), "spine"),
            f"forearm.{s}": ((0.45 * x, 0, 1.45), (0.7 * x, 0, 1.45), f"upper_arm.{s}"),
            f"hand.{s}": ((0.7 * x, 0, 1.45), (0.8 * x, 0, 1.45), f"forearm.{s}"),
            f"thigh.{s}": ((0.1 * x, 0, 1.0), (0.12 * x, 0, 0.55), "spine"),
            f"shin.{s}": ((0.12 * x, 0, 0.55), (0.13 * x, 0, 0.1), f"thigh.{s}"),
            f"foot.{s}": ((0.13 * x, 0, 0.1), (0.13 * x, -0.15, 0.0), f"shin.{s}"),
        })
    for name, (head, tail, parent) in bones.items():
        bone = arm.edit_bones.new(name)
        bone.head, bone.tail = head, tail
        if parent:
            bone.parent = arm.edit_bones[parent]
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj


def test_openpose_joints_land_at_the_projected_bone_heads(blender_addon):
    scene = bpy.context.scene
    for obj in list(scene.objects):
        bpy.data.objects.remove(obj)
    camera = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(camera)
    camera.location = (0.3, -6.0, 1.0)
    camera.rotation_euler = (math.radians(90.0), 0.0, 0.0)   # looking along +Y
    scene.camera = camera
    size = (96, 128)
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    rig = _metarig()
    rig.pose.bones["forearm.L"].rotation_mode = "XYZ"
    rig.pose.bones["forearm.L"].rotation_euler = (0.0, 0.0, math.radians(60.0))   # a posed elbow
    bpy.context.view_layer.update()

    image = sources.openpose_source(scene, rig)
    assert image.shape == (128, 96, 3) and image.dtype == np.uint8
    preset, joint_bones = gs.match_rig(b.name for b in rig.pose.bones)
    assert preset == "metarig"
    world = rig.matrix_world
    checked = 0
    for joint, bone in joint_bones.items():
        if joint == "head":
            continue
        head = world @ rig.pose.bones[bone].head
        row, col = _pixel(scene, head, *size)
        assert tuple(image[row, col]) == gs.COLOURS[gs.JOINTS.index(joint)], joint
        checked += 1
    assert checked == 13   # neck, 2 x (shoulder, elbow, wrist, hip, knee, ankle)
    # The wrist checked above is the posed one, not the rest position.
    wrist = world @ rig.pose.bones["hand.L"].head
    assert (wrist - world @ rig.data.bones["hand.L"].head_local).length > 0.1
    # Face joints estimated from the head bone: the nose sits between the eyes, above the neck.
    points, found = sources.pose_points(scene, rig)
    assert found.all()
    nose, neck = points[0], points[1]
    assert nose[2] > neck[2] and nose[1] < 0   # in front (-Y) of the head
    assert (image.reshape(-1, 3).max(axis=1) == 0).mean() > 0.8   # mostly black background


def test_make_source_operator_lands_an_image(blender_addon):
    scene, _ground, cube, _tilted = _scene_from_above()
    bpy.context.view_layer.objects.active = cube
    assert bpy.ops.nstudio.generate_source(kind="MASK") == {"FINISHED"}
    image = bpy.data.images["Source Mask"]
    assert tuple(image.size) == (W, H)
    from addon.blender import generate

    assert "nstudio_seed" not in image
    np.testing.assert_array_equal(generate.image_to_srgb8(image)[..., 0],
                                  sources.mask_source(scene, cube))


def test_openpose_of_a_rig_named_by_the_motion_bone_maps(blender_addon):
    """A UE5-named rig (no preset here) is placed by addon/core/motion/bone_maps.py."""
    pytest.importorskip("addon.core.motion.bone_maps")
    scene = bpy.context.scene
    for obj in list(scene.objects):
        bpy.data.objects.remove(obj)
    camera = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(camera)
    camera.location = (0.0, -6.0, 1.0)
    camera.rotation_euler = (math.radians(90.0), 0.0, 0.0)
    scene.camera = camera
    scene.render.resolution_x, scene.render.resolution_y = 96, 128
    scene.render.resolution_percentage = 100
    arm = bpy.data.armatures.new("UE")
    rig = bpy.data.objects.new("UE", arm)
    scene.collection.objects.link(rig)
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    bones = {"pelvis": ((0, 0, 1.0), (0, 0, 1.1), None),
             "spine_01": ((0, 0, 1.1), (0, 0, 1.25), "pelvis"),
             "spine_02": ((0, 0, 1.25), (0, 0, 1.4), "spine_01"),
             "neck_01": ((0, 0, 1.45), (0, 0, 1.55), "spine_02"),
             "head": ((0, 0, 1.55), (0, 0, 1.8), "neck_01")}
    for s, x in (("l", 1.0), ("r", -1.0)):
        bones.update({
            f"clavicle_{s}": ((0.05 * x, 0, 1.42), (0.2 * x, 0, 1.45), "spine_02"),
            f"upperarm_{s}": ((0.2 * x, 0, 1.45), (0.45 * x, 0, 1.45), f"clavicle_{s}"),
            f"lowerarm_{s}": ((0.45 * x, 0, 1.45), (0.7 * x, 0, 1.45), f"upperarm_{s}"),
            f"hand_{s}": ((0.7 * x, 0, 1.45), (0.8 * x, 0, 1.45), f"lowerarm_{s}"),
            f"thigh_{s}": ((0.1 * x, 0, 1.0), (0.12 * x, 0, 0.55), "pelvis"),
            f"calf_{s}": ((0.12 * x, 0, 0.55), (0.13 * x, 0, 0.1), f"thigh_{s}"),
            f"foot_{s}": ((0.13 * x, 0, 0.1), (0.13 * x, -0.15, 0.0), f"calf_{s}"),
        })
    for name, (head, tail, parent) in bones.items():
        bone = arm.edit_bones.new(name)
        bone.head, bone.tail = head, tail
        if parent:
            bone.parent = arm.edit_bones[parent]
    bpy.ops.object.mode_set(mode="OBJECT")
    with pytest.raises(ValueError):
        gs.match_rig(bones)   # the name presets alone do not know it
    image = sources.openpose_source(scene, rig)
    for joint, bone in (("l_shoulder", "upperarm_l"), ("r_elbow", "lowerarm_r"),
                        ("l_wrist", "hand_l"), ("r_knee", "calf_r"), ("l_ankle", "foot_l")):
        row, col = _pixel(scene, rig.matrix_world @ rig.pose.bones[bone].head, 96, 128)
        assert tuple(image[row, col]) == gs.COLOURS[gs.JOINTS.index(joint)], joint
