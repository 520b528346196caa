"""Generate panel: ``image.generate`` from the scene (bpy layer; maths in core/generate_math.py).

- Settings live on ``scene.nstudio_generate`` (model, prompt, negative prompt, steps, guidance,
  seed with "New Seed", size defaulting to the render resolution, scheduler, img2img source).
- "Generate" submits the job; with the source "Render" the current render result (rendered
  first when there is none) is sent as ``inputs.image`` (img2img); with "Image" any Blender
  image (e.g. the one open in the Image Editor); a mask image painted in the Image Editor makes
  it inpaint; LoRAs are typed as ``name:scale, ...``.
- The result lands as packed Blender images, one per seed ("Generated <seed>"); "Use as
  Texture" puts one on the active object's material (an Image Texture into Base Color).
"""

from __future__ import annotations

import logging
import os
import tempfile

import bpy
import numpy as np
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

from ..core import client as client_mod
from ..core import generate_math, handlers
from ..core import generate_animation as anim_math
from . import generate_animation, generate_sources, image_nodes, session
from .generate_images import (PIPELINE, PROP_SEED, image_to_mask8, image_to_srgb8,  # noqa: F401
                              land_image, output_size)
from .generate_sources import controlnet_params, scene_inputs  # noqa: F401

log = logging.getLogger(__name__)

_SCHEDULERS = ("", "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpmpp_2m",
               "dpmpp_2m_karras", "unipc", "flow_euler", "flow_heun")


_SOURCE_ITEMS = [
    ("DEPTH", "Depth", "Inverse depth rendered from the scene camera (near white)"),
    ("NORMAL", "Normals", "Camera-space normals rendered from the scene camera (normalbae colours)"),
    ("OPENPOSE", "OpenPose", "An armature's pose seen by the scene camera"),
    ("MASK", "Silhouette", "An object's silhouette seen by the scene camera"),
    ("IMAGE", "Image", "A Blender image (e.g. a canny edge map)"),
]


class NSTUDIO_PG_generate_controlnet(bpy.types.PropertyGroup):
    """One ControlNet of the Generate panel: its model, what conditions it and how strongly."""

    enabled: BoolProperty(name="Use", default=True)
    model: StringProperty(name="ControlNet", description="A ControlNet name the server lists, a "
                          "server-side diffusers folder or a cached hub id")
    kind: EnumProperty(name="Source", items=_SOURCE_ITEMS)
    scale: FloatProperty(name="Scale", default=1.0, min=-10.0, max=10.0, soft_min=0.0,
                         soft_max=2.0, description="controlnet_conditioning_scale")
    image: PointerProperty(name="Image", type=bpy.types.Image)
    object: PointerProperty(name="Object", type=bpy.types.Object,
                            description="OpenPose: the armature; Silhouette: the object")

    def as_dict(self) -> dict:
        return {"enabled": self.enabled, "model": self.model, "kind": self.kind,
                "scale": self.scale}


class NSTUDIO_PG_generate(bpy.types.PropertyGroup):
    model: StringProperty(name="Model", description="A model name the server lists, a "
                          "server-side diffusers folder or .safetensors file, or a cached hub "
                          "id; empty: the server's default")
    prompt: StringProperty(name="Prompt", description="What to generate")
    negative_prompt: StringProperty(name="Negative", description="What to avoid")
    steps: IntProperty(name="Steps", default=30, min=1, max=500)
    guidance_scale: FloatProperty(name="Guidance", default=7.0, min=0.0, max=50.0)
    seed: IntProperty(name="Seed", default=0, min=0, description="Same seed, same image")
    num_images: IntProperty(name="Images", default=1, min=1, max=16)
    use_render_size: BoolProperty(name="Render Size", default=True,
                                  description="Use the scene's render resolution")
    width: IntProperty(name="Width", default=512, min=8, max=4096, step=8)
    height: IntProperty(name="Height", default=512, min=8, max=4096, step=8)
    scheduler: EnumProperty(name="Scheduler", items=[
        (name, name or "Model's own", "") for name in _SCHEDULERS])
    source: EnumProperty(name="Source", items=[
        ("NONE", "Text", "Text to image"),
        ("RENDER", "Render", "img2img from the current render result"),
        ("IMAGE", "Image", "img2img from a Blender image")])
    source_image: PointerProperty(name="Image", type=bpy.types.Image)
    strength: FloatProperty(name="Strength", default=0.75, min=0.0, max=1.0,
                            description="img2img: how much of the source is repainted")
    mask_image: PointerProperty(name="Mask", type=bpy.types.Image,
                                description="Inpaint: repaint where this image is light "
                                "(paint it white over black in the Image Editor); same size "
                                "as the source")
    mask_object: PointerProperty(name="Mask Object", type=bpy.types.Object,
                                 description="Inpaint: repaint this object's silhouette as the "
                                 "scene camera sees it (instead of a painted mask)")
    loras: StringProperty(name="LoRAs", description="name:scale, name:scale ... (names, "
                          "server-side paths or hub ids)")
    controlnets: CollectionProperty(type=NSTUDIO_PG_generate_controlnet)
    animation_output: StringProperty(name="Animation Output", subtype="DIR_PATH",
                                     default="//generated/", description="Where Generate "
                                     "Animation writes generated_<frame>.png")
    animation_done: IntProperty(name="Frames Done", default=0)
    animation_total: IntProperty(name="Frames", default=0)
    animation_state: StringProperty(name="Animation", default="")

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in (
            "model", "prompt", "negative_prompt", "steps", "guidance_scale", "seed",
            "num_images", "scheduler", "strength", "loras")}


