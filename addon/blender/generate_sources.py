"""ControlNet sources from the scene (bpy layer; maths in core/generate_sources.py).

- ``render_passes``: the Depth, Normal and Object Index passes of the active camera's view,
  rendered by Cycles (one sample, no denoiser) through the active view layer and a temporary
  compositor File Output (Blender 5's headless Render Result has no readable pass pixels); the
  scene's settings are put back afterwards.
- ``depth_source`` / ``normal_source`` / ``mask_source`` / ``openpose_source``: wire images
  (uint8, row 0 at the top) normalised as the ControlNets expect.
- ``NSTUDIO_OT_generate_source``: one click, the source as a Blender image ("Source Depth" ...).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import bpy
import numpy as np
from bpy.props import EnumProperty

from ..core import generate_sources as gs
from . import compat
from .generate_images import image_to_mask8, image_to_srgb8, land_image, output_size

_PASS_SOCKETS = {"depth": "Depth", "normal": "Normal", "index": "Object Index"}
_PASS_FLAGS = {"depth": "use_pass_z", "normal": "use_pass_normal", "index": "use_pass_object_index"}


def render_size(scene) -> tuple[int, int]:
    render = scene.render
    scale = render.resolution_percentage / 100.0
    return max(1, int(render.resolution_x * scale)), max(1, int(render.resolution_y * scale))


@contextlib.contextmanager
def render_size_override(scene, size):
    """Render at ``size`` (width, height) pixels for the duration; None keeps the scene's."""
    if size is None:
        yield
        return
    render = scene.render
    saved = (render.resolution_x, render.resolution_y, render.resolution_percentage)
    render.resolution_x, render.resolution_y, render.resolution_percentage = (
        int(size[0]), int(size[1]), 100)
    try:
        yield
    finally:
        render.resolution_x, render.resolution_y, render.resolution_percentage = saved


def _require_camera(scene):
    if scene.camera is None:
        raise ValueError("the scene has no active camera to render the sources from")
    return scene.camera


def render_passes(scene, passes=("depth", "normal"), index_object=None) -> dict:
    """Render the named passes from the scene camera.

    Args:
        scene: the scene (its active view layer and camera).
        passes: any of "depth", "normal", "index".
        index_object: with "index": the object whose silhouette is wanted; it gets a pass
            index no other object has for the render.

    Returns:
        {"depth": [H, W] metres along the view axis (1e10 where empty), "normal": [H, W, 3]
        world frame, "index": [H, W] object index, "index_value": ``index_object``'s index
        in that pass}, row 0 at the top.
    """
    _require_camera(scene)
    view_layer = bpy.context.view_layer if bpy.context.scene == scene else scene.view_layers[0]
    folder = tempfile.mkdtemp(prefix="nstudio-sources-")
    cycles = scene.cycles
    saved_scene = {
        (scene.render, "engine"): scene.render.engine,
        (scene.render, "use_compositing"): scene.render.use_compositing,
        (scene.render, "filter_size"): scene.render.filter_size,
        (cycles, "filter_width"): cycles.filter_width,
        (cycles, "samples"): cycles.samples,
        (cycles, "use_denoising"): cycles.use_denoising,
        (cycles, "use_adaptive_sampling"): cycles.use_adaptive_sampling,
        (view_layer, "use"): view_layer.use,
    }
    saved_scene.update({(view_layer, _PASS_FLAGS[p]): getattr(view_layer, _PASS_FLAGS[p])
                        for p in passes})
    saved_index = None
    try:
        scene.render.engine = "CYCLES"
        scene.render.use_compositing = True
        # A (near) box filter of one sample: every pixel is one surface, not a blend of two.
        scene.render.filter_size = cycles.filter_width = 0.01
        cycles.samples, cycles.use_denoising, cycles.use_adaptive_sampling = 1, False, False
        view_layer.use = True
        for name in passes:
            setattr(view_layer, _PASS_FLAGS[name], True)
        if "index" in passes:
            if index_object is None:
                raise ValueError("a silhouette mask needs an object")
            saved_index = (index_object, index_object.pass_index)
            index_object.pass_index = 1 + max((o.pass_index for o in scene.objects), default=0)
            index_value = index_object.pass_index
        with compat.scratch_compositor(scene, "nstudio sources") as tree:
            layers = tree.nodes.new("CompositorNodeRLayers")
            layers.scene, layers.layer = scene, view_layer.name
            _node, files = compat.file_output(tree.nodes, folder, "pass_",
                                              [(n, "VECTOR" if n == "normal" else "FLOAT") for n in passes],
                                              scene.frame_current)
            for name in passes:
                tree.links.new(layers.outputs[compat.render_layer_socket(_PASS_SOCKETS[name])], files[name][0])
            bpy.ops.render.render(scene=scene.name, layer=view_layer.name)
        result = {name: _read_pass(files[name][1], 3 if name == "normal" else 1) for name in passes}
        if "index" in passes:
            result["index_value"] = index_value
        return result
    finally:
        for (owner, attr), value in saved_scene.items():
            setattr(owner, attr, value)
        if saved_index is not None:
            saved_index[0].pass_index = saved_index[1]
        shutil.rmtree(folder, ignore_errors=True)


