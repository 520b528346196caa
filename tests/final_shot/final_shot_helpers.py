"""Scene building and image reading shared by the final-shot tests."""

from __future__ import annotations

import math

import bpy
import numpy as np

from addon.blender import compat

SH_C0 = 0.28209479177387814
WIDTH, HEIGHT = 64, 48


def sh0_for(rgb) -> np.ndarray:
    """sh0 whose degree-0 colour (C0 * sh0 + 0.5) is ``rgb``."""
    return ((np.asarray(rgb, np.float32) - 0.5) / SH_C0).astype(np.float32)


def add_camera(scene, location=(0.0, -6.0, 0.0), lens=35.0):
    """A camera looking along +Y (world), made the scene camera."""
    data = bpy.data.cameras.new("Test Camera")
    data.lens = lens
    cam = bpy.data.objects.new("Test Camera", data)
    cam.location = location
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene.collection.objects.link(cam)
    scene.camera = cam
    return cam


def set_resolution(scene, width=WIDTH, height=HEIGHT):
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"


def render_exr(scene, path, animation=False):
    """Render ``scene`` with F12's operator to an OpenEXR (linear, RGBA) and return the path."""
    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.image_settings.color_depth = "32"
    scene.render.filepath = str(path)
    scene.render.use_file_extension = True
    with bpy.context.temp_override(scene=scene):
        if animation:
            bpy.ops.render.render(animation=True, scene=scene.name)
        else:
            bpy.ops.render.render(write_still=True, scene=scene.name)


def read_exr(path) -> np.ndarray:
    """An EXR file's pixels, row 0 at the top. [H, W, 4]"""
    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(px)
    finally:
        bpy.data.images.remove(img)
    return px.reshape(h, w, 4)[::-1]


def project(point, cam_obj, scene):
    """(row, column) of the pixel a world point falls into, through Blender's own projection."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    ndc = world_to_camera_view(scene, cam_obj, Vector(point))
    return int((1.0 - ndc.y) * HEIGHT), int(ndc.x * WIDTH)


def add_emissive_box(scene, name, location, size, colour):
    """A box mesh with an emission material of ``colour`` (renders exactly that colour)."""
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=location)
    obj = bpy.context.active_object
    obj.name = name
    obj.scale = size
    mat = bpy.data.materials.new(name)
    tree = compat.node_tree(mat)
    nodes = tree.nodes
    nodes.clear()
    emit = nodes.new("ShaderNodeEmission")
    emit.inputs["Color"].default_value = (*colour, 1.0)
    emit.inputs["Strength"].default_value = 1.0
    out = nodes.new("ShaderNodeOutputMaterial")
    tree.links.new(emit.outputs[0], out.inputs["Surface"])
    obj.data.materials.append(mat)
    return obj


def black_world(scene):
    world = bpy.data.worlds.new("Black")
    compat.node_tree(world).nodes["Background"].inputs["Color"].default_value = (0, 0, 0, 1)
    scene.world = world


def use_cycles(scene, samples=4):
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False
