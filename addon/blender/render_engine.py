"""The "Neural Studio Splats" render engine: Gaussian objects rendered by the server's ``splat.render``.

F12 / Render Animation on a scene using this engine (normally the companion scene that
:mod:`final_shot` builds) renders every Gaussian object the scene's view layer sees, from the
scene camera at the current frame: the objects are read (cached across frames), moved into the
world frame by their evaluated ``matrix_world``, merged into one set so they occlude each other,
and sent to the server in one request. The frame comes back premultiplied linear RGBA (the
Combined pass) and depth along the camera's -Z in metres (the Depth pass; Blender's empty value
1e10 where nothing was hit), which the main scene's compositor combines by depth with its own render.

Runs in Blender's render thread; the request is synchronous there (render_client), which does not
block the UI.

Viewport "Rendered" shading with this engine shows the same server render from the 3D view's own
camera (:mod:`viewport`): ``view_update`` gathers the Gaussians on the main thread (cached, as for
F12), ``view_draw`` turns the view's matrices into a pinhole camera, hands it to a worker thread
(newest view wins, one request in flight, half resolution while the view moves) and draws the last
finished frame as a premultiplied texture; a timer asks for a redraw when a new frame or status
arrives. Nothing on Blender's main thread waits for the server.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import textwrap
import time
import weakref
from typing import Optional

import bpy
import numpy as np

from ..core import camera_model, gaussian_transform, render_client, viewport
from ..wire import protocol

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
# The last merged set: (key of its parts, Gaussians). Returning the same map while nothing changed
# lets the viewport tell a real change from an unrelated depsgraph update, and spares a copy.
_merged: list = [None, None]

#: Seconds between checks for finished viewport frames (the redraw timer's interval).
VIEWPORT_TICK_S = 0.05
#: Viewport requests give up on a silent server sooner than F12 renders do.
VIEWPORT_CONNECT_TIMEOUT_S = 2.0
VIEWPORT_SILENCE_TIMEOUT_S = 10.0
# Engines drawing a viewport (id -> engine) and their sessions, weakly: Blender owns the engines,
# and a strong reference would outlive the RNA data behind it.
_viewport_engines: "weakref.WeakValueDictionary[int, NSTUDIO_SplatRenderEngine]" = weakref.WeakValueDictionary()
_viewport_sessions: "weakref.WeakSet[viewport.ViewportSession]" = weakref.WeakSet()


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
    viewport_scale: bpy.props.FloatProperty(
        name="Navigation Resolution",
        description="Viewport server render: resolution factor while the view moves (full size once it is "
                    "still); 1 always renders at full size",
        default=0.5, min=0.1, max=1.0, subtype="FACTOR",
    )
    source_scene: bpy.props.StringProperty(
        name="Source Scene",
        description="For a companion splat scene: the scene whose compositor uses it",
        default="",
    )


def render_settings(scene) -> render_client.RenderSettings:
    """Endpoint (and CURVE keys) for a scene: its own setting, else the add-on preferences, else
    ``$NSTUDIO_ENDPOINT``, else the protocol default.

    Raises:
        ValueError: the preferences' endpoint or CURVE key files cannot be used (the message says which).
    """
    own = scene.nstudio_final_shot.endpoint.strip() if hasattr(scene, "nstudio_final_shot") else ""
    if own:
        return render_client.RenderSettings(endpoint=own)
    from ..core import client
    from . import preferences, session

    try:
        prefs = preferences.get()
    except RuntimeError:
        prefs = None
    if prefs is not None:
        try:
            conn = session.SessionConfig.from_preferences(prefs).connection()
        except client.ClientError as exc:
            raise ValueError(f"add-on preferences: {exc}") from exc
        curve = None
        if conn.curve is not None:
            curve = (conn.curve.server_public, conn.curve.client_public, conn.curve.client_secret)
        return render_client.RenderSettings(endpoint=conn.endpoint, curve=curve)
    return render_client.RenderSettings(endpoint=os.environ.get(ENDPOINT_ENV) or protocol.DEFAULT_ENDPOINT)


def render_params(scene) -> dict:
    """``splat.render`` params from the scene's settings (F12 and the viewport use the same)."""
    degree = scene.nstudio_final_shot.sh_degree if hasattr(scene, "nstudio_final_shot") else -1
    return {"sh_degree": int(degree)} if degree >= 0 else {}


