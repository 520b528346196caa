"""Selecting and editing Gaussians in Blender: select by box, sphere, colour or opacity, then
delete, separate into a new object, recolour (the SH DC term, view dependence kept) or transform
the selection.

The selection is the mesh's own vertex selection (the ``.select_vert`` attribute), so Edit Mode
shows and edits it too. Every operator rewrites the Gaussians in the object's mesh data and is
registered with UNDO: Blender's undo restores the mesh, so every edit is undoable; export writes
exactly what the mesh holds. The maths is ``addon.core.splat_edit`` (numpy); a painted mask
traced through the rasterizer is the server's ``splat.select`` (its ``selected`` output is a
mask for :func:`set_selection`).
"""

from __future__ import annotations


import bpy
import numpy as np
from bpy.props import EnumProperty, FloatProperty, FloatVectorProperty, StringProperty

from ..core import handlers, splat_edit

SELECT_ATTRIBUTE = ".select_vert"
_ACTIONS = (("SET", "Set", "Replace the selection"), ("ADD", "Add", "Add to the selection"),
            ("SUBTRACT", "Subtract", "Remove from the selection"))


def get_selection(obj) -> np.ndarray:
    """The object's selected Gaussians (its mesh's vertex selection). bool [N]"""
    n = len(obj.data.vertices)
    attr = obj.data.attributes.get(SELECT_ATTRIBUTE)
    if attr is None:
        return np.zeros(n, bool)
    out = np.zeros(n, bool)
    attr.data.foreach_get("value", out)
    return out


def set_selection(obj, mask: np.ndarray) -> None:
    """Make ``mask`` [N] the object's vertex selection."""
    mesh = obj.data
    mask = np.ascontiguousarray(mask, bool)
    if mask.shape != (len(mesh.vertices),):
        raise ValueError(f"selection has {mask.shape[0]} entries for {len(mesh.vertices)} Gaussians")
    attr = mesh.attributes.get(SELECT_ATTRIBUTE) or mesh.attributes.new(SELECT_ATTRIBUTE, "BOOLEAN", "POINT")
    attr.data.foreach_set("value", mask)
    mesh.update()


def _gaussian_poll(context) -> bool:
    from .importers.gaussians import is_gaussian_object

    return is_gaussian_object(context.active_object)


class NSTUDIO_OT_splat_select(bpy.types.Operator):
    """Select Gaussians of the active object by box, sphere, colour or opacity (object space)"""

    bl_idname = "nstudio.splat_select"
    bl_label = "Select Gaussians"
    bl_options = {"REGISTER", "UNDO"}

    mode: EnumProperty(name="By", items=(("BOX", "Box", ""), ("SPHERE", "Sphere", ""),
                                         ("COLOUR", "Colour", ""), ("OPACITY", "Opacity", "")), default="BOX")
    action: EnumProperty(name="Action", items=_ACTIONS, default="SET")
    box_min: FloatVectorProperty(name="Box Min", size=3, default=(-1.0, -1.0, -1.0))
    box_max: FloatVectorProperty(name="Box Max", size=3, default=(1.0, 1.0, 1.0))
    centre: FloatVectorProperty(name="Centre", size=3, default=(0.0, 0.0, 0.0))
    radius: FloatProperty(name="Radius", default=1.0, min=0.0)
    colour: FloatVectorProperty(name="Colour", subtype="COLOR", size=3, min=0.0, max=1.0, default=(1.0, 1.0, 1.0))
    tolerance: FloatProperty(name="Tolerance", default=0.1, min=0.0)
    opacity_min: FloatProperty(name="Opacity Min", default=0.0, min=0.0, max=1.0)
    opacity_max: FloatProperty(name="Opacity Max", default=0.05, min=0.0, max=1.0)

    @classmethod
    def poll(cls, context):
        return _gaussian_poll(context)

    def execute(self, context):
        from .importers.gaussians import read_gaussians

        obj = context.active_object
        g = read_gaussians(obj)
        if self.mode == "BOX":
            new = splat_edit.select_box(g["means"], self.box_min, self.box_max)
        elif self.mode == "SPHERE":
            new = splat_edit.select_sphere(g["means"], self.centre, self.radius)
        elif self.mode == "COLOUR":
            new = splat_edit.select_colour(g["sh0"], self.colour, self.tolerance)
        else:
            new = splat_edit.select_opacity(g["opacities"], self.opacity_min, self.opacity_max)
        old = get_selection(obj)
        sel = {"SET": new, "ADD": old | new, "SUBTRACT": old & ~new}[self.action]
        set_selection(obj, sel)
        self.report({"INFO"}, f"{int(sel.sum()):,} of {len(sel):,} Gaussians selected")
        return {"FINISHED"}


