"""Motion workflow operators and panel (bpy layer): recover from a video, retarget, export.

- ``nstudio.motion_recover``: reads a video file and submits ``motion.recover`` through the
  session (progress, preview and cancel come with the job system: the Jobs panel); the result
  handler imports the body (`motion_import.import_motion`) with the video behind its camera.
- ``nstudio.motion_retarget``: retargets the selected source armature's animation onto the
  active armature (automatic bone map) and bakes it as an NLA strip (`retarget`).
- ``nstudio.motion_export``: BVH, FBX or glTF through Blender's own exporters.
"""

from __future__ import annotations

import logging
import os

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, StringProperty

from ..core import client as client_mod
from ..core import handlers
from ..core.motion import retarget as rt
from . import motion_import, retarget, session

log = logging.getLogger(__name__)

RECOVER = "motion.recover"
PROP_VIDEO = "nstudio_video"


def on_recover_result(job, outputs: dict):
    """The ``motion.recover`` result: the body, its contacts and camera in the scene."""
    name = job.target or "Body"
    video = None
    scene = bpy.context.scene
    for item in scene.neural_studio_jobs:
        if item.job_id == job.id:
            video = item.get(PROP_VIDEO)
    obj = motion_import.import_motion(bpy.context, outputs, name, video_path=video)
    obj[motion_import.PROP_JOB] = job.id
    return None


class NSTUDIO_OT_motion_recover(bpy.types.Operator):
    """Recover a body's motion from a video file on the server (motion.recover)"""

    bl_idname = "nstudio.motion_recover"
    bl_label = "Recover Motion from Video"

    filepath: StringProperty(subtype="FILE_PATH")
    name: StringProperty(name="Name", default="Body")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        live = session.current()
        if live is None or not live.client.connected:
            self.report({"ERROR"}, "not connected to a Neural Studio server: press Connect in the Neural Studio panel")
            return {"CANCELLED"}
        path = bpy.path.abspath(self.filepath)
        if not os.path.isfile(path):
            self.report({"ERROR"}, f"no video file at '{path}'")
            return {"CANCELLED"}
        with open(path, "rb") as f:
            video = np.frombuffer(f.read(), np.uint8)
        try:
            live.submit(context.scene, RECOVER, params={}, inputs={"video": video}, target=self.name)
        except client_mod.ClientError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        context.scene.neural_studio_jobs[-1][PROP_VIDEO] = path
        self.report({"INFO"}, f"recovering motion from '{os.path.basename(path)}' on the server")
        return {"FINISHED"}


class NSTUDIO_OT_motion_retarget(bpy.types.Operator):
    """Retarget the selected armature's animation onto the active armature (baked as an NLA strip)"""

    bl_idname = "nstudio.motion_retarget"
    bl_label = "Retarget Motion"
    bl_options = {"REGISTER", "UNDO"}

    pin_feet: BoolProperty(name="Pin Feet", default=True, description="Keep feet still on contact frames")
    scale_root: BoolProperty(name="Scale Root Motion", default=True,
                             description="Scale root motion by the ratio of leg lengths")

    @classmethod
    def poll(cls, context):
        active = context.active_object
        return (active is not None and active.type == "ARMATURE"
                and any(o.type == "ARMATURE" and o != active for o in context.selected_objects))

    def execute(self, context):
        target = context.active_object
        source = next(o for o in context.selected_objects if o.type == "ARMATURE" and o != target)
        try:
            motion = motion_import.motion_from_armature(source)
            _, result = retarget.retarget_onto(motion, target, settings=rt.RetargetSettings(
                pin_feet=self.pin_feet, scale_root=self.scale_root), frame_start=context.scene.frame_start)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"retargeted {len(result.pairs)} bones of '{source.name}' onto '{target.name}'")
        return {"FINISHED"}


class NSTUDIO_OT_motion_export(bpy.types.Operator):
    """Export the active armature's animation as BVH, FBX or glTF (Blender's exporters)"""

    bl_idname = "nstudio.motion_export"
    bl_label = "Export Motion"

    filepath: StringProperty(subtype="FILE_PATH")
    format: EnumProperty(name="Format", items=(("BVH", "BVH", ""), ("FBX", "FBX", ""), ("GLTF", "glTF", "")))

    @classmethod
    def poll(cls, context):
        return context.active_object is not None and context.active_object.type == "ARMATURE"

    def execute(self, context):
        try:
            export_motion(context, context.active_object, bpy.path.abspath(self.filepath), self.format)
        except (RuntimeError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


def export_motion(context, obj, path: str, fmt: str) -> str:
    """Write ``obj``'s animation to ``path`` with Blender's exporter for ``fmt``."""
    import addon_utils

    scene = context.scene
    for o in context.selected_objects:
        o.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj
    if fmt == "BVH":
        addon_utils.enable("io_anim_bvh", default_set=False, handle_error=None)
        bpy.ops.export_anim.bvh(filepath=path, frame_start=scene.frame_start, frame_end=scene.frame_end,
                                root_transform_only=True)
    elif fmt == "FBX":
        addon_utils.enable("io_scene_fbx", default_set=False, handle_error=None)
        # No key reduction: the file keeps every frame as it was.
        bpy.ops.export_scene.fbx(filepath=path, use_selection=True, bake_anim=True, add_leaf_bones=False,
                                 bake_anim_simplify_factor=0.0)
    elif fmt == "GLTF":
        bpy.ops.export_scene.gltf(filepath=path, use_selection=True, export_animations=True)
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return path


class NSTUDIO_PT_motion(bpy.types.Panel):
    bl_label = "Motion"
    bl_idname = "NSTUDIO_PT_motion"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Neural Studio"

    def draw(self, context):
        layout = self.layout
        layout.operator(NSTUDIO_OT_motion_recover.bl_idname, icon="FILE_MOVIE")
        layout.operator(NSTUDIO_OT_motion_retarget.bl_idname, icon="ARMATURE_DATA")
        layout.operator(NSTUDIO_OT_motion_export.bl_idname, icon="EXPORT")


CLASSES = (NSTUDIO_OT_motion_recover, NSTUDIO_OT_motion_retarget, NSTUDIO_OT_motion_export, NSTUDIO_PT_motion)


def register() -> None:
    handlers.register_result_handler(RECOVER, on_recover_result)


def unregister() -> None:
    handlers.unregister_result_handler(RECOVER)