def _read_pass(path: str, channels: int) -> np.ndarray:
    if not os.path.exists(path):
        raise RuntimeError(f"the source render wrote no {os.path.basename(path)}")
    image = bpy.data.images.load(path)
    try:
        image.colorspace_settings.is_data = True   # raw values, no colour management
        width, height = image.size
        pixels = np.empty(width * height * image.channels, np.float32)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    data = gs.pass_image(pixels, width, height, len(pixels) // (width * height))
    return np.ascontiguousarray(data[..., 0] if channels == 1 else data[..., :channels])


def depth_source(scene, size=None) -> np.ndarray:
    """The depth ControlNet image of the camera's view: (H, W, 3) uint8, near white."""
    with render_size_override(scene, size):
        return gs.depth_control(render_passes(scene, ("depth",))["depth"])


def normal_source(scene, size=None) -> np.ndarray:
    """The normal ControlNet image (camera space, ``gs.NORMAL_AXIS_SIGNS``): (H, W, 3) uint8."""
    with render_size_override(scene, size):
        passes = render_passes(scene, ("depth", "normal"))
    covered = passes["depth"] < gs.EMPTY_DEPTH
    return gs.normal_control(passes["normal"], np.array(_require_camera(scene).matrix_world),
                             covered)


def mask_source(scene, obj, size=None) -> np.ndarray:
    """The inpaint mask of ``obj``'s silhouette seen by the camera: (H, W) uint8, 255 inside."""
    if obj is None:
        raise ValueError("choose the object whose silhouette is the mask")
    with render_size_override(scene, size):
        passes = render_passes(scene, ("index",), index_object=obj)
    return gs.index_mask(passes["index"], passes["index_value"])


def pose_points(scene, armature) -> tuple[np.ndarray, np.ndarray]:
    """The OpenPose-18 joints of an armature's current pose, world frame: ([18, 3], [18])."""
    if armature is None or armature.type != "ARMATURE":
        raise ValueError("choose an armature for the OpenPose source")
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = armature.evaluated_get(depsgraph)
    _preset, joint_bones = gs.match_rig([b.name for b in evaluated.pose.bones],
                                        canonical=_canonical_map(armature))
    world = np.array(evaluated.matrix_world)

    def to_world(v):
        return world[:3, :3] @ np.array(v) + world[:3, 3]

    heads = {bone: to_world(evaluated.pose.bones[bone].head) for bone in joint_bones.values()}
    head_tail = None
    if "head" in joint_bones:
        bone = evaluated.pose.bones[joint_bones["head"]]
        head_tail = (to_world(bone.head), to_world(bone.tail))
    return gs.pose_joints(heads, joint_bones, head_tail)


def _canonical_map(armature):
    """The motion work's automatic bone map of the rig ({canonical joint: bone}: presets, then
    names, then topology), or None where that module is not there."""
    try:
        from ..core.motion import bone_maps
    except ImportError:   # an add-on without the motion work: the name presets only
        return None
    bones = armature.data.bones
    names = [bone.name for bone in bones]
    index = {name: i for i, name in enumerate(names)}
    parents = [index[bone.parent.name] if bone.parent else -1 for bone in bones]
    heads = np.array([bone.head_local for bone in bones], np.float64).reshape(-1, 3)
    try:
        return bone_maps.canonical_names(names, parents, heads)
    except (ValueError, IndexError, KeyError):   # not a humanoid it can place
        return None


def project(scene, points: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """World points to (column, row) pixels of the scene camera at width x height."""
    camera = _require_camera(scene)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    render = scene.render
    projection = camera.calc_matrix_camera(depsgraph, x=width, y=height,
                                           scale_x=render.pixel_aspect_x,
                                           scale_y=render.pixel_aspect_y)
    return gs.project_points(points, np.array(camera.matrix_world.inverted()),
                             np.array(projection), width, height)


def openpose_source(scene, armature, size=None) -> np.ndarray:
    """The OpenPose image of ``armature`` seen by the camera: (H, W, 3) uint8."""
    width, height = size or render_size(scene)
    points, found = pose_points(scene, armature)
    pixels, in_front = project(scene, points, width, height)
    scale = max(width, height) / 512.0   # OpenPose's 4 px strokes at 512 px
    return gs.draw_openpose(pixels, found & in_front, width, height,
                            stick_width=max(1.0, 4.0 * scale), radius=max(1.0, 4.0 * scale))


def source_image(scene, kind: str, size=None, obj=None, image=None) -> np.ndarray:
    """One control image by kind (``gs.SOURCE_KINDS``); ``obj`` is the armature (OPENPOSE) or the
    masked object (MASK), ``image`` the Blender image (IMAGE)."""
    if kind == "DEPTH":
        return depth_source(scene, size)
    if kind == "NORMAL":
        return normal_source(scene, size)
    if kind == "OPENPOSE":
        return openpose_source(scene, obj, size)
    if kind == "MASK":
        return gs.mask_to_control(mask_source(scene, obj, size))
    if kind == "IMAGE":
        if image is None:
            raise ValueError("choose the control image")
        return image_to_srgb8(image)
    raise ValueError(f"unknown source kind {kind!r}")


# The panel's settings -> inputs -----------------------------------------------------------------

def controlnet_params(settings) -> dict:
    """``{"controlnets": [...]}`` for the enabled ControlNets, or {} (checked, bpy-free)."""
    nets = gs.controlnet_params(item.as_dict() for item in settings.controlnets)
    return {"controlnets": nets} if nets else {}


def scene_inputs(scene, settings, image=None) -> dict:
    """The inpaint mask and ControlNet inputs the settings ask for, made from the scene.

    Sources are rendered at the source image's size (img2img), else at the output size, so
    that every input of one request has one size. Settings are checked before any rendering.

    Returns:
        {"mask": (H, W) uint8} and/or {"control": [(H, W, 3) uint8, ...]}.
    """
    controlnet_params(settings)   # raises on a bad entry before anything renders
    inputs = {}
    if image is not None:
        height, width = image.shape[:2]
    else:
        width, height = output_size(scene, settings)
    if image is not None and settings.mask_object is not None:
        inputs["mask"] = mask_source(scene, settings.mask_object,
                                                      size=(width, height))
    elif image is not None and settings.mask_image is not None:
        inputs["mask"] = image_to_mask8(settings.mask_image)
    control = []
    for i, item in enumerate(settings.controlnets):
        if not item.enabled:
            continue
        try:
            pixels = source_image(scene, item.kind, size=(width, height),
                                                   obj=item.object, image=item.image)
        except ValueError as error:
            raise ValueError(f"ControlNet {i + 1}: {error}") from None
        if pixels.shape[:2] != (height, width):
            raise ValueError(f"ControlNet {i + 1}: its image is {pixels.shape[1]}x"
                             f"{pixels.shape[0]}, the output {width}x{height}")
        control.append(pixels)
    if control:
        inputs["control"] = control
    return inputs


class NSTUDIO_OT_generate_source(bpy.types.Operator):
    """Make a ControlNet source from the scene camera as a Blender image"""

    bl_idname = "nstudio.generate_source"
    bl_label = "Make Source"
    bl_options = {"REGISTER", "UNDO"}

    kind: EnumProperty(name="Source", items=[
        ("DEPTH", "Depth", "Inverse depth from the camera, near white"),
        ("NORMAL", "Normals", "Camera-space normals (ControlNet normalbae colours)"),
        ("MASK", "Silhouette", "The active object's silhouette (inpaint mask)"),
        ("OPENPOSE", "OpenPose", "The active armature's pose, OpenPose colours")])

    def execute(self, context):
        scene = context.scene
        try:
            pixels = source_image(scene, self.kind, obj=context.active_object)
        except (ValueError, RuntimeError) as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        if pixels.ndim == 2:
            pixels = gs.mask_to_control(pixels)
        name = f"Source {self.kind.title()}"
        land_image(name, pixels, seed=None)
        self.report({"INFO"}, f"'{name}' made from the camera '{scene.camera.name}'")
        return {"FINISHED"}


CLASSES = (NSTUDIO_OT_generate_source,)
