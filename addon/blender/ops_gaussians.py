"""Import/export operators for Gaussians (.ply, compressed .ply, .spz, .splat) and camera paths (camera_path.json).

Thin operators: read or gather, convert with ``addon.core.formats``, create with
``addon.blender.importers``. Format errors become ``self.report({'ERROR'}, msg)`` here and nowhere else.
The add-on's ``register()`` registers ``CLASSES`` and calls :func:`register` /
:func:`unregister` of this module for the File > Import/Export menu entries.
"""

from __future__ import annotations

import logging
import os

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from ..core.formats import FormatError

log = logging.getLogger(__name__)

#: Object custom properties recorded at import: the format id (``detect.FORMAT_NAMES``) and
#: whether a 3DGS PLY source had the (zero) ``nx ny nz`` properties.
PROP_SOURCE_FORMAT = "nstudio_source_format"
PROP_SOURCE_NORMALS = "nstudio_source_normals"

_AXES = (
    ("AUTO", "Automatic", "SPZ files (stored Y-up, RUB) are turned Z-up; other formats are read as is"),
    ("NONE", "Z Up (as is)", "The file is already in Blender's Z-up world"),
    ("y_up_to_z_up", "Y Up -> Z Up", "Rotate a Y-up capture (x, y, z) -> (x, -z, y), SH included"),
)
_COLOR_SPACES = (
    ("linear", "Linear", "Trained on linear images (e.g. Blender renders)"),
    ("srgb", "sRGB", "Trained on sRGB photos"),
)


def _cancel(operator, exc: Exception) -> set[str]:
    """Report a format, data or file-system error at the operator boundary; the operator's result."""
    message = f"{operator.filepath}: cannot write: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
    operator.report({"ERROR"}, message)
    return {"CANCELLED"}


class NSTUDIO_OT_import_ply(bpy.types.Operator, ImportHelper):
    """Import 3D Gaussians from a 3DGS or compressed PlayCanvas .ply, an .spz or an antimatter15 .splat file"""

    bl_idname = "nstudio.import_ply"
    bl_label = "Import Gaussians (.ply/.spz/.splat)"
    bl_options = {"REGISTER", "UNDO"}

    filter_glob: StringProperty(default="*.ply;*.splat;*.spz", options={"HIDDEN"})
    axis_conversion: EnumProperty(name="Axes", items=_AXES, default="AUTO")
    color_space: EnumProperty(name="Colour Space", items=_COLOR_SPACES, default="srgb")

    def execute(self, context):
        from ..core.formats import axes, detect, ply
        from .importers.gaussians import create_gaussian_object

        try:
            # By content, not extension: a compressed PLY or an SPZ under any name is read as such.
            gaussians, fmt = detect.read_gaussians_file(self.filepath)
            conversion = self.axis_conversion
            if conversion == "AUTO":
                conversion = "y_up_to_z_up" if fmt == "spz" else "NONE"
            if conversion != "NONE":
                gaussians = axes.convert_axes(gaussians, conversion)
            normals = fmt == "ply" and "nx" in ply.vertex_properties(self.filepath)
        except FormatError as exc:
            return _cancel(self, exc)
        name = os.path.splitext(os.path.basename(self.filepath))[0] or "Gaussians"
        if name.endswith(".compressed"):
            name = name[: -len(".compressed")]
        obj = create_gaussian_object(name, gaussians, color_space=self.color_space)
        # What the file was, so export can write the same layout (a PLY without normals stays so).
        obj[PROP_SOURCE_FORMAT] = fmt
        obj[PROP_SOURCE_NORMALS] = normals or fmt != "ply"
        for other in context.view_layer.objects.selected:
            other.select_set(False)
        obj.select_set(True)
        context.view_layer.objects.active = obj
        self.report({"INFO"}, f"Imported {gaussians['means'].shape[0]} Gaussians")
        return {"FINISHED"}


class _ExportGaussians(ExportHelper):
    """The export operators' shared properties and body (a mixin: Blender registers each
    concrete operator class separately, and registered classes must not inherit each other)."""

    file_format = "ply"  # a class constant: which writer (see _write)
    axis_conversion: EnumProperty(
        name="Axes",
        items=(("AUTO", "Automatic", "SPZ is written Y-up (RUB) as the format specifies; others Z-up as is"),
               ("NONE", "Z Up (as is)", "Write Blender's Z-up world"),
               ("z_up_to_y_up", "Z Up -> Y Up", "Rotate to a Y-up world (x, y, z) -> (x, z, -y), SH included")),
        default="AUTO",
    )
    world_space: BoolProperty(
        name="World Space",
        description="Apply the object's transform (write the Gaussians where they are in the "
                    "scene); off writes them in the object's own frame",
        default=True,
    )
    normals: EnumProperty(
        name="Normals",
        description="The zero nx ny nz properties of the original 3DGS layout (PLY only)",
        items=(("SOURCE", "As Imported", "Write them when the imported PLY had them (default: yes)"),
               ("YES", "Write", "Always write them"), ("NO", "Omit", "Never write them")),
        default="SOURCE",
    )

    @classmethod
    def poll(cls, context):
        from .importers.gaussians import is_gaussian_object

        return is_gaussian_object(context.active_object)

    def _write(self, obj, gaussians) -> None:
        from ..core.formats import ply, splat, spz

        if self.file_format == "spz":
            spz.write_spz(self.filepath, gaussians)
        elif self.file_format == "splat":
            splat.write_splat(self.filepath, gaussians)
        else:
            normals = {"YES": True, "NO": False}.get(self.normals, bool(obj.get(PROP_SOURCE_NORMALS, True)))
            ply.write_ply(self.filepath, gaussians, normals=normals)

    def execute(self, context):
        from ..core.formats import axes
        from ..core.gaussian_transform import transform_gaussians
        from .importers.gaussians import read_gaussians

        obj = context.active_object
        try:
            gaussians = read_gaussians(obj)
            if self.world_space:
                # Extra per-Gaussian arrays (labels, ...) do not depend on the frame: keep them.
                gaussians = {**gaussians, **transform_gaussians(gaussians, obj.matrix_world)}
            conversion = self.axis_conversion
            if conversion == "AUTO":
                conversion = "z_up_to_y_up" if self.file_format == "spz" else "NONE"
            if conversion != "NONE":
                gaussians = axes.convert_axes(gaussians, conversion)
            self._write(obj, gaussians)
        except (ValueError, OSError) as exc:  # FormatError is a ValueError
            return _cancel(self, exc)
        self.report({"INFO"}, f"Exported {gaussians['means'].shape[0]} Gaussians")
        return {"FINISHED"}


