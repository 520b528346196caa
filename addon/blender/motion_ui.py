"""Motion workflow operators and panel (bpy layer): recover from a video, retarget, export.

- ``nstudio.motion_recover``: reads a video file and submits ``motion.recover`` through the
  session (progress, preview and cancel come with the job system: the Jobs panel); the result
  handler imports the body (`motion_import.import_motion`) with the video behind its camera.
- ``nstudio.motion_retarget``: retargets the selected source armature's animation onto the
  active armature (automatic bone map) and bakes it as an NLA strip (`retarget`).
- ``nstudio.motion_export``: BVH, FBX or glTF through Blender's own exporters.
- ``nstudio.motion_import_file``: BVH, or an AMASS-style .npz: its SMPL parameters go to the
  server (``motion.from_params``, the user's SMPL/SMPL-H/SMPL-X file) when one is connected,
  else (or when the server has no such body file) the add-on's own import from the stored joints;
  the armature's ``nstudio_motion_from`` and the report say which.
"""

from __future__ import annotations

import logging
import os

import bpy
import numpy as np
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

from ..core import client as client_mod
from ..core import handlers
from ..core.motion import bone_maps
from ..core.motion import retarget as rt
from . import motion_import, retarget, session

log = logging.getLogger(__name__)

RECOVER = "motion.recover"
FROM_PARAMS = "motion.from_params"
PROP_VIDEO = "nstudio_video"
PROP_NPZ = "nstudio_npz"             # on a motion.from_params job item: the file (for the fallback)
PROP_FROM = "nstudio_motion_from"    # on an imported AMASS armature: what gave it its joints


def on_recover_result(job, outputs: dict):
    """The ``motion.recover`` result: the body, its contacts and camera in the scene."""
    name = job.target or "Body"
    video = None
    scene = bpy.context.scene
    for item in scene.nstudio_jobs:
        if item.job_id == job.id:
            video = item.get(PROP_VIDEO)
    obj = motion_import.import_motion(bpy.context, outputs, name, video_path=video)
    obj[motion_import.PROP_JOB] = job.id
    return None


# =============================================================================================
# Bone map (on the target armature object), editable and savable as a preset
# =============================================================================================


class NSTUDIO_BoneMapItem(bpy.types.PropertyGroup):
    canonical: StringProperty(name="Joint", description="Canonical (SMPL) joint this row stands for")
    source: StringProperty(name="Source", description="Joint/bone of the source motion")
    target: StringProperty(name="Target", description="Bone of this armature that follows it")


def _source_armature(context):
    return context.scene.nstudio_motion_source


def source_motion(context):
    """The scene's motion source (an armature with an action) as a Motion."""
    src = _source_armature(context)
    if src is None or src.type != "ARMATURE":
        raise ValueError("choose the Motion Source armature in the Motion panel")
    return motion_import.motion_from_armature(src)


def fill_bone_map(obj, motion, target: dict | None = None) -> int:
    """Fill ``obj.nstudio_bone_map``: one row per canonical joint the source has.

    Args:
        obj: the target armature.
        motion: the source motion.
        target: {canonical: bone} (a preset); default: automatic mapping of ``obj``.

    Returns:
        Rows with a target bone.
    """
    src = bone_maps.canonical_names(motion.names, motion.parents, motion.rest)
    if target is None:
        pairs = dict(retarget.auto_map(motion, obj))
        target = {k: pairs[v] for k, v in src.items() if v in pairs}
    rows = obj.nstudio_bone_map
    rows.clear()
    count = 0
    for k in bone_maps.CANONICAL:
        if k not in src:
            continue
        row = rows.add()
        row.canonical, row.source = k, src[k]
        bone = target.get(k, "")
        row.target = bone if bone in obj.data.bones else ""
        count += bool(row.target)
    return count


def bone_map_pairs(obj) -> list[tuple[str, str]]:
    """(source, target) pairs of the rows that name a target bone."""
    return [(r.source, r.target) for r in obj.nstudio_bone_map if r.source and r.target]


def presets_dir(create: bool = False) -> str:
    """The user's bone-map preset folder (Blender's user scripts/presets/nstudio_bone_maps)."""
    return bpy.utils.user_resource("SCRIPTS", path=os.path.join("presets", "nstudio_bone_maps"), create=create)


def _preset_items(self, context):
    items = [(f"builtin:{k}", label, f"Built-in preset: {label}") for k, label in bone_maps.PRESET_LABELS.items()]
    folder = presets_dir()
    if folder and os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                items.append((f"user:{name}", name[:-5], os.path.join(folder, name)))
    return items


class NSTUDIO_OT_bone_map_auto(bpy.types.Operator):
    """Map the active armature's bones to the motion source automatically (presets, names, topology)"""

    bl_idname = "nstudio.bone_map_auto"
    bl_label = "Auto Map Bones"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.active_object is not None and context.active_object.type == "ARMATURE"

    def execute(self, context):
        try:
            count = fill_bone_map(context.active_object, source_motion(context))
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"mapped {count} bones")
        return {"FINISHED"}