# Sources ----------------------------------------------------------------------------------------

def render_result_srgb8(scene) -> np.ndarray:
    """The current render result as a wire image; renders the scene first when there is none.

    The Render Result image has no readable pixels, so it is saved once to a temporary PNG
    (the scene's view transform applied, as an artist sees it) and read back.
    """
    result = bpy.data.images.get("Render Result")
    path = os.path.join(tempfile.mkdtemp(prefix="nstudio-render-"), "render.png")
    settings = scene.render.image_settings
    saved = (settings.file_format, settings.color_mode)
    settings.file_format, settings.color_mode = "PNG", "RGB"
    try:
        try:
            if result is None:
                raise RuntimeError("no render result")
            result.save_render(filepath=path, scene=scene)
        except RuntimeError:
            bpy.ops.render.render(scene=scene.name)
            bpy.data.images["Render Result"].save_render(filepath=path, scene=scene)
    finally:
        settings.file_format, settings.color_mode = saved
    loaded = bpy.data.images.load(path)
    try:
        return image_to_srgb8(loaded)
    finally:
        bpy.data.images.remove(loaded)
        os.remove(path)
        os.rmdir(os.path.dirname(path))


# Results ----------------------------------------------------------------------------------------

def on_generate_result(job, outputs: dict):
    """The result: one packed Blender image per seed, in bounded steps (one image per step);
    a frame of Generate Animation is written to its image sequence instead."""
    if anim_math.parse_target(job.target or "") is not None:
        return generate_animation.write_frame(job, outputs)
    images, seeds = np.asarray(outputs["images"]), np.asarray(outputs["seeds"])
    return _land_images(job, images, seeds)


def _land_images(job, images: np.ndarray, seeds: np.ndarray):
    names = []
    for name, pixels, seed in zip(generate_math.image_names("Generated", seeds), images, seeds):
        names.append(land_image(name, pixels, int(seed)).name)
        yield name
    job.target = names[0] if names else job.target
    _show_in_image_editor(names[0] if names else None)
    yield "done"


def _show_in_image_editor(name) -> None:
    image = bpy.data.images.get(name) if name else None
    screen = getattr(bpy.context, "screen", None)
    if image is None or screen is None:
        return
    for area in screen.areas:
        if area.type == "IMAGE_EDITOR":
            area.spaces.active.image = image
            return


def use_as_texture(obj, image):
    """Put ``image`` on ``obj``'s first material (created when missing) as its Base Color.

    Returns:
        The material.
    """
    if obj is None or obj.type != "MESH":
        raise ValueError("select a mesh object to texture")
    return image_nodes.use_as_base_color(obj, image, f"{obj.name} Generated")


def use_as_camera_background(camera_obj, image):
    """Show ``image`` behind the camera's view (``Camera.background_images``); a generated image
    already there is replaced, others are kept. Returns the background image entry."""
    if camera_obj is None or camera_obj.type != "CAMERA":
        raise ValueError("the scene has no camera to put the image behind")
    camera = camera_obj.data
    entry = next((bg for bg in camera.background_images
                  if bg.image is not None and PROP_SEED in bg.image), None)
    if entry is None:
        entry = camera.background_images.new()
    entry.source = "IMAGE"
    entry.image = image
    entry.alpha = 1.0
    entry.display_depth = "BACK"
    camera.show_background_images = True
    return entry


def use_as_world_background(scene, image):
    """Light and show the scene with ``image`` as its world: an Environment Texture into the
    world's Background. Returns the world."""
    return image_nodes.use_as_world(scene, image)


# Operators --------------------------------------------------------------------------------------

