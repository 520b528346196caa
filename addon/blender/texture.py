"""Texture a mesh from views (`mesh.texture`): the Texture panel, its operator and result handler.

The operator gathers the active mesh (a UV map is made with Smart UV Project when it has none),
the views (cameras generated on a ring around the mesh, count and elevation, or the selected
camera objects) and the source of the colours:

- PHOTOS: each selected camera's first background image is its photo (the cameras' own
  placement and lens; the photos' size is the views' size);
- RENDER: another object (e.g. a high-poly or procedurally shaded original) rendered from the
  views with `addon.blender.capture` (the scene's engine settings, transparent film);
- PROMPT: nothing; the server generates the views from the prompt.

It submits through the add-on's one session (`addon.blender.session`) and returns; the result
handler turns the texture into an image ("<object>_nstudio_texture") and wires it into the
mesh's material: an Image Texture node feeding the Base Color of the material's Principled BSDF
(a new material only when the mesh has none), so the user's other nodes stay as they are.
"""

from __future__ import annotations

import logging

import bpy
import numpy as np
from bpy.props import EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from ..core import camera, capture_layout, handlers
from ..core import client as client_mod
from ..core import texture as core
from . import image_nodes, session
from .cameras import lens_of

log = logging.getLogger(__name__)

PROP_SEEN = "nstudio_seen"


# =============================================================================================
# Gathering (main thread, bulk foreach_get)
# =============================================================================================


def has_uv_map(obj) -> bool:
    return obj.type == "MESH" and len(obj.data.uv_layers) > 0


def ensure_uv_map(obj) -> bool:
    """Give `obj` a UV map with Smart UV Project when it has none. Returns True if one was made."""
    if has_uv_map(obj):
        return False
    view_layer = bpy.context.view_layer
    previous = view_layer.objects.active
    view_layer.objects.active = obj
    try:
        with bpy.context.temp_override(active_object=obj, object=obj, edit_object=obj,
                                       selected_objects=[obj], selected_editable_objects=[obj]):
            bpy.ops.object.mode_set(mode="EDIT")
            try:
                bpy.ops.mesh.select_all(action="SELECT")
                bpy.ops.uv.smart_project(island_margin=0.02)
            finally:
                bpy.ops.object.mode_set(mode="OBJECT")
    finally:
        view_layer.objects.active = previous
    if not has_uv_map(obj):
        raise ValueError(f"{obj.name}: Smart UV Project made no UV map")
    return True