def viewport_settings(scene) -> render_client.RenderSettings:
    """:func:`render_settings` with the viewport's shorter timeouts (an absent server shows quickly)."""
    return dataclasses.replace(render_settings(scene), connect_timeout_s=VIEWPORT_CONNECT_TIMEOUT_S,
                               silence_timeout_s=VIEWPORT_SILENCE_TIMEOUT_S)


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

    sets, spaces, used, key = [], [], set(), []
    for inst in depsgraph.object_instances:
        orig = inst.object.original
        if inst.is_instance and gaussian_objects.is_gaussian_object(inst.instance_object.original):
            continue  # geometry the display proxy instances on a Gaussian object's points
        if not gaussian_objects.is_gaussian_object(orig) or len(orig.data.vertices) == 0:
            continue
        sets.append(world_gaussians(orig, inst.matrix_world))
        spaces.append(orig.get(gaussian_objects.PROP_COLOR_SPACE, "linear"))
        used.add(orig.data.session_uid)
        key.append((_content_key(orig), np.array(inst.matrix_world, dtype=np.float64).tobytes()))
    for uid in [u for u in _cache if u not in used]:
        # Keep memory to what the last render needed. pop: an F12 render (render thread) and a
        # viewport (main thread) may both be here.
        _cache.pop(uid, None)
    if not sets:
        _merged[:] = [None, None]
        return None, spaces
    key = tuple(key)
    if _merged[0] != key:
        _merged[:] = [key, gaussian_transform.merge_gaussians(sets)]
    return _merged[1], spaces