class _EditSelected:
    """Shared poll and plumbing of the edit operators."""

    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return _gaussian_poll(context)

    def _selection(self, obj):
        sel = get_selection(obj)
        if not sel.any():
            self.report({"WARNING"}, "no Gaussians selected")
        return sel

    @staticmethod
    def _write(obj, gaussians: dict) -> None:
        from .importers.gaussians import update_gaussian_object

        update_gaussian_object(obj, gaussians)


class NSTUDIO_OT_splat_delete_selected(_EditSelected, bpy.types.Operator):
    """Delete the selected Gaussians of the active object"""

    bl_idname = "nstudio.splat_delete_selected"
    bl_label = "Delete Selected Gaussians"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        from .importers.gaussians import read_gaussians

        obj = context.active_object
        sel = self._selection(obj)
        if not sel.any():
            return {"CANCELLED"}
        self._write(obj, splat_edit.delete(read_gaussians(obj), sel))
        set_selection(obj, np.zeros(len(obj.data.vertices), bool))
        self.report({"INFO"}, f"deleted {int(sel.sum()):,} Gaussians")
        return {"FINISHED"}


class NSTUDIO_OT_splat_separate_selected(_EditSelected, bpy.types.Operator):
    """Move the selected Gaussians into a new Gaussian object (same transform and colour space)"""

    bl_idname = "nstudio.splat_separate_selected"
    bl_label = "Separate Selected Gaussians"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        from .importers.gaussians import PROP_COLOR_SPACE, create_gaussian_object, read_gaussians

        obj = context.active_object
        sel = self._selection(obj)
        if not sel.any():
            return {"CANCELLED"}
        kept, part = splat_edit.separate(read_gaussians(obj), sel)
        self._write(obj, kept)
        set_selection(obj, np.zeros(len(obj.data.vertices), bool))
        collection = obj.users_collection[0] if obj.users_collection else context.scene.collection
        new = create_gaussian_object(f"{obj.name} Part", part, collection=collection,
                                     color_space=obj.get(PROP_COLOR_SPACE, "linear"))
        new.matrix_world = obj.matrix_world.copy()
        self.report({"INFO"}, f"separated {int(sel.sum()):,} Gaussians into '{new.name}'")
        return {"FINISHED"}


class NSTUDIO_OT_splat_recolour_selected(_EditSelected, bpy.types.Operator):
    """Recolour the selected Gaussians by their SH DC term (their view dependence is kept)"""

    bl_idname = "nstudio.splat_recolour_selected"
    bl_label = "Recolour Selected Gaussians"
    bl_options = {"REGISTER", "UNDO"}

    mode: EnumProperty(name="Mode", items=(("replace", "Replace", "Move the base colour to the colour"),
                                           ("shift", "Shift", "Add the colour (may be negative) to the base colour")),
                       default="replace")
    colour: FloatVectorProperty(name="Colour", size=3, default=(1.0, 0.0, 0.0), soft_min=-1.0, soft_max=1.0)
    strength: FloatProperty(name="Strength", default=1.0, min=0.0, max=1.0)

    def execute(self, context):
        from .importers.gaussians import read_gaussians

        obj = context.active_object
        sel = self._selection(obj)
        if not sel.any():
            return {"CANCELLED"}
        self._write(obj, splat_edit.recolour(read_gaussians(obj), sel, self.colour, self.mode, self.strength))
        set_selection(obj, sel)
        return {"FINISHED"}


