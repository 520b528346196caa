"""The "Neural Studio Splats" render engine: Gaussian objects rendered by the server's ``splat.render``.

F12 / Render Animation on a scene using this engine (normally the companion scene that
:mod:`final_shot` builds) renders every Gaussian object the scene's view layer sees, from the
scene camera at the current frame: the objects are read (cached across frames), moved into the
world frame by their evaluated ``matrix_world``, merged into one set so they occlude each other,
and sent to the server in one request. The frame comes back premultiplied linear RGBA (the
Combined pass) and depth along the camera's -Z in metres (the Depth pass; Blender's empty value
1e10 where nothing was hit), which the main scene's compositor combines by depth with its own render.

Runs in Blender's render thread; the request is synchronous there (render_client), which does not
block the UI. Viewport "Rendered" shading is not served by this engine (bl_use_eevee_viewport).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import bpy
import numpy as np

from . import camera_model, gaussian_transform, protocol, render_client

log = logging.getLogger(__name__)

ENGINE_ID = "NSTUDIO_SPLATS"
#: Blender's depth for "nothing here" (the value its own engines write for the background).
EMPTY_DEPTH = 1e10
ENDPOINT_ENV = "NSTUDIO_ENDPOINT"

# Per Gaussian object, keyed by the mesh's session_uid: (content key, local Gaussians,
# matrix bytes, world Gaussians). Module level so an animation does not re-read the Gaussians
# every frame (each frame's render makes a new engine instance).
_cache: dict[int, tuple[tuple, dict, Optional[bytes], Optional[dict]]] = {}
# Mesh session_uid -> how many geometry updates the depsgraph reported for it.
_stamps: dict[int, int] = {}


# ------------------------------------------------------------------ settings

class NSTUDIO_FinalShotSettings(bpy.types.PropertyGroup):
    """Per-scene settings of the splat render (``scene.nstudio_final_shot``)."""

    endpoint: bpy.props.StringProperty(
        name="Server Endpoint",
        description="Server to render the splats on; empty: the add-on preferences' endpoint",
        default="",
    )
    sh_degree: bpy.props.IntProperty(
        name="SH Degree",
        description="Spherical-harmonics degree used for view-dependent colour; -1: all the Gaussians have",
        default=-1, min=-1, max=3,
    )
    source_scene: bpy.props.StringProperty(
        name="Source Scene",
        description="For a companion splat scene: the scene whose compositor uses it",
        default="",
    )


def render_settings(scene) -> render_client.RenderSettings:
    """Endpoint (and CURVE keys) for a scene: its own setting, else the add-on preferences, else
    ``$NSTUDIO_ENDPOINT``, else the protocol default."""
    own = scene.nstudio_final_shot.endpoint.strip() if hasattr(scene, "nstudio_final_shot") else ""
    if own:
        return render_client.RenderSettings(endpoint=own)
    from . import preferences, session

    try:
        prefs = preferences.get()
    except RuntimeError:
        prefs = None
    if prefs is not None:
        conn = session.SessionConfig.from_preferences(prefs).connection()
        curve = None
        if conn.curve is not None:
            curve = (conn.curve.server_public, conn.curve.client_public, conn.curve.client_secret)
        return render_client.RenderSettings(endpoint=conn.endpoint, curve=curve)
    return render_client.RenderSettings(endpoint=os.environ.get(ENDPOINT_ENV) or protocol.DEFAULT_ENDPOINT)


# ------------------------------------------------------------------ gather

def camera_for_frame(scene, camera_obj, width: int, height: int) -> dict:
    """The cameras map (T = 1) of an evaluated Blender camera object at this frame.

    Raises:
        ValueError: no camera, or not a perspective camera.
    """
    if camera_obj is None:
        raise ValueError(f"scene '{scene.name}' has no active camera")
    cam = camera_obj.data
    if cam.type != "PERSP":
        raise ValueError(f"camera '{camera_obj.name}' is {cam.type}; splat rendering needs a perspective camera")
    fx, fy, cx, cy = camera_model.intrinsics_from_blender(
        cam.lens, cam.sensor_width, cam.sensor_height, cam.sensor_fit, cam.shift_x, cam.shift_y,
        width, height, scene.render.pixel_aspect_x, scene.render.pixel_aspect_y)
    wfc = np.array(camera_obj.matrix_world, dtype=np.float32)[None]
    return render_client.cameras_map(wfc, fx, fy, cx, cy, width, height, near=cam.clip_start, far=cam.clip_end)


def _content_key(obj) -> tuple:
    mesh = obj.data
    uid = mesh.session_uid
    return (uid, len(mesh.vertices), _stamps.get(uid, 0))


def world_gaussians(obj_orig, matrix_world) -> dict:
    """An object's Gaussians in the world frame, from the cache when nothing changed.

    Args:
        obj_orig: the original (not evaluated) Gaussian object.
        matrix_world: its evaluated world matrix. [4, 4]
    """
    from .importers import gaussians as gaussian_objects

    key = _content_key(obj_orig)
    uid = key[0]
    mat = np.array(matrix_world, dtype=np.float64)
    mat_bytes = mat.tobytes()
    entry = _cache.get(uid)
    if entry is None or entry[0] != key:
        local = gaussian_objects.read_gaussians(obj_orig)
        entry = (key, local, None, None)
    if entry[2] != mat_bytes:
        entry = (key, entry[1], mat_bytes, gaussian_transform.transform_gaussians(entry[1], mat))
    _cache[uid] = entry
    return entry[3]


def scene_gaussians(depsgraph) -> tuple[Optional[dict], list[str]]:
    """All Gaussian objects the depsgraph's view layer renders, merged in the world frame.

    Returns:
        (Gaussians map or None when there are none, colour spaces of the objects).
    """
    from .importers import gaussians as gaussian_objects

    sets, spaces, used = [], [], set()
    for inst in depsgraph.object_instances:
        orig = inst.object.original
        if inst.is_instance and gaussian_objects.is_gaussian_object(inst.instance_object.original):
            continue  # geometry the display proxy instances on a Gaussian object's points
        if not gaussian_objects.is_gaussian_object(orig) or len(orig.data.vertices) == 0:
            continue
        sets.append(world_gaussians(orig, inst.matrix_world))
        spaces.append(orig.get(gaussian_objects.PROP_COLOR_SPACE, "linear"))
        used.add(orig.data.session_uid)
    for uid in [u for u in _cache if u not in used]:
        del _cache[uid]  # keep memory to what the last render needed
    if not sets:
        return None, spaces
    return gaussian_transform.merge_gaussians(sets), spaces


def srgb_to_linear_premultiplied(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Premultiplied sRGB-encoded colour -> premultiplied linear. rgb [H, W, 3], alpha [H, W]."""
    a = alpha[..., None]
    straight = np.where(a > 0, rgb / np.maximum(a, 1e-12), 0.0).clip(0.0, None)
    lin = np.where(straight <= 0.04045, straight / 12.92, ((straight + 0.055) / 1.055) ** 2.4)
    return (lin * a).astype(np.float32)