class NSTUDIO_OT_export_ply(_ExportGaussians, bpy.types.Operator):
    """Export the active Gaussian object as a 3DGS .ply file"""

    bl_idname = "nstudio.export_ply"
    bl_label = "Export Gaussians (.ply)"
    filename_ext = ".ply"
    file_format = "ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})


class NSTUDIO_OT_export_spz(_ExportGaussians, bpy.types.Operator):
    """Export the active Gaussian object as a Niantic .spz file (gzip, version 3)"""

    bl_idname = "nstudio.export_spz"
    bl_label = "Export Gaussians (.spz)"
    filename_ext = ".spz"
    file_format = "spz"
    filter_glob: StringProperty(default="*.spz", options={"HIDDEN"})


class NSTUDIO_OT_export_splat(_ExportGaussians, bpy.types.Operator):
    """Export the active Gaussian object as an antimatter15 .splat file (degree-0 colour only)"""

    bl_idname = "nstudio.export_splat"
    bl_label = "Export Gaussians (.splat)"
    filename_ext = ".splat"
    file_format = "splat"
    filter_glob: StringProperty(default="*.splat", options={"HIDDEN"})


class NSTUDIO_OT_import_camera_path(bpy.types.Operator, ImportHelper):
    """Import a nerfstudio camera_path.json as an animated camera"""

    bl_idname = "nstudio.import_camera_path"
    bl_label = "Import Camera Path (.json)"
    bl_options = {"REGISTER", "UNDO"}

    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def execute(self, context):
        from ..core.formats import camera_path
        from .importers.camera_path import create_camera_from_path

        try:
            path_map = camera_path.read_camera_path(self.filepath)
        except FormatError as exc:
            return _cancel(self, exc)
        name = os.path.splitext(os.path.basename(self.filepath))[0] or "CameraPath"
        create_camera_from_path(name, path_map, scene=context.scene)
        self.report({"INFO"}, f"Imported a camera path of {path_map['world_from_camera'].shape[0]} frames")
        return {"FINISHED"}


class NSTUDIO_OT_export_camera_path(bpy.types.Operator, ExportHelper):
    """Export the scene camera's animation over the frame range as a nerfstudio camera_path.json"""

    bl_idname = "nstudio.export_camera_path"
    bl_label = "Export Camera Path (.json)"

    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})
    use_active: BoolProperty(name="Active Camera", description="Export the active camera instead of the scene camera",
                             default=False)

    def execute(self, context):
        from ..core.formats import camera_path
        from .importers.camera_path import camera_path_from_scene

        active = context.active_object if self.use_active else None
        try:
            path_map = camera_path_from_scene(context.scene, camera=active)
            camera_path.write_camera_path(self.filepath, path_map)
        except (ValueError, OSError) as exc:  # FormatError is a ValueError
            return _cancel(self, exc)
        self.report({"INFO"}, f"Exported {path_map['world_from_camera'].shape[0]} frames")
        return {"FINISHED"}


CLASSES = (
    NSTUDIO_OT_import_ply,
    NSTUDIO_OT_export_ply,
    NSTUDIO_OT_export_spz,
    NSTUDIO_OT_export_splat,
    NSTUDIO_OT_import_camera_path,
    NSTUDIO_OT_export_camera_path,
)


def menu_import(self, context):
    """File > Import entries."""
    self.layout.operator(NSTUDIO_OT_import_ply.bl_idname, text="Gaussian Splats (.ply/.spz/.splat)")
    self.layout.operator(NSTUDIO_OT_import_camera_path.bl_idname, text="Camera Path (nerfstudio .json)")


def menu_export(self, context):
    """File > Export entries."""
    self.layout.operator(NSTUDIO_OT_export_ply.bl_idname, text="Gaussian Splats (.ply)")
    self.layout.operator(NSTUDIO_OT_export_spz.bl_idname, text="Gaussian Splats (.spz)")
    self.layout.operator(NSTUDIO_OT_export_splat.bl_idname, text="Gaussian Splats (.splat)")
    self.layout.operator(NSTUDIO_OT_export_camera_path.bl_idname, text="Camera Path (nerfstudio .json)")


def register() -> None:
    """Add the menu entries (the classes themselves are registered by the add-on from CLASSES)."""
    bpy.types.TOPBAR_MT_file_import.append(menu_import)
    bpy.types.TOPBAR_MT_file_export.append(menu_export)


def unregister() -> None:
    """Remove the menu entries (before the classes are unregistered)."""
    bpy.types.TOPBAR_MT_file_export.remove(menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
