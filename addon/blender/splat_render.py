"""Render Splats feature (bpy layer): render Gaussian objects from the scene camera on the server.

``nstudio.render_splats`` renders the selected Gaussian objects (moved to the world frame and
merged) from the scene camera over the frame range (or the current frame) through
``splat.render``; frames stream into a Blender image as they arrive, and the result becomes PNG
files (`addon.core.formats.png`) that the image then points at (an image sequence for more than
one frame). The operator is thin; the result handlers below write one frame per timer step.
"""

from __future__ import annotations

import logging
import os
import tempfile

import bpy
import numpy as np
from bpy.props import BoolProperty, FloatVectorProperty, StringProperty

from ..core import client as client_mod
from ..core import handlers
from ..core.colour import frame_to_rgba8
from ..core.formats.png import write_png
from ..core.splat_requests import frame_path
from . import session

log = logging.getLogger(__name__)

RENDER = "splat.render"

# Custom properties written on the target image.
PROP_RENDER_DIR = "nstudio_render_dir"
PROP_RENDER_FRAME_START = "nstudio_frame_start"
#: On the target image: the rendered Gaussians' colours are sRGB-encoded already.
PROP_RENDER_SRGB = "nstudio_frames_srgb"
PROP_RENDER_FRAMES = "nstudio_frames"


# ------------------------------------------------------------------ result handlers

def _render_image(job):
    image = bpy.data.images.get(job.target) if job.target else None
    if image is None:
        log.warning("splat.render job %s: target image %r is gone; frames not written", job.key, job.target)
    return image


def _show_frame(image, rgba8: np.ndarray) -> None:
    """Put one frame into the Blender image (float pixels, row 0 at the bottom)."""
    h, w = rgba8.shape[:2]
    if tuple(image.size) != (w, h):
        image.scale(w, h)
    image.pixels.foreach_set(session.preview_pixels(rgba8))
    image.update()


def on_render_partial(job, outputs: dict) -> None:
    """A ``splat.render`` frame as it arrives: shown in the target image (a live preview).

    Partials may be dropped when newer ones arrive, so files are written from the result only.
    """
    image = _render_image(job)
    if image is None or "rgb" not in outputs:
        return
    _show_frame(image, frame_to_rgba8(np.asarray(outputs["rgb"]), np.asarray(outputs["alpha"]),
                                      bool(image.get(PROP_RENDER_SRGB, False))))


def on_render_result(job, outputs: dict):
    """The ``splat.render`` result: one PNG per frame, then the image points at the files.

    Returns a generator: one frame written per step, so a long animation never holds
    Blender's main thread for long.
    """
    image = _render_image(job)
    if image is None:
        return None
    return _write_frames(image, outputs)


def _write_frames(image, outputs: dict):
    directory = image.get(PROP_RENDER_DIR) or os.path.join(tempfile.gettempdir(), "neural_studio", "splats")
    start = int(image.get(PROP_RENDER_FRAME_START, 1))
    os.makedirs(directory, exist_ok=True)
    rgb, alpha = outputs["rgb"], outputs["alpha"]
    srgb = bool(image.get(PROP_RENDER_SRGB, False))
    paths = []
    for i in range(len(rgb)):
        path = frame_path(directory, start + i)
        write_png(path, frame_to_rgba8(np.asarray(rgb[i]), np.asarray(alpha[i]), srgb))
        paths.append(path)
        yield path
    # Point the image at the files (a sequence for an animation), so it is saved with the .blend.
    image.source = "FILE"
    image.filepath = paths[0]
    if len(paths) > 1:
        image.source = "SEQUENCE"
    image.reload()
    image[PROP_RENDER_FRAMES] = len(paths)
    log.info("splat.render: %d frame(s) written to %s", len(paths), directory)
    yield "image"


# ------------------------------------------------------------------ gathering and submitting

def camera_path(scene, animation: bool) -> dict:
    """The scene camera as a ``splat.render`` cameras map: every frame of the range, or the current one.

    Returns:
        cameras map with T frames (``fps``, ``near``/``far`` from the camera's clipping).

    Raises:
        ValueError: no perspective scene camera, or an empty frame range.
    """
    from .importers import camera_path as camera_path_mod

    if animation:
        start, end = scene.frame_start, scene.frame_end
    else:
        start = end = scene.frame_current
    cams = camera_path_mod.camera_path_from_scene(scene, scene.camera, start, end)
    cams["near"] = float(scene.camera.data.clip_start)
    cams["far"] = float(scene.camera.data.clip_end)
    return cams