def mesh_wire(obj, depsgraph=None) -> dict:
    """The Mesh map (world frame, per-corner UVs of the active UV map) of an evaluated mesh object.

    Raises:
        ValueError: not a mesh, no faces, or no UV map.
    """
    if obj is None or obj.type != "MESH":
        raise ValueError("select a mesh object to texture")
    if not has_uv_map(obj):
        raise ValueError(f"{obj.name} has no UV map")
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(depsgraph)
    mesh = ev.to_mesh()
    try:
        mesh.calc_loop_triangles()
        nv, nt, nl = len(mesh.vertices), len(mesh.loop_triangles), len(mesh.loops)
        if nt == 0:
            raise ValueError(f"{obj.name} has no faces")
        uv_layer = mesh.uv_layers.active
        if uv_layer is None:
            raise ValueError(f"{obj.name}: its modifiers removed the UV map")
        co = np.empty(nv * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
        tri_v = np.empty(nt * 3, dtype=np.int32)
        mesh.loop_triangles.foreach_get("vertices", tri_v)
        tri_l = np.empty(nt * 3, dtype=np.int32)
        mesh.loop_triangles.foreach_get("loops", tri_l)
        uv = np.empty(nl * 2, dtype=np.float32)
        uv_layer.data.foreach_get("uv", uv)
        matrix = np.array(ev.matrix_world, dtype=np.float64)
    finally:
        ev.to_mesh_clear()
    return core.mesh_payload(co, matrix, tri_v, tri_l, uv)


def ring_cameras(obj, count: int, elevation_deg: float, size: int, lens_mm: float = 50.0) -> dict:
    """Cameras on a ring around the object's world bounding box, looking at its centre."""
    corners = np.array([obj.matrix_world @ _vec(c) for c in obj.bound_box], dtype=np.float64)
    return capture_layout.capture_cameras(corners.min(0), corners.max(0), layout="ring", count=count,
                                        width=size, height=size, lens_mm=lens_mm,
                                        elevation_deg=elevation_deg)


def _vec(c):
    from mathutils import Vector

    return Vector(c)


def camera_objects_for(cams: dict, lens_mm: float) -> list:
    """Temporary Blender cameras matching a generated cameras map (for rendering a source object)."""
    objs = []
    lens = capture_layout.layout_lens(lens_mm)
    from mathutils import Matrix

    for i, mat in enumerate(np.asarray(cams["world_from_camera"])):
        data = bpy.data.cameras.new(f"nstudio_texture_view_{i}")
        data.lens, data.sensor_width, data.sensor_fit = lens.lens_mm, lens.sensor_width, lens.sensor_fit
        data.clip_start, data.clip_end = float(cams["near"]), float(cams["far"])
        obj = bpy.data.objects.new(data.name, data)
        obj.matrix_world = Matrix(mat.astype(np.float64).tolist())
        bpy.context.scene.collection.objects.link(obj)
        objs.append(obj)
    return objs


def photo_views(cameras) -> tuple[dict, np.ndarray]:
    """The selected cameras' photos (first background image each) and their cameras map.

    Raises:
        ValueError: a camera without a background image, or photos of different sizes.
    """
    images, size = [], None
    for cam in cameras:
        bg = next((b for b in cam.data.background_images if b.image is not None), None)
        if bg is None:
            raise ValueError(f"camera {cam.name!r} has no background image (its photo)")
        img = bg.image
        w, h = img.size
        if size is not None and (w, h) != size:
            raise ValueError(f"photos differ in size: {size[0]}x{size[1]} and {w}x{h} ({img.name})")
        size = (w, h)
        px = np.empty(w * h * img.channels, dtype=np.float32)
        img.pixels.foreach_get(px)
        images.append(core.image_rgb8(px, w, h))
    matrices = np.array([np.array(c.matrix_world, dtype=np.float64) for c in cameras])
    lenses = [lens_of(c.data) for c in cameras]
    cams = camera.lens_cameras_map(matrices, lenses, size[0], size[1],
                                    near=min(c.data.clip_start for c in cameras),
                                    far=max(c.data.clip_end for c in cameras))
    return cams, np.stack(images)


def render_views(source_obj, cameras: list, size: int) -> tuple[dict, np.ndarray]:
    """Render `source_obj` alone from `cameras` (Blender camera objects) with the scene's engine
    and samples (transparent film, straight-alpha linear RGBA)."""
    from . import capture as capture_mod

    engine = {"CYCLES": "CYCLES", "BLENDER_EEVEE": "EEVEE", "BLENDER_EEVEE_NEXT": "EEVEE",
              "BLENDER_WORKBENCH": "WORKBENCH"}.get(bpy.context.scene.render.engine, "CYCLES")
    scene = bpy.context.scene
    samples = scene.cycles.samples if engine == "CYCLES" else scene.eevee.taa_render_samples
    opts = capture_mod.CaptureOptions(width=size, height=size, engine=engine, points=0,
                                      samples=max(1, int(samples)))
    captured = capture_mod.capture([source_obj], opts, cameras=cameras)
    return captured["cameras"], captured["images"]


# =============================================================================================
# The result: an image and a material
# =============================================================================================


def apply_texture(obj, texture: np.ndarray):
    """Write the texture into the object's image and wire it into its material.

    Returns:
        The image.
    """
    size = texture.shape[0]
    name = f"{obj.name}_nstudio_texture"
    image = bpy.data.images.get(name)
    if image is not None and tuple(image.size) != (size, size):
        bpy.data.images.remove(image)
        image = None
    if image is None:
        image = bpy.data.images.new(name, size, size, alpha=True)
    image.colorspace_settings.name = "sRGB"
    image.pixels.foreach_set(core.texture_pixels(texture))
    image.update()
    image.pack()  # lives in the .blend: nothing to lose when Blender closes
    image[PROP_SEEN] = core.seen_fraction(texture)

    image_nodes.use_as_base_color(obj, image, f"{obj.name}_nstudio")
    return image


def on_texture_result(job, outputs: dict):
    obj = bpy.data.objects.get(job.target) if job.target else None
    if obj is None:
        log.warning("mesh.texture job %s: target object %r is gone; result not applied", job.key, job.target)
        return
    apply_texture(obj, np.asarray(outputs["texture"]))


# =============================================================================================
# Settings, operator, panel
# =============================================================================================


class NSTUDIO_PG_texture(bpy.types.PropertyGroup):
    cameras: EnumProperty(name="Views", items=(
        ("RING", "Ring Around", "Cameras generated on a ring around the mesh"),
        ("SELECTED", "Selected Cameras", "The selected camera objects")), default="RING")
    count: IntProperty(name="Count", default=8, min=1, max=256)
    elevation: FloatProperty(name="Elevation", default=20.0, min=-89.0, max=89.0, subtype="NONE",
                             description="Elevation of the ring, degrees")
    resolution: IntProperty(name="View Size", default=512, min=64, max=4096)
    source: EnumProperty(name="Source", items=(
        ("PHOTOS", "Photos", "Each selected camera's background image"),
        ("RENDER", "Render of Object", "Render another object from the views"),
        ("PROMPT", "Prompt", "Generate the views on the server")), default="RENDER")
    source_object: PointerProperty(name="Object", type=bpy.types.Object)
    prompt: StringProperty(name="Prompt", default="")
    model: StringProperty(name="Model", default="", description="Inpainting model (default: the server's)")
    seed: IntProperty(name="Seed", default=0, min=0)
    texture_size: IntProperty(name="Texture Size", default=1024, min=16, max=8192)


def gather(context, settings) -> tuple[dict, dict, object]:
    """(params, inputs, target object) of a `mesh.texture` submit from the panel's settings."""
    obj = context.active_object
    if obj is None or obj.type != "MESH":
        raise ValueError("select the mesh to texture (active object)")
    ensure_uv_map(obj)
    mesh = mesh_wire(obj)
    params = core.texture_params(settings.texture_size, settings.source, settings.prompt,
                                 settings.model, settings.seed)
    selected = [o for o in context.selected_objects if o.type == "CAMERA"]
    if settings.source == "PHOTOS":
        if not selected:
            raise ValueError("select the cameras whose background images are the photos")
        cams, images = photo_views(selected)
        return params, {"mesh": mesh, "cameras": cams, "images": images}, obj
    temporary = []
    if settings.cameras == "SELECTED":
        if not selected:
            raise ValueError("select camera objects, or use a ring of views")
        cam_objs = selected
        matrices = np.array([np.array(c.matrix_world, dtype=np.float64) for c in selected])
        cams = camera.lens_cameras_map(
            matrices, [lens_of(c.data) for c in selected], settings.resolution,
            settings.resolution, near=min(c.data.clip_start for c in selected),
            far=max(c.data.clip_end for c in selected))
    else:
        cams = ring_cameras(obj, settings.count, settings.elevation, settings.resolution)
        cam_objs = None
    inputs = {"mesh": mesh, "cameras": cams}
    if settings.source == "RENDER":
        src = settings.source_object
        if src is None or src == obj:
            raise ValueError("choose the object to render (not the mesh being textured)")
        try:
            if cam_objs is None:
                cam_objs = temporary = camera_objects_for(cams, 50.0)
            cams, images = render_views(src, cam_objs, settings.resolution)
        finally:
            for o in temporary:
                data = o.data
                bpy.data.objects.remove(o)
                bpy.data.cameras.remove(data)
        inputs = {"mesh": mesh, "cameras": cams, "images": images}
    return params, inputs, obj


class NSTUDIO_OT_texture_mesh(bpy.types.Operator):
    """Texture the active mesh from photos, a render of another object or generated views"""

    bl_idname = "nstudio.texture_mesh"
    bl_label = "Texture Mesh"
    bl_options = {"REGISTER"}

    def execute(self, context):
        settings = context.scene.nstudio_texture
        try:
            live = session.require_pipeline(core.PIPELINE)
            params, inputs, obj = gather(context, settings)
            live.submit(context.scene, core.PIPELINE, params=params, inputs=inputs, target=obj.name)
        except (RuntimeError, ValueError, client_mod.ClientError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"texturing {obj.name} from {len(inputs['cameras']['world_from_camera'])} views")
        return {"FINISHED"}


class NSTUDIO_PT_texture(bpy.types.Panel):
    bl_label = "Texture"
    bl_idname = "NSTUDIO_PT_texture"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Neural Studio"

    def draw(self, context):
        settings = context.scene.nstudio_texture
        layout = self.layout
        layout.prop(settings, "source")
        if settings.source == "RENDER":
            layout.prop(settings, "source_object")
        elif settings.source == "PROMPT":
            layout.prop(settings, "prompt")
            layout.prop(settings, "model")
            layout.prop(settings, "seed")
        if settings.source != "PHOTOS":
            layout.prop(settings, "cameras")
            if settings.cameras == "RING":
                row = layout.row(align=True)
                row.prop(settings, "count")
                row.prop(settings, "elevation")
            layout.prop(settings, "resolution")
        layout.prop(settings, "texture_size")
        layout.operator(NSTUDIO_OT_texture_mesh.bl_idname, icon="TEXTURE")
        obj = context.active_object
        image = bpy.data.images.get(f"{obj.name}_nstudio_texture") if obj is not None else None
        if image is not None and PROP_SEEN in image:
            layout.label(text=f"{100 * image[PROP_SEEN]:.0f} % of the texels seen")


CLASSES = (NSTUDIO_PG_texture, NSTUDIO_OT_texture_mesh, NSTUDIO_PT_texture)


def register() -> None:
    bpy.types.Scene.nstudio_texture = PointerProperty(type=NSTUDIO_PG_texture)
    handlers.register_result_handler(core.PIPELINE, on_texture_result)


def unregister() -> None:
    handlers.unregister_result_handler(core.PIPELINE)
    del bpy.types.Scene.nstudio_texture