def start_generate(context):
    """Submit ``image.generate`` with the scene's settings; returns the job record."""
    live = session.current()
    if live is None or not live.client.connected:
        raise RuntimeError("not connected to a Neural Studio server: press Connect in the "
                           "Neural Studio panel")
    info = ((live.client.welcome or {}).get("pipelines") or {}).get(PIPELINE)
    if info is None or not info.get("available", False):
        raise RuntimeError(f"'{PIPELINE}' cannot run on the server: "
                           f"{(info or {}).get('reason') or 'the server does not have it'}")
    scene = context.scene
    settings = scene.nstudio_generate
    inputs = {}
    if settings.source == "RENDER":
        inputs["image"] = render_result_srgb8(scene)
    elif settings.source == "IMAGE":
        if settings.source_image is None:
            raise ValueError("choose a source image")
        inputs["image"] = image_to_srgb8(settings.source_image)
    inputs.update(scene_inputs(scene, settings, inputs.get("image")))
    width, height = output_size(scene, settings)
    params = generate_math.generate_params(settings.as_dict(), width, height, "image" in inputs)
    params.update(controlnet_params(settings))
    return live.submit(scene, PIPELINE, params=params, inputs=inputs)


class NSTUDIO_OT_generate(bpy.types.Operator):
    """Generate images on the server from the prompt (and the source image)"""

    bl_idname = "nstudio.generate"
    bl_label = "Generate"

    def execute(self, context):
        try:
            start_generate(context)
        except (RuntimeError, ValueError, client_mod.ClientError) as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        self.report({"INFO"}, "image.generate submitted")
        return {"FINISHED"}


class NSTUDIO_OT_generate_new_seed(bpy.types.Operator):
    """Draw a new random seed"""

    bl_idname = "nstudio.generate_new_seed"
    bl_label = "New Seed"

    def execute(self, context):
        context.scene.nstudio_generate.seed = generate_math.new_seed()
        return {"FINISHED"}


class NSTUDIO_OT_generate_use_as_texture(bpy.types.Operator):
    """Use a generated image as the active object's Base Color texture"""

    bl_idname = "nstudio.generate_use_as_texture"
    bl_label = "Use as Texture"
    bl_options = {"REGISTER", "UNDO"}

    image: StringProperty(name="Image")

    def execute(self, context):
        image = bpy.data.images.get(self.image)
        if image is None:
            self.report({"ERROR"}, f"no image '{self.image}'")
            return {"CANCELLED"}
        try:
            material = use_as_texture(context.active_object, image)
        except ValueError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        self.report({"INFO"}, f"'{image.name}' is the Base Color of '{material.name}'")
        return {"FINISHED"}


class NSTUDIO_OT_generate_use_as(bpy.types.Operator):
    """Use a generated image as the scene camera's background or as the world background"""

    bl_idname = "nstudio.generate_use_as"
    bl_label = "Use Generated Image"
    bl_options = {"REGISTER", "UNDO"}

    image: StringProperty(name="Image")
    target: EnumProperty(name="As", items=[
        ("CAMERA", "Camera Background", "Behind the scene camera's view"),
        ("WORLD", "World Background", "An Environment Texture lighting the scene")])

    def execute(self, context):
        image = bpy.data.images.get(self.image)
        if image is None:
            self.report({"ERROR"}, f"no image '{self.image}'")
            return {"CANCELLED"}
        try:
            if self.target == "CAMERA":
                use_as_camera_background(context.scene.camera, image)
                where = f"the background of camera '{context.scene.camera.name}'"
            else:
                where = f"world '{use_as_world_background(context.scene, image).name}'"
        except ValueError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        self.report({"INFO"}, f"'{image.name}' is {where}")
        return {"FINISHED"}


class NSTUDIO_OT_generate_controlnet_add(bpy.types.Operator):
    """Add a ControlNet to the Generate settings"""

    bl_idname = "nstudio.generate_controlnet_add"
    bl_label = "Add ControlNet"
    bl_options = {"REGISTER", "UNDO"}

    kind: EnumProperty(name="Source", items=_SOURCE_ITEMS)

    def execute(self, context):
        item = context.scene.nstudio_generate.controlnets.add()
        item.kind = self.kind
        active = context.active_object
        if active is not None and (self.kind == "OPENPOSE") == (active.type == "ARMATURE"):
            item.object = active
        return {"FINISHED"}


class NSTUDIO_OT_generate_controlnet_remove(bpy.types.Operator):
    """Remove a ControlNet from the Generate settings"""

    bl_idname = "nstudio.generate_controlnet_remove"
    bl_label = "Remove ControlNet"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(name="Index", default=0, min=0)

    def execute(self, context):
        nets = context.scene.nstudio_generate.controlnets
        if self.index >= len(nets):
            self.report({"ERROR"}, f"no ControlNet {self.index + 1}")
            return {"CANCELLED"}
        nets.remove(self.index)
        return {"FINISHED"}


