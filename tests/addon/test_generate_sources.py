"""ControlNet source maths without bpy: depth/normal encodings, masks, rig presets, projection,
OpenPose drawing and the ``controlnets`` params."""

from __future__ import annotations

import math

import numpy as np
import pytest

from addon.core import generate_sources as gs


def test_depth_is_inverse_depth_near_white_and_empty_black():
    depth = np.array([[2.0, 4.0], [1e10, 8.0]], np.float32)
    image = gs.depth_control(depth)
    assert image.shape == (2, 2, 3) and image.dtype == np.uint8
    grey = image[..., 0].astype(float)
    # 1/z: 0.5, 0.25, -, 0.125 -> (x - 0.125) / 0.375
    assert grey.tolist() == [[255.0, 85.0], [0.0, 0.0]]
    assert (image[..., 0] == image[..., 2]).all()
    assert gs.depth_control(np.full((2, 3), 5.0)).min() == 255   # one depth: all near
    assert not gs.depth_control(np.full((2, 3), np.inf)).any()


def test_depth_image_equals_the_servers_map_of_the_same_depth():
    """Sending the add-on's image or the metric depth (inf where empty) conditions alike."""
    from pipelines.image.generate import _control_image

    depth = np.random.default_rng(0).uniform(0.5, 20.0, (17, 23)).astype(np.float32)
    depth[0, :5] = np.inf
    np.testing.assert_array_equal(gs.depth_control(depth), _control_image(depth))
    # Blender's "nothing hit" (1e10 m) is empty for the add-on, as inf is.
    blender = depth.copy()
    blender[0, :5] = 1e10
    np.testing.assert_array_equal(gs.depth_control(blender), gs.depth_control(depth))


def test_normals_go_to_camera_space_in_the_normalbae_colours():
    # A camera turned 90 degrees about world Z: its +X axis is world +Y.
    angle = math.radians(90.0)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0.0],
                         [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    world = np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]])  # +Y, +Z (unnormalised)
    image = gs.normal_control(world, rotation)
    # World +Y = camera +X (right): red is left, so 0; world +Z = camera +Z (towards the viewer).
    assert tuple(image[0, 0]) == (0, 128, 128)
    assert tuple(image[0, 1]) == (128, 128, 255)
    assert tuple(image[0, 2]) == gs.EMPTY_NORMAL   # no surface
    np.testing.assert_allclose(gs.decode_normal_control(image[:, :2])[0],
                               [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], atol=0.01)


def test_a_sphere_facing_the_camera_has_the_normalbae_colours():
    """ControlNet 1.1's normalbae convention: "blue is front, red is left, green is top" (its
    README). A unit sphere straight ahead of a camera at the world origin that looks along
    world -Z (Blender's camera rest pose, camera frame = world frame)."""
    size = 65
    u = (np.arange(size) + 0.5) / size * 2.0 - 1.0          # image x, -1 at the left edge
    x, y = np.meshgrid(u, -u)                                 # row 0 at the top: y = +1
    inside = x ** 2 + y ** 2 < 1.0
    z = np.sqrt(np.clip(1.0 - x ** 2 - y ** 2, 0.0, None))    # the visible half faces +z
    world = np.stack([x, y, z], axis=-1) * inside[..., None]
    image = gs.normal_control(world, np.eye(4)).astype(int)
    middle = size // 2
    assert tuple(image[middle, middle]) == (128, 128, 255)   # the centre faces the camera
    right, left = image[middle, size - 2], image[middle, 1]   # the rims, just inside
    assert right[0] < 40 and left[0] > 215                    # red: normals pointing left
    assert abs(right[1] - 128) <= 1 and abs(left[1] - 128) <= 1
    top, bottom = image[1, middle], image[size - 2, middle]
    assert top[1] > 215 and bottom[1] < 40                    # green: normals pointing up
    assert abs(top[0] - 128) <= 1 and abs(bottom[0] - 128) <= 1
    # Blue is towards the viewer everywhere on the visible half, most at the centre.
    assert (image[inside][:, 2] >= 128).all() and image[middle, middle, 2] == 255
    assert (image[~inside] == gs.EMPTY_NORMAL).all()