def blender_passes(rgb: np.ndarray, alpha: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A server frame -> Blender pass buffers (rows bottom-up, as render results store them).

    Args:
        rgb: premultiplied linear colour, row 0 at the top. [H, W, 3]
        alpha: [H, W]
        depth: metres along -Z, inf where empty. [H, W]

    Returns:
        (combined RGBA [H * W * 4], depth [H * W] with inf -> 1e10), float32 C-contiguous.
    """
    z = np.where(np.isfinite(depth), depth, EMPTY_DEPTH)[::-1]
    return viewport.frame_rgba(rgb, alpha).reshape(-1), np.ascontiguousarray(z, dtype=np.float32).reshape(-1)


# ------------------------------------------------------------------ engine

class NSTUDIO_SplatRenderEngine(bpy.types.RenderEngine):
    """Renders the scene's Gaussian objects on the Neural Studio server."""

    bl_idname = ENGINE_ID
    bl_label = "Neural Studio Splats"
    bl_use_preview = False
    bl_use_eevee_viewport = False  # Rendered shading calls view_update/view_draw below
    bl_use_postprocess = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._view: Optional[viewport.ViewportSession] = None
        self._texture = None
        self._texture_seq: Optional[int] = None
        self._stats_text: Optional[str] = None

    def __del__(self):
        # Blender frees viewport engines when the shading mode, engine or file changes: stop the
        # worker without waiting on the main thread (it cancels its job and ends on its own).
        view = getattr(self, "_view", None)
        if view is not None:
            view.close()

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
        params = {**render_params(scene), "depth_front": True}  # splat-assets: see below
        settings = render_settings(scene)
        n = len(gaussians["means"])
        self.update_stats("", f"Rendering {n:,} Gaussians on {settings.endpoint}")
        out = render_client.render(gaussians, cameras, params, settings,
                                   should_cancel=self.test_break,
                                   on_progress=lambda s, t: self.update_progress(s / t if t else 0.0),
                                   keep_key=_merged[0])  # splat-assets: uploaded once, by reference after
        rgb, alpha, depth = out["rgb"][0], out["alpha"][0], out["depth"][0]
        # splat-assets: the Depth pass the final shot compares with meshes is the front surface
        # (transmittance 0.5), not the expected depth, which lies behind it at contacts.
        depth = out["depth_front"][0] if "depth_front" in out else depth
        if spaces and all(s == "srgb" for s in spaces):
            rgb = render_client.srgb_to_linear_premultiplied(rgb, alpha)
        elif "srgb" in spaces:
            log.warning("scene '%s' mixes linear and sRGB Gaussian objects; rendering all as linear", scene.name)
        return rgb, alpha, depth

    # -------------------------------------------------------------- viewport (main thread)

    def view_update(self, context, depsgraph):
        """Scene changed (or the viewport started): gather the Gaussians, hand them to the session."""
        scene = depsgraph.scene
        if self._view is None:
            # Its server settings come with set_scene below, before any request is sent.
            self._view = new_viewport_session(render_client.RenderSettings(), scene.nstudio_final_shot.viewport_scale)
            _viewport_engines[id(self)] = self
            _ensure_viewport_timer()
        _note_geometry_updates(depsgraph)
        try:
            settings = viewport_settings(scene)
            gaussians, spaces = scene_gaussians(depsgraph)
        except ValueError as exc:  # unusable server settings, or Gaussian attributes that break the contract
            self._view.set_scene(None, note=str(exc))
            return
        srgb = bool(spaces) and all(sp == "srgb" for sp in spaces)
        note = "" if gaussians is not None else "no Gaussian objects in this view layer"
        self._view.set_scene(gaussians, render_params(scene), srgb, settings, note=note)
        self._view.plan.coarse_scale = scene.nstudio_final_shot.viewport_scale

    def view_draw(self, context, depsgraph):
        """Draw the last finished server frame; ask for the current view if it is not there yet."""
        view = self._view
        if view is None:
            return
        region, rv3d = context.region, context.region_data
        try:
            camera = viewport.camera_from_view(rv3d.view_matrix, rv3d.window_matrix, region.width, region.height)
            note = ""
        except ValueError as exc:
            camera, note = None, str(exc)
        view.view(camera, time.monotonic(), note)
        frame = view.frame()
        if frame is not None and camera is not None:
            self._draw_frame(depsgraph.scene, frame)
        message = view.error()
        if message:
            _draw_message(message, region.width, region.height)
        text = view.status_text()
        if text != self._stats_text:
            self._stats_text = text
            self.update_stats("", text)

    def _draw_frame(self, scene, frame: viewport.ViewFrame) -> None:
        import gpu

        if self._texture_seq != frame.seq:
            h, w = frame.rgba.shape[:2]
            data = gpu.types.Buffer("FLOAT", w * h * 4, frame.rgba.reshape(-1))
            self._texture = gpu.types.GPUTexture((w, h), format="RGBA32F", data=data)
            self._texture_seq = frame.seq
        # The viewport's colour buffer is scene-linear (Blender applies the view transform when
        # it shows it); the frame is premultiplied linear, so it goes in as it is.
        gpu.state.blend_set("ALPHA_PREMULT")
        self.bind_display_space_shader(scene)
        _draw_texture(self._texture)
        self.unbind_display_space_shader()
        gpu.state.blend_set("NONE")


# ------------------------------------------------------------------ viewport helpers

def new_viewport_session(settings: render_client.RenderSettings, coarse_scale: float = 0.5) -> viewport.ViewportSession:
    """A viewport session whose worker is stopped by :func:`unregister` if still running."""
    session = viewport.ViewportSession(settings, coarse_scale=coarse_scale)
    _viewport_sessions.add(session)
    return session


def _ensure_viewport_timer() -> None:
    if not bpy.app.timers.is_registered(_viewport_tick):
        bpy.app.timers.register(_viewport_tick, first_interval=VIEWPORT_TICK_S, persistent=True)


def _viewport_tick() -> Optional[float]:
    """bpy.app.timers callback: ask viewports with something new to show to redraw.

    Returns None (the timer ends) once no viewport uses the engine; view_update starts it again.
    """
    now = time.monotonic()
    for engine in list(_viewport_engines.values()):
        view = engine._view
        try:
            if view is not None and view.wants_redraw(now):
                engine.tag_redraw()
        except Exception:  # a bug must not unregister the timer (Blender drops timers that raise)
            log.exception("viewport redraw check failed")
    return VIEWPORT_TICK_S if len(_viewport_engines) else None


def _draw_texture(texture) -> None:
    """Draw ``texture`` over the whole region (identity matrices: the quad spans clip space)."""
    import gpu
    from gpu_extras.batch import batch_for_shader
    from mathutils import Matrix

    shader = gpu.shader.from_builtin("IMAGE")
    corners = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))
    uvs = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    batch = batch_for_shader(shader, "TRIS", {"pos": corners, "texCoord": uvs}, indices=((0, 1, 2), (2, 3, 0)))
    with gpu.matrix.push_pop(), gpu.matrix.push_pop_projection():
        gpu.matrix.load_identity()
        gpu.matrix.load_projection_matrix(Matrix.Identity(4))
        shader.uniform_sampler("image", texture)
        batch.draw(shader)