class NSTUDIO_OT_bone_map_save_preset(bpy.types.Operator):
    """Save the active armature's bone map as a preset (canonical joint -> bone, any source)"""

    bl_idname = "nstudio.bone_map_save_preset"
    bl_label = "Save Bone Map Preset"

    name: StringProperty(name="Name", default="My Rig")

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return obj is not None and obj.type == "ARMATURE" and len(obj.nstudio_bone_map)

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        target = {r.canonical: r.target for r in context.active_object.nstudio_bone_map if r.target}
        path = os.path.join(presets_dir(create=True), bpy.path.clean_name(self.name) + ".json")
        try:
            bone_maps.save_preset(path, target, self.name)
        except (OSError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"bone map saved to {path}")
        return {"FINISHED"}


class NSTUDIO_OT_bone_map_load_preset(bpy.types.Operator):
    """Fill the active armature's bone map from a built-in or saved preset"""

    bl_idname = "nstudio.bone_map_load_preset"
    bl_label = "Load Bone Map Preset"
    bl_options = {"REGISTER", "UNDO"}

    preset: EnumProperty(name="Preset", items=_preset_items)

    @classmethod
    def poll(cls, context):
        return context.active_object is not None and context.active_object.type == "ARMATURE"

    def execute(self, context):
        kind, _, key = self.preset.partition(":")
        try:
            if kind == "builtin":
                target = bone_maps.PRESETS[key]
            else:
                target = bone_maps.load_preset(os.path.join(presets_dir(), key))
            count = fill_bone_map(context.active_object, source_motion(context), target)
        except (OSError, ValueError, KeyError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"mapped {count} bones from the preset")
        return {"FINISHED"}