def test_index_mask_selects_one_object():
    index = np.array([[0.0, 3.0], [3.0, 2.0]])
    assert gs.index_mask(index, 3).tolist() == [[0, 255], [255, 0]]


@pytest.mark.parametrize("names,preset,neck", [
    (["spine.004", "spine.006", "upper_arm.L", "upper_arm.R", "thigh.L", "thigh.R"],
     "metarig", "spine.004"),
    (["ORG-spine.004", "DEF-spine.004", "ORG-upper_arm.L", "ORG-upper_arm.R", "ORG-thigh.L",
      "ORG-thigh.R"], "metarig", "ORG-spine.004"),
    (["neck", "head", "upper_arm_fk.L", "upper_arm_fk.R", "thigh_fk.L", "thigh_fk.R"],
     "rigify", "neck"),
    (["mixamorig:Hips", "mixamorig:Neck", "mixamorig:LeftArm", "mixamorig:RightArm",
      "mixamorig:LeftUpLeg", "mixamorig:RightUpLeg", "mixamorig:LeftForeArm"], "mixamo",
     "mixamorig:Neck"),
    (["mixamorig1:Neck", "mixamorig1:LeftArm", "mixamorig1:RightArm", "mixamorig1:LeftUpLeg",
      "mixamorig1:RightUpLeg"], "mixamo", "mixamorig1:Neck"),
])
def test_rig_presets(names, preset, neck):
    found, joints = gs.match_rig(names)
    assert found == preset and joints["neck"] == neck


def test_a_motion_bone_map_places_rigs_the_presets_do_not_name():
    names = ["root", "chest", "throat", "arm_up.lf", "arm_up.rt", "arm_lo.lf", "leg_up.lf",
             "leg_up.rt", "skull"]
    with pytest.raises(ValueError, match="humanoid"):
        gs.match_rig(names)
    canonical = {"pelvis": "root", "neck": "throat", "head": "skull",
                 "left_shoulder": "arm_up.lf", "right_shoulder": "arm_up.rt",
                 "left_elbow": "arm_lo.lf", "left_hip": "leg_up.lf", "right_hip": "leg_up.rt",
                 "spine3": "chest"}
    preset, joints = gs.match_rig(names, canonical=canonical)
    assert preset == "bone map"
    assert joints == {"neck": "throat", "head": "skull", "l_shoulder": "arm_up.lf",
                      "r_shoulder": "arm_up.rt", "l_elbow": "arm_lo.lf", "l_hip": "leg_up.lf",
                      "r_hip": "leg_up.rt"}
    # A rig the presets name fully keeps its preset (and its face bones).
    metarig = ["spine.004", "spine.006", "nose", "upper_arm.L", "upper_arm.R", "thigh.L",
               "thigh.R"]
    assert gs.match_rig(metarig, canonical={"neck": "spine.004"})[0] == "metarig"


def test_a_rig_that_is_not_humanoid_is_named():
    with pytest.raises(ValueError, match="humanoid"):
        gs.match_rig(["Bone", "Bone.001"])


def test_face_joints_from_the_head_bone_face_forward():
    face = gs.face_from_head(np.array([0.0, 0.0, 1.6]), np.array([0.0, 0.0, 1.8]),
                             left=np.array([1.0, 0.0, 0.0]))
    assert face["nose"][1] < 0   # Blender characters face -Y
    assert face["l_eye"][0] > 0 > face["r_eye"][0] and face["l_ear"][0] > face["l_eye"][0]