def _draw_message(text: str, width: int, height: int) -> None:
    """Draw ``text`` centred in the region (a problem the person should see, e.g. no server)."""
    import blf
    import gpu
    from mathutils import Matrix

    font = 0
    size = 14.0 * bpy.context.preferences.system.ui_scale
    pixels = Matrix(((2.0 / width, 0.0, 0.0, -1.0), (0.0, 2.0 / height, 0.0, -1.0),
                     (0.0, 0.0, -1.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
    lines = textwrap.wrap(text, width=max(20, int(width / (0.55 * size)) - 4))
    with gpu.matrix.push_pop(), gpu.matrix.push_pop_projection():
        gpu.matrix.load_identity()
        gpu.matrix.load_projection_matrix(pixels)
        blf.size(font, size)
        blf.color(font, 1.0, 0.45, 0.35, 1.0)
        y = height / 2.0 + 0.7 * size * (len(lines) - 1)
        for line in lines:
            w, _ = blf.dimensions(font, line)
            blf.position(font, max(4.0, (width - w) / 2.0), y, 0.0)
            blf.draw(font, line)
            y -= 1.4 * size


def stop_viewports(timeout_s: float = 3.0) -> None:
    """Stop every viewport worker and the redraw timer (unregister, tests)."""
    for session in list(_viewport_sessions):
        if not session.close(timeout_s):
            log.warning("a viewport render thread did not stop within %g s", timeout_s)
    _viewport_sessions.clear()
    _viewport_engines.clear()
    if bpy.app.timers.is_registered(_viewport_tick):
        bpy.app.timers.unregister(_viewport_tick)


# ------------------------------------------------------------------ cache invalidation

def _note_geometry_updates(depsgraph) -> None:
    """Bump the stamp of every mesh whose geometry the depsgraph reports as changed."""
    for update in depsgraph.updates:
        if not update.is_updated_geometry:
            continue
        idb = update.id.original
        data = idb.data if isinstance(idb, bpy.types.Object) and idb.type == "MESH" else idb
        if isinstance(data, bpy.types.Mesh):
            _stamps[data.session_uid] = _stamps.get(data.session_uid, 0) + 1


@bpy.app.handlers.persistent
def _on_depsgraph_update(_scene, depsgraph) -> None:
    _note_geometry_updates(depsgraph)


@bpy.app.handlers.persistent
def _on_load_post(*_args) -> None:
    clear_cache()
    _stamps.clear()


def clear_cache() -> None:
    """Forget every cached Gaussian set (the next render reads them from Blender again)."""
    _cache.clear()
    _merged[:] = [None, None]


class NSTUDIO_PT_splat_render(bpy.types.Panel):
    """Render properties of a scene that uses the splat engine."""

    bl_label = "Neural Studio Splats"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    COMPAT_ENGINES = {ENGINE_ID}

    @classmethod
    def poll(cls, context):
        return context.engine in cls.COMPAT_ENGINES

    def draw(self, context):
        settings = context.scene.nstudio_final_shot
        layout = self.layout
        layout.use_property_split = True
        layout.prop(settings, "endpoint")
        layout.prop(settings, "sh_degree")
        layout.prop(settings, "viewport_scale")


CLASSES = (NSTUDIO_FinalShotSettings, NSTUDIO_SplatRenderEngine, NSTUDIO_PT_splat_render)


def register() -> None:
    bpy.types.Scene.nstudio_final_shot = bpy.props.PointerProperty(type=NSTUDIO_FinalShotSettings)
    bpy.app.handlers.depsgraph_update_post.append(_on_depsgraph_update)
    bpy.app.handlers.load_post.append(_on_load_post)


def unregister() -> None:
    bpy.app.handlers.load_post.remove(_on_load_post)
    bpy.app.handlers.depsgraph_update_post.remove(_on_depsgraph_update)
    del bpy.types.Scene.nstudio_final_shot
    stop_viewports()
    clear_cache()
    _stamps.clear()