def world_gaussians(objects) -> dict:
    """The Gaussians of several objects, moved to the world frame and merged into one set."""
    from ..core import gaussian_transform
    from .importers import gaussians as gaussian_objects

    sets = [gaussian_transform.transform_gaussians(gaussian_objects.read_gaussians(o),
                                                   np.array(o.matrix_world, dtype=np.float64))
            for o in objects if len(o.data.vertices)]
    if not sets:
        raise ValueError("the selected Gaussian objects hold no Gaussians yet")
    return gaussian_transform.merge_gaussians(sets)


def frames_are_srgb(objects) -> bool:
    """Whether renders of ``objects`` come out sRGB-encoded: all of them hold sRGB Gaussians.

    The same rule as the F12 render engine: a mix of spaces is rendered as linear (and said).
    """
    from .importers import gaussians as gaussian_objects

    spaces = {o.get(gaussian_objects.PROP_COLOR_SPACE, "linear") for o in objects}
    if len(spaces) > 1:
        log.warning("Render Splats: the objects mix colour spaces %s; writing them as linear", sorted(spaces))
    return spaces == {"srgb"}


def start_render(context, objects, animation: bool, directory: str, background=None):
    """Submit ``splat.render`` of ``objects`` from the scene camera; frames go to ``directory``.

    Returns:
        (job record, target image).

    Raises:
        RuntimeError, ValueError, addon.core.client.ClientError: as :func:`start_reconstruction`.
    """
    live = session.require_pipeline(RENDER)
    scene = context.scene
    cams = camera_path(scene, animation)
    gaussians = world_gaussians(objects)
    params = {} if background is None else {"background": [float(c) for c in background]}
    name = f"{scene.name} Splat Render"
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.new(name, cams["width"], cams["height"], alpha=True)
    image.use_fake_user = True  # keeps the image (and its settings) in the saved file
    image[PROP_RENDER_DIR] = directory
    image[PROP_RENDER_FRAME_START] = scene.frame_start if animation else scene.frame_current
    image[PROP_RENDER_SRGB] = frames_are_srgb(objects)
    record = live.submit(scene, RENDER, params=params, inputs={"gaussians": gaussians, "cameras": cams},
                         target=image.name)
    return record, image


def resolve_directory(path: str) -> str:
    """An output folder: a ``//`` path relative to the saved .blend, else the temp folder."""
    if path.startswith("//") and not bpy.data.filepath:
        return os.path.join(tempfile.gettempdir(), "neural_studio", path[2:] or "splats")
    return os.path.abspath(bpy.path.abspath(path))


# ------------------------------------------------------------------ operator

class NSTUDIO_OT_render_splats(bpy.types.Operator):
    """Render the selected Gaussian objects from the scene camera on the server into an image (sequence)"""

    bl_idname = "nstudio.render_splats"
    bl_label = "Render Splats"
    bl_options = {"REGISTER"}

    animation: BoolProperty(name="Animation", default=False, description="Render the scene's frame range")
    directory: StringProperty(name="Output Folder", default="//splats/", subtype="DIR_PATH")
    use_background: BoolProperty(name="Background", default=False, description="Fill empty pixels with a colour")
    background: FloatVectorProperty(name="Colour", subtype="COLOR", size=3, min=0.0, max=1.0,
                                    default=(0.05, 0.05, 0.05))

    @classmethod
    def poll(cls, context):
        from .importers import gaussians as gaussian_objects

        return any(gaussian_objects.is_gaussian_object(o) for o in context.selected_objects)

    def execute(self, context):
        from .importers import gaussians as gaussian_objects

        objects = [o for o in context.selected_objects if gaussian_objects.is_gaussian_object(o)]
        try:
            record, image = start_render(context, objects, self.animation, resolve_directory(self.directory),
                                         self.background if self.use_background else None)
        except (RuntimeError, ValueError, client_mod.ClientError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"rendering {len(objects)} Gaussian object(s) into image '{image.name}'")
        return {"FINISHED"}


CLASSES = (NSTUDIO_OT_render_splats,)


def register() -> None:
    handlers.register_result_handler(RENDER, on_render_result, on_partial=on_render_partial)


def unregister() -> None:
    handlers.unregister_result_handler(RENDER)