class NSTUDIO_OT_splat_transform_selected(_EditSelected, bpy.types.Operator):
    """Move, rotate and uniformly scale the selected Gaussians (object space, about the origin)"""

    bl_idname = "nstudio.splat_transform_selected"
    bl_label = "Transform Selected Gaussians"
    bl_options = {"REGISTER", "UNDO"}

    translate: FloatVectorProperty(name="Move", size=3, subtype="TRANSLATION", default=(0.0, 0.0, 0.0))
    rotate: FloatVectorProperty(name="Rotate", size=3, subtype="EULER", default=(0.0, 0.0, 0.0))
    scale: FloatProperty(name="Scale", default=1.0, min=1e-4)

    def execute(self, context):
        from mathutils import Euler, Matrix

        from .importers.gaussians import read_gaussians

        obj = context.active_object
        sel = self._selection(obj)
        if not sel.any():
            return {"CANCELLED"}
        m = (Matrix.Translation(self.translate) @ Euler(self.rotate).to_matrix().to_4x4()
             @ Matrix.Scale(self.scale, 4))
        self._write(obj, splat_edit.transform(read_gaussians(obj), sel, np.array(m, dtype=np.float64)))
        set_selection(obj, sel)
        return {"FINISHED"}


SELECT_PIPELINE = "splat.select"


def image_mask(image) -> np.ndarray:
    """A painted mask image -> bool [H, W], row 0 at the top (Blender stores images bottom-up):
    selected where the alpha and the red channel are both above one half."""
    w, h = image.size
    px = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(px)
    px = px.reshape(h, w, 4)[::-1]
    return (px[..., 3] > 0.5) & (px[..., 0] > 0.5)


def on_select_result(job, outputs: dict):
    """The ``splat.select`` result becomes the target object's vertex selection."""
    obj = bpy.data.objects.get(job.target) if job.target else None
    selected = outputs.get("selected")
    if obj is None or selected is None or len(selected) != len(obj.data.vertices):
        return None  # the object is gone or was edited meanwhile: the mask no longer lines up
    set_selection(obj, np.asarray(selected, bool))
    return None


class NSTUDIO_OT_splat_select_mask(bpy.types.Operator):
    """Select the Gaussians that produce the white pixels of a painted mask image, as seen from the
    scene camera (traced on the server through the rasterizer: splat.select)"""

    bl_idname = "nstudio.splat_select_mask"
    bl_label = "Select Gaussians by Painted Mask"
    bl_options = {"REGISTER"}

    image: StringProperty(name="Mask Image", description="Image painted white where to select; its size is the "
                                                         "camera's resolution")
    threshold: FloatProperty(name="Threshold", default=0.5, min=0.0, max=1.0,
                             description="Share of a Gaussian's weight that must fall inside the mask")

    @classmethod
    def poll(cls, context):
        return _gaussian_poll(context) and context.scene.camera is not None

    def execute(self, context):
        from ..core import client as client_mod
        from ..core.gaussian_transform import transform_gaussians
        from . import session
        from .importers.gaussians import read_gaussians
        from .render_engine import camera_for_frame

        obj = context.active_object
        image = bpy.data.images.get(self.image)
        if image is None or image.size[0] == 0:
            self.report({"ERROR"}, f"no mask image named {self.image!r}")
            return {"CANCELLED"}
        live = session.current()
        if live is None or not live.client.connected:
            self.report({"ERROR"}, "not connected to a Neural Studio server: press Connect in the Neural Studio panel")
            return {"CANCELLED"}
        try:
            w, h = image.size
            cameras = camera_for_frame(context.scene, context.scene.camera, int(w), int(h))
            mask = image_mask(image).astype(np.uint8)[None]
            gaussians = transform_gaussians(read_gaussians(obj), np.array(obj.matrix_world, dtype=np.float64))
            live.submit(context.scene, SELECT_PIPELINE, params={"threshold": self.threshold},
                        inputs={"gaussians": gaussians, "cameras": cameras, "mask": mask}, target=obj.name)
        except (ValueError, client_mod.ClientError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


def register() -> None:
    handlers.register_result_handler(SELECT_PIPELINE, on_select_result)


def unregister() -> None:
    handlers.unregister_result_handler(SELECT_PIPELINE)


CLASSES = (
    NSTUDIO_OT_splat_select,
    NSTUDIO_OT_splat_select_mask,
    NSTUDIO_OT_splat_delete_selected,
    NSTUDIO_OT_splat_separate_selected,
    NSTUDIO_OT_splat_recolour_selected,
    NSTUDIO_OT_splat_transform_selected,
)