class NSTUDIO_UL_bone_map(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.label(text=item.canonical)
        row.label(text=item.source)
        row.prop_search(item, "target", data.data, "bones", text="")


class NSTUDIO_OT_motion_import_file(bpy.types.Operator):
    """Import a motion file: BVH (Blender's importer), AMASS-style .npz (SMPL parameters through the
    server's body model when it has one, else the stored joints)"""

    bl_idname = "nstudio.motion_import_file"
    bl_label = "Import Motion File"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.bvh;*.npz", options={"HIDDEN"})
    use_server: BoolProperty(name="SMPL Body on the Server", default=True,
                             description="Evaluate an .npz's SMPL parameters with the server's SMPL/SMPL-H/SMPL-X "
                                         "file (motion.from_params) when connected; else the stored joints")
    body: StringProperty(name="Body Model", default="",
                         description="The server's body model name or path (empty: from the file's model and "
                                     "gender, e.g. smplh-male)")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        path = bpy.path.abspath(self.filepath)
        try:
            obj, how = import_motion_file(context, path, self.use_server, self.body)
        except (OSError, ValueError, client_mod.ClientError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if obj is not None:
            context.scene.nstudio_motion_source = obj
        self.report({"INFO"}, how)
        return {"FINISHED"}


def import_motion_file(context, path: str, use_server: bool = False, body: str = ""):
    """Import a .bvh or AMASS-style .npz.

    An .npz with SMPL parameters goes to the server (`motion.from_params`) when ``use_server``
    and a connected server has that pipeline: the armature then arrives with the job's result
    (and falls back to the stored joints if the server has no such body file).

    Returns:
        (the armature, or None while the server evaluates it; what was done, for the user).
    """
    import addon_utils

    from ..core.motion import amass

    ext = os.path.splitext(path)[1].lower()
    name = os.path.splitext(os.path.basename(path))[0]
    if ext == ".bvh":
        addon_utils.enable("io_anim_bvh", default_set=False, handle_error=None)
        bpy.ops.import_anim.bvh(filepath=path, rotate_mode="QUATERNION")
        return context.active_object, f"imported '{name}' (BVH)"
    if ext != ".npz":
        raise ValueError(f"'{path}': unsupported motion file (.bvh or .npz)")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    request = amass.server_request(arrays, body)
    why = "the file has no SMPL parameters"
    if request is not None:
        why = "not using the server"
        if use_server:
            try:
                live = session.require_pipeline(FROM_PARAMS)
            except RuntimeError as exc:
                why = str(exc)
            else:
                inputs, params = request
                live.submit(context.scene, FROM_PARAMS, params=params, inputs=inputs, target=name)
                context.scene.nstudio_jobs[-1][PROP_NPZ] = path
                asked = params.get("body") or f"{params['model']}-{params['gender']}"
                return None, (f"'{name}': SMPL parameters sent to the server (body '{asked}'); "
                              "the armature arrives with the result")
    obj = import_stored_joints(context, arrays, name)
    return obj, f"imported '{name}' from {obj[PROP_FROM]} ({why})"


def import_stored_joints(context, arrays: dict, name: str):
    """The add-on's own AMASS import (no body model): the stored joints' bone lengths, else the template."""
    from ..core.motion import amass

    obj = motion_import.import_motion(context, amass.from_amass(arrays), name)
    obj[PROP_FROM] = "the stored joints" if "joints" in arrays else "the template skeleton"
    return obj


def on_from_params_result(job, outputs: dict):
    """The ``motion.from_params`` result: the exact body in the scene, made the motion source."""
    obj = motion_import.import_motion(bpy.context, outputs, job.target or "Body")
    body = outputs.get("body") or {}
    obj[PROP_FROM] = f"the server's {str(body.get('model', 'SMPL')).upper()} body"
    obj[motion_import.PROP_JOB] = job.id
    bpy.context.scene.nstudio_motion_source = obj
    log.info("'%s' imported through %s (job %s)", obj.name, obj[PROP_FROM], job.id)
    return None


def on_from_params_failure(job, code: str, message: str) -> str | None:
    """The server could not evaluate the parameters (no such body file, ...): the stored joints."""
    for scene in bpy.data.scenes:
        for item in scene.nstudio_jobs:
            if (job.id and item.job_id == job.id) or item.request_id == job.request_id:
                path = item.get(PROP_NPZ)
                if not path or not os.path.isfile(path):
                    return None
                with np.load(path, allow_pickle=False) as data:
                    arrays = {k: data[k] for k in data.files}
                obj = import_stored_joints(bpy.context, arrays, job.target or "Body")
                scene.nstudio_motion_source = obj
                log.warning("motion.from_params failed (%s); '%s' imported from %s", message, obj.name, obj[PROP_FROM])
                return f"imported '{obj.name}' from {obj[PROP_FROM]} instead"
    return None


def tracked_camera(clip) -> dict | None:
    """The camera Blender's tracker solved for ``clip`` as a cameras map, or None when unsolved.

    Frames the solve skipped take the nearest solved frame. Blender's principal point counts
    from the bottom-left; the protocol's from the top-left.

    Returns:
        ``world_from_camera`` [T, 4, 4] over the clip's frames, ``fx``/``fy``/``cx``/``cy``,
        ``width``/``height``.
    """
    recon = clip.tracking.reconstruction
    if not recon.is_valid or not len(recon.cameras):
        return None
    solved = {int(c.frame): np.array(c.matrix, np.float32) for c in recon.cameras}
    keys = np.array(sorted(solved))
    start = int(clip.frame_start)
    frames = np.arange(start, start + int(clip.frame_duration))
    nearest = keys[np.abs(keys[None, :] - frames[:, None]).argmin(axis=1)]
    width, height = (int(v) for v in clip.size)
    cam = clip.tracking.camera
    pp = getattr(cam, "principal_point_pixels", None)
    cx, cy = (float(pp[0]), float(height - pp[1])) if pp is not None else (width / 2.0, height / 2.0)
    return {"world_from_camera": np.stack([solved[int(f)] for f in nearest]), "fx": float(cam.focal),
            "fy": float(cam.focal * cam.pixel_aspect), "cx": cx, "cy": cy, "width": width, "height": height}


def recover_request(path: str, clip=None, frame_range: tuple[int, int] | None = None,
                    use_tracking: bool = True) -> tuple[dict, dict]:
    """The ``motion.recover`` (inputs, params) for a video file (or a movie clip's file).

    Args:
        path: the video file (a clip's own file when ``clip`` is given).
        clip: a MovieClip whose tracked camera (if solved) goes with the video.
        frame_range: (start, end) video frames, 0-based inclusive; None = all.
        use_tracking: send the clip's solved camera (scale unknown) when there is one.

    Raises:
        ValueError: no such file, or an empty frame range.
    """
    if not os.path.isfile(path):
        raise ValueError(f"no video file at '{path}'")
    with open(path, "rb") as f:
        video = np.frombuffer(f.read(), np.uint8)
    inputs: dict = {"video": video}
    params: dict = {}
    if frame_range is not None:
        start, end = (int(v) for v in frame_range)
        if end < start:
            raise ValueError(f"frame range {start}-{end} is empty")
        params.update(start=start, end=end + 1)          # the server's end is exclusive
    if clip is not None and use_tracking:
        camera = tracked_camera(clip)
        if camera is not None:
            if frame_range is not None:
                camera["world_from_camera"] = camera["world_from_camera"][frame_range[0]:frame_range[1] + 1]
            inputs["camera"] = {k: camera[k] for k in ("world_from_camera", "fx", "fy", "cx", "cy")}
    return inputs, params


def _clip_items(self, context):
    return [("", "Video File", "Use the file chosen below")] + [
        (c.name, c.name, c.filepath) for c in bpy.data.movieclips]


class NSTUDIO_OT_motion_recover(bpy.types.Operator):
    """Recover a body's motion from a video (a file or a movie clip) on the server (motion.recover)"""

    bl_idname = "nstudio.motion_recover"
    bl_label = "Recover Motion from Video"

    filepath: StringProperty(subtype="FILE_PATH")
    clip: EnumProperty(name="Movie Clip", items=_clip_items,
                       description="A movie clip in this file (its solved camera goes along)")
    use_range: BoolProperty(name="Frame Range", default=False)
    frame_start: IntProperty(name="Start", default=0, min=0, description="First video frame (0-based)")
    frame_end: IntProperty(name="End", default=100, min=0, description="Last video frame (0-based)")
    use_tracking: BoolProperty(name="Tracked Camera", default=True,
                               description="Send the clip's camera solved by Blender's tracker")
    name: StringProperty(name="Name", default="Body")

    def invoke(self, context, event):
        if len(bpy.data.movieclips):
            return context.window_manager.invoke_props_dialog(self)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        try:
            live = session.require_pipeline(RECOVER)
        except RuntimeError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        clip = bpy.data.movieclips.get(self.clip) if self.clip else None
        path = bpy.path.abspath(clip.filepath if clip is not None else self.filepath)
        try:
            inputs, params = recover_request(path, clip, (self.frame_start, self.frame_end) if self.use_range
                                             else None, self.use_tracking)
            live.submit(context.scene, RECOVER, params=params, inputs=inputs, target=self.name)
        except (ValueError, OSError, client_mod.ClientError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        context.scene.nstudio_jobs[-1][PROP_VIDEO] = path
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
        return active is not None and active.type == "ARMATURE"

    def execute(self, context):
        target = context.active_object
        source = _source_armature(context)
        if source is None or source == target:
            source = next((o for o in context.selected_objects if o.type == "ARMATURE" and o != target), None)
        if source is None:
            self.report({"ERROR"}, "choose the Motion Source armature (or select it with the target active)")
            return {"CANCELLED"}
        try:
            motion = motion_import.motion_from_armature(source)
            pairs = bone_map_pairs(target) or None
            _, result = retarget.retarget_onto(motion, target, pairs, settings=rt.RetargetSettings(
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
        layout.operator(NSTUDIO_OT_motion_import_file.bl_idname, icon="IMPORT")
        layout.prop(context.scene, "nstudio_motion_source", text="Source")
        obj = context.active_object
        if obj is not None and obj.type == "ARMATURE":
            row = layout.row(align=True)
            row.operator(NSTUDIO_OT_bone_map_auto.bl_idname, icon="AUTO")
            row.operator_menu_enum(NSTUDIO_OT_bone_map_load_preset.bl_idname, "preset", text="", icon="PRESET")
            row.operator(NSTUDIO_OT_bone_map_save_preset.bl_idname, text="", icon="ADD")
            layout.template_list("NSTUDIO_UL_bone_map", "", obj, "nstudio_bone_map", obj, "nstudio_bone_map_index",
                                 rows=6)
        layout.operator(NSTUDIO_OT_motion_retarget.bl_idname, icon="ARMATURE_DATA")
        layout.operator(NSTUDIO_OT_motion_export.bl_idname, icon="EXPORT")


CLASSES = (NSTUDIO_BoneMapItem, NSTUDIO_UL_bone_map, NSTUDIO_OT_bone_map_auto, NSTUDIO_OT_bone_map_save_preset,
           NSTUDIO_OT_bone_map_load_preset, NSTUDIO_OT_motion_import_file, NSTUDIO_OT_motion_recover,
           NSTUDIO_OT_motion_retarget, NSTUDIO_OT_motion_export, NSTUDIO_PT_motion)


def _is_armature(self, obj):
    return obj.type == "ARMATURE"


def register() -> None:
    bpy.types.Object.nstudio_bone_map = CollectionProperty(type=NSTUDIO_BoneMapItem)
    bpy.types.Object.nstudio_bone_map_index = IntProperty()
    bpy.types.Scene.nstudio_motion_source = PointerProperty(
        type=bpy.types.Object, name="Motion Source", poll=_is_armature,
        description="The armature whose animation is retargeted (a recovered body, a BVH import ...)")
    handlers.register_result_handler(RECOVER, on_recover_result)
    handlers.register_result_handler(FROM_PARAMS, on_from_params_result, on_failure=on_from_params_failure)


def unregister() -> None:
    handlers.unregister_result_handler(FROM_PARAMS)
    handlers.unregister_result_handler(RECOVER)
    del bpy.types.Scene.nstudio_motion_source
    del bpy.types.Object.nstudio_bone_map_index
    del bpy.types.Object.nstudio_bone_map
