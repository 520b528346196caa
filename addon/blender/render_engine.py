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

import logging
import time
from typing import Optional

import bpy
import numpy as np

from . import cameras, frame_guard, viewport_draw
from .render_settings import ENGINE_ID, render_params, render_settings, viewport_settings
from .scene_gaussians import merged_key, note_geometry_updates, scene_gaussians
from ..core import colour, render_client, viewport
from ..core.camera import render_size

log = logging.getLogger(__name__)

#: Blender's depth for "nothing here" (the value its own engines write for the background).
EMPTY_DEPTH = 1e10


# ------------------------------------------------------------------ gather

def camera_for_frame(scene, camera_obj, width: int, height: int) -> dict:
    """The cameras map (T = 1) of an evaluated Blender camera object at this frame (:func:`cameras.frame_cameras`).

    Raises:
        ValueError: no camera, or not a perspective camera.
    """
    return cameras.frame_cameras(scene, camera_obj, width, height)


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
        width, height = render_size(scene.render.resolution_x, scene.render.resolution_y,
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
            # No result at all: a frame with its Gaussian objects missing must never be written.
            # Rendered on its own, the error stops Blender before it writes; inside a final
            # shot's composite, frame_guard removes the main scene's frame once it is written.
            message = f"Neural Studio splat render: {exc}"
            log.error(message)
            frame_guard.note_failure(scene.name, scene.frame_current, message)
            self.report({"ERROR"}, message)
            self.error_set(message)
            return
        frame_guard.note_success(scene.name, scene.frame_current)
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
        cams = camera_for_frame(scene, camera, width, height)
        params = {**render_params(scene), "depth_front": True}  # the Depth pass: see below
        settings = render_settings(scene)
        n = len(gaussians["means"])
        self.update_stats("", f"Rendering {n:,} Gaussians on {settings.endpoint}")
        out = render_client.render(gaussians, cams, params, settings,
                                   should_cancel=self.test_break,
                                   on_progress=lambda s, t: self.update_progress(s / t if t else 0.0),
                                   keep_key=merged_key())  # uploaded once, by reference after
        rgb, alpha, depth = out["rgb"][0], out["alpha"][0], out["depth"][0]
        # The Depth pass the final shot compares with meshes is the front surface
        # (transmittance 0.5), not the expected depth, which lies behind it at contacts.
        depth = out["depth_front"][0] if "depth_front" in out else depth
        if spaces and all(s == "srgb" for s in spaces):
            rgb = colour.srgb_to_linear_premultiplied(rgb, alpha)
        elif "srgb" in spaces:
            log.warning("scene '%s' mixes linear and sRGB Gaussian objects; rendering all as linear", scene.name)
        return rgb, alpha, depth

    # -------------------------------------------------------------- viewport (main thread)

    def view_update(self, context, depsgraph):
        """Scene changed (or the viewport started): gather the Gaussians, hand them to the session."""
        scene = depsgraph.scene
        if self._view is None:
            # Its server settings come with set_scene below, before any request is sent.
            self._view = viewport_draw.new_viewport_session(render_client.RenderSettings(),
                                                            scene.nstudio_final_shot.viewport_scale)
            viewport_draw.add_engine(self)
        note_geometry_updates(depsgraph)
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
            camera = cameras.view_camera(region, rv3d)
            note = ""
        except ValueError as exc:
            camera, note = None, str(exc)
        view.view(camera, time.monotonic(), note)
        frame = view.frame()
        if frame is not None and camera is not None:
            self._draw_frame(depsgraph.scene, frame)
        message = view.error()
        if message:
            viewport_draw.draw_message(message, region.width, region.height)
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
        viewport_draw.draw_texture(self._texture)
        self.unbind_display_space_shader()
        gpu.state.blend_set("NONE")


CLASSES = (NSTUDIO_SplatRenderEngine,)


def unregister() -> None:
    viewport_draw.stop_viewports()