def blender_passes(rgb: np.ndarray, alpha: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A server frame -> Blender pass buffers (rows bottom-up, as render results store them).

    Args:
        rgb: premultiplied linear colour, row 0 at the top. [H, W, 3]
        alpha: [H, W]
        depth: metres along -Z, inf where empty. [H, W]

    Returns:
        (combined RGBA [H * W * 4], depth [H * W] with inf -> 1e10), float32 C-contiguous.
    """
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)[::-1]
    z = np.where(np.isfinite(depth), depth, EMPTY_DEPTH)[::-1]
    return (np.ascontiguousarray(rgba, dtype=np.float32).reshape(-1),
            np.ascontiguousarray(z, dtype=np.float32).reshape(-1))


# ------------------------------------------------------------------ engine

class NSTUDIO_SplatRenderEngine(bpy.types.RenderEngine):
    """Renders the scene's Gaussian objects on the Neural Studio server."""

    bl_idname = ENGINE_ID
    bl_label = "Neural Studio Splats"
    bl_use_preview = False
    bl_use_eevee_viewport = True
    bl_use_postprocess = True

    def update_render_passes(self, scene=None, renderlayer=None):
        self.register_pass(scene, renderlayer, "Combined", 4, "RGBA", "COLOR")
        if renderlayer.use_pass_z:
            self.register_pass(scene, renderlayer, "Depth", 1, "Z", "VALUE")

    def render(self, depsgraph):
        scene = depsgraph.scene
        width, height = camera_model.render_size(scene.render.resolution_x, scene.render.resolution_y,
                                                 scene.render.resolution_percentage)
        rgb = np.zeros((height, width, 3), np.float32)
        alpha = np.zeros((height, width), np.float32)
        depth = np.full((height, width), np.inf, np.float32)
        try:
            frame = self._render_frame(depsgraph, scene, width, height)
        except render_client.RenderCancelled:
            log.info("splat render of '%s' cancelled", scene.name)
            return
        except (render_client.RenderError, ValueError) as exc:
            message = f"Neural Studio splat render: {exc}"
            log.error(message)
            self.report({"ERROR"}, message)
            self.error_set(message)
            frame = None
        if frame is not None:
            rgb, alpha, depth = frame
        combined, z = blender_passes(rgb, alpha, depth)
        result = self.begin_result(0, 0, width, height)
        layer = result.layers[0]
        layer.passes["Combined"].rect.foreach_set(combined)
        if "Depth" in layer.passes:
            layer.passes["Depth"].rect.foreach_set(z)
        self.end_result(result)

    def _render_frame(self, depsgraph, scene, width, height):
        """(rgb, alpha, depth) of this frame, or None when there are no Gaussians to render."""
        self.update_stats("", "Reading Gaussians")
        gaussians, spaces = scene_gaussians(depsgraph)
        if gaussians is None:
            return None
        # scene.camera is the original object even on the evaluated scene: its animation is
        # only in the evaluated copy.
        camera = scene.camera.original.evaluated_get(depsgraph) if scene.camera is not None else None
        cameras = camera_for_frame(scene, camera, width, height)
        params = {}
        degree = scene.nstudio_final_shot.sh_degree if hasattr(scene, "nstudio_final_shot") else -1
        if degree >= 0:
            params["sh_degree"] = int(degree)
        settings = render_settings(scene)
        n = len(gaussians["means"])
        self.update_stats("", f"Rendering {n:,} Gaussians on {settings.endpoint}")
        out = render_client.render(gaussians, cameras, params, settings,
                                   should_cancel=self.test_break,
                                   on_progress=lambda s, t: self.update_progress(s / t if t else 0.0))
        rgb, alpha, depth = out["rgb"][0], out["alpha"][0], out["depth"][0]
        if spaces and all(s == "srgb" for s in spaces):
            rgb = srgb_to_linear_premultiplied(rgb, alpha)
        elif "srgb" in spaces:
            log.warning("scene '%s' mixes linear and sRGB Gaussian objects; rendering all as linear", scene.name)
        return rgb, alpha, depth


# ------------------------------------------------------------------ cache invalidation

@bpy.app.handlers.persistent
def _on_depsgraph_update(_scene, depsgraph) -> None:
    for update in depsgraph.updates:
        if not update.is_updated_geometry:
            continue
        idb = update.id.original
        data = idb.data if isinstance(idb, bpy.types.Object) and idb.type == "MESH" else idb
        if isinstance(data, bpy.types.Mesh):
            _stamps[data.session_uid] = _stamps.get(data.session_uid, 0) + 1


@bpy.app.handlers.persistent
def _on_load_post(*_args) -> None:
    _cache.clear()
    _stamps.clear()


def clear_cache() -> None:
    """Forget every cached Gaussian set (the next render reads them from Blender again)."""
    _cache.clear()


CLASSES = (NSTUDIO_FinalShotSettings, NSTUDIO_SplatRenderEngine)


def register() -> None:
    bpy.types.Scene.nstudio_final_shot = bpy.props.PointerProperty(type=NSTUDIO_FinalShotSettings)
    bpy.app.handlers.depsgraph_update_post.append(_on_depsgraph_update)
    bpy.app.handlers.load_post.append(_on_load_post)


def unregister() -> None:
    bpy.app.handlers.load_post.remove(_on_load_post)
    bpy.app.handlers.depsgraph_update_post.remove(_on_depsgraph_update)
    del bpy.types.Scene.nstudio_final_shot
    _cache.clear()
    _stamps.clear()