class NSTUDIO_PT_generate(bpy.types.Panel):
    bl_label = "Generate"
    bl_idname = "NSTUDIO_PT_generate"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Neural Studio"

    def draw(self, context):
        settings = context.scene.nstudio_generate
        layout = self.layout
        layout.prop(settings, "model")
        layout.prop(settings, "prompt")
        layout.prop(settings, "negative_prompt")
        row = layout.row(align=True)
        row.prop(settings, "steps")
        row.prop(settings, "guidance_scale")
        row = layout.row(align=True)
        row.prop(settings, "seed")
        row.operator(NSTUDIO_OT_generate_new_seed.bl_idname, text="", icon="FILE_REFRESH")
        layout.prop(settings, "num_images")
        layout.prop(settings, "use_render_size")
        if not settings.use_render_size:
            row = layout.row(align=True)
            row.prop(settings, "width")
            row.prop(settings, "height")
        layout.prop(settings, "scheduler")
        layout.prop(settings, "source", expand=True)
        if settings.source == "IMAGE":
            layout.template_ID(settings, "source_image", open="image.open")
        if settings.source != "NONE":
            layout.prop(settings, "strength")
            layout.template_ID(settings, "mask_image", open="image.open")
            layout.prop(settings, "mask_object")
        layout.prop(settings, "loras")
        box = layout.box()
        row = box.row()
        row.label(text="ControlNets")
        row.operator_menu_enum(NSTUDIO_OT_generate_controlnet_add.bl_idname, "kind", text="",
                               icon="ADD")
        for i, item in enumerate(settings.controlnets):
            row = box.row(align=True)
            row.prop(item, "enabled", text="")
            row.prop(item, "model", text="")
            row.prop(item, "kind", text="")
            row.prop(item, "scale", text="")
            op = row.operator(NSTUDIO_OT_generate_controlnet_remove.bl_idname, text="",
                              icon="X")
            op.index = i
            if item.kind == "IMAGE":
                box.template_ID(item, "image", open="image.open")
            elif item.kind in ("OPENPOSE", "MASK"):
                box.prop(item, "object")
        row = layout.row(align=True)
        for kind, label in (("DEPTH", "Depth"), ("NORMAL", "Normals"), ("MASK", "Silhouette"),
                            ("OPENPOSE", "Pose")):
            row.operator(generate_sources.NSTUDIO_OT_generate_source.bl_idname,
                         text=label).kind = kind
        layout.operator(NSTUDIO_OT_generate.bl_idname, icon="IMAGE")
        generated = [image for image in bpy.data.images if PROP_SEED in image][-4:]
        for image in generated:
            row = layout.row()
            row.label(text=image.name, icon="IMAGE_DATA")
            op = row.operator(NSTUDIO_OT_generate_use_as_texture.bl_idname, text="",
                              icon="MATERIAL")
            op.image = image.name
            for target, icon in (("CAMERA", "CAMERA_DATA"), ("WORLD", "WORLD")):
                op = row.operator(NSTUDIO_OT_generate_use_as.bl_idname, text="", icon=icon)
                op.image, op.target = image.name, target
        box = layout.box()
        box.label(text="Animation (img2img per frame, fixed seed)")
        box.prop(settings, "animation_output")
        run = generate_animation.current_run()
        if run is not None and not run.finished:
            box.progress(factor=settings.animation_done / max(1, settings.animation_total),
                         text=f"{settings.animation_done}/{settings.animation_total} frames")
            box.operator(generate_animation.NSTUDIO_OT_generate_animation_cancel.bl_idname,
                         icon="CANCEL")
        else:
            if settings.animation_state:
                box.label(text=settings.animation_state)
            box.operator(generate_animation.NSTUDIO_OT_generate_animation.bl_idname,
                         icon="RENDER_ANIMATION")


CLASSES = (NSTUDIO_PG_generate_controlnet, NSTUDIO_PG_generate, NSTUDIO_OT_generate,
           NSTUDIO_OT_generate_new_seed, NSTUDIO_OT_generate_use_as_texture,
           NSTUDIO_OT_generate_use_as,
           NSTUDIO_OT_generate_controlnet_add, NSTUDIO_OT_generate_controlnet_remove,
           NSTUDIO_PT_generate)


def register() -> None:
    bpy.types.Scene.nstudio_generate = PointerProperty(type=NSTUDIO_PG_generate)
    handlers.register_result_handler(PIPELINE, on_generate_result)


def unregister() -> None:
    handlers.unregister_result_handler(PIPELINE)
    del bpy.types.Scene.nstudio_generate