def test_projection_matches_a_pinhole():
    # Camera at the origin looking down -Z, OpenGL-style projection with f = 2 (90x90 fov ~53).
    near, far = 0.1, 100.0
    projection = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0],
                           [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
                           [0, 0, -1.0, 0]])
    points = np.array([[0.0, 0.0, -5.0], [1.0, 0.5, -2.0], [0.0, 0.0, 3.0]])
    pixels, in_front = gs.project_points(points, np.eye(4), projection, 100, 100)
    np.testing.assert_allclose(pixels[0], [50.0, 50.0])
    # x/-z = 0.5 -> ndc 1.0 -> right edge; y/-z = 0.25 -> ndc 0.5 -> a quarter from the top.
    np.testing.assert_allclose(pixels[1], [100.0, 25.0])
    assert in_front.tolist() == [True, True, False]


def test_openpose_drawing_colours_joints_and_limbs():
    joints = np.zeros((18, 2))
    visible = np.zeros(18, bool)
    joints[1], joints[2] = (20.5, 10.5), (20.5, 40.5)   # neck, right shoulder
    visible[[1, 2]] = True
    image = gs.draw_openpose(joints, visible, 48, 64)
    assert image.shape == (64, 48, 3)
    assert tuple(image[10, 20]) == gs.COLOURS[1] and tuple(image[40, 20]) == gs.COLOURS[2]
    # The neck-right shoulder limb is OpenPose's first, at 60 % of its colour.
    assert tuple(image[25, 20]) == (153, 0, 0)
    assert not image[25, 30].any() and not image[60, 5].any()
    # A joint off the image is not drawn and does not fail.
    joints[2] = (500.0, 500.0)
    assert tuple(gs.draw_openpose(joints, visible, 48, 64)[10, 20]) == gs.COLOURS[1]


def test_controlnet_params_are_checked():
    items = [{"model": " depth ", "scale": 0.5, "kind": "DEPTH"},
             {"model": "off", "scale": 1.0, "kind": "NORMAL", "enabled": False},
             {"model": "pose", "scale": 1.0, "kind": "OPENPOSE"}]
    assert gs.controlnet_params(items) == [{"model": "depth", "scale": 0.5},
                                           {"model": "pose", "scale": 1.0}]
    with pytest.raises(ValueError, match="ControlNet 1: choose a ControlNet model"):
        gs.controlnet_params([{"model": "", "kind": "DEPTH"}])
    with pytest.raises(ValueError, match="ControlNet 2: scale 11.0"):
        gs.controlnet_params([items[0], {"model": "x", "scale": 11.0, "kind": "DEPTH"}])
    with pytest.raises(ValueError, match="unknown source 'CANNY'"):
        gs.controlnet_params([{"model": "x", "kind": "CANNY"}])


# img2img over an animation: the run's bookkeeping ---------------------------------------------

def test_animation_run_goes_frame_by_frame_and_routes_results():
    from addon.core import generate_animation as anim

    assert anim.frame_range(1, 5, 2) == [1, 3, 5]
    with pytest.raises(ValueError, match="empty"):
        anim.frame_range(3, 2)
    run = anim.AnimationRun("r1", anim.frame_range(1, 3), "/out")
    target = anim.frame_target("r1", 2)
    assert anim.parse_target(target) == ("r1", 2) and anim.parse_target("Generated 4") is None
    assert anim.frame_path("/out", 7) == "/out/generated_0007.png"
    assert run.next_frame() == 1
    run.submitted(1, "req-1")
    assert run.next_frame() is None   # one job in flight at a time
    run.frame_written(1)
    assert run.progress == (1, 3) and run.next_frame() == 2
    run.submitted(2, "req-2")
    run.job_ended("failed", "out of memory")
    assert run.state == "failed" and run.message == "frame 2: out of memory"
    assert run.next_frame() is None

    run = anim.AnimationRun("r2", [1, 2], "/out")
    run.submitted(run.next_frame(), "req")
    run.cancel()
    assert run.finished and run.state == "cancelled" and run.next_frame() is None
    run = anim.AnimationRun("r3", [4, 5], "/out")
    for frame in (4, 5):
        run.submitted(run.next_frame(), "req")
        run.frame_written(frame)
    assert run.state == "done" and run.progress == (2, 2)
