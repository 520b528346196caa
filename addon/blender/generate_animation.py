"""img2img over the scene's rendered animation, frame by frame with a fixed seed (bpy layer;
bookkeeping in core/generate_animation.py).

"Generate Animation" (``nstudio.generate_animation``) goes through the scene's frame range:
each frame's source is the file Render Animation wrote (``scene.render.frame_path``), or, when
there is none, the frame is rendered and written there first; then one ``image.generate`` job
(img2img with the panel's settings, ControlNet sources made for that frame, the same seed for
every frame) runs; its image is written to ``<Animation Output>/generated_<frame>.png``. One job
is in flight at a time; progress shows in the Generate panel; "Cancel" stops after cancelling
the job in flight. ``step()`` drives the run (a ``bpy.app.timers`` callback).
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Optional

import bpy
import numpy as np

from ..core import client as client_mod
from ..core import generate_animation as anim
from ..core import generate_math
from . import session
from .generate_images import PIPELINE, image_to_srgb8
from .generate_sources import controlnet_params, scene_inputs

log = logging.getLogger(__name__)

_RUN: Optional[anim.AnimationRun] = None
_RECORD = None   # the JobRecord of the frame in flight (its key changes once accepted)
STEP_INTERVAL_S = 0.1


def current_run() -> Optional[anim.AnimationRun]:
    return _RUN


def frame_source(scene, frame: int) -> np.ndarray:
    """The rendered frame as a wire image: Render Animation's file, or rendered and saved now."""
    path = bpy.path.abspath(scene.render.frame_path(frame=frame))
    if not os.path.exists(path):
        scene.frame_set(frame)
        bpy.ops.render.render(scene=scene.name)
        # As Render Animation would have written it (a still render writes no frame number).
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        bpy.data.images["Render Result"].save_render(filepath=path, scene=scene)
        if not os.path.exists(path):
            raise RuntimeError(f"frame {frame} was rendered but not written to {path}")
    image = bpy.data.images.load(path, check_existing=False)
    try:
        return image_to_srgb8(image)
    finally:
        bpy.data.images.remove(image)


def write_frame(job, outputs: dict) -> None:
    """The result of one frame's job: its first image written as a PNG of the sequence."""
    parsed = anim.parse_target(job.target)
    run = _RUN
    if parsed is None or run is None or parsed[0] != run.run_id or run.finished:
        log.info("an animation frame's result arrived after its run ended; not written")
        return
    frame = parsed[1]
    pixels = np.asarray(outputs["images"])[0]
    path = anim.frame_path(run.folder, frame)
    os.makedirs(run.folder, exist_ok=True)
    h, w = pixels.shape[:2]
    image = bpy.data.images.new(f"nstudio frame {frame}", w, h, alpha=False)
    try:
        image.pixels.foreach_set(generate_math.srgb8_to_pixels(pixels))
        image.filepath_raw = path
        image.file_format = "PNG"
        image.save()
    finally:
        bpy.data.images.remove(image)
    run.frame_written(frame)
    _show_progress(run)


def start(context) -> anim.AnimationRun:
    """Begin a run over the scene's frame range. Raises RuntimeError/ValueError."""
    global _RUN
    if _RUN is not None and not _RUN.finished:
        raise RuntimeError("an animation is already being generated; cancel it first")
    session.require_pipeline(PIPELINE)
    scene = context.scene
    settings = scene.nstudio_generate
    frames = anim.frame_range(scene.frame_start, scene.frame_end, scene.frame_step)
    folder = bpy.path.abspath(settings.animation_output or "//generated/")
    if not folder:
        raise ValueError("set the Animation Output folder (or save the .blend first)")
    controlnet_params(settings)   # a bad ControlNet entry fails now, not at frame 1's job
    _RUN = anim.AnimationRun(uuid.uuid4().hex[:8], frames, folder, scene=scene.name)
    _show_progress(_RUN)
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=STEP_INTERVAL_S)
    return _RUN


def _timer():
    try:
        busy = step()
    except Exception:   # never let a timer die silently with the run half done
        log.exception("animation step failed")
        if _RUN is not None:
            _RUN.fail("internal error; see the log")
        busy = False
    return STEP_INTERVAL_S if busy else None


def step() -> bool:
    """Advance the run: notice the in-flight job's end, submit the next frame. Returns True
    while the run goes on."""
    global _RECORD
    run = _RUN
    if run is None or run.finished:
        return False
    live = session.current()
    if run.current is not None:
        record = _RECORD
        if record is None or live is None or record.key not in live.manager.jobs:
            run.fail(f"frame {run.current}: the job was lost (disconnected?)")
        elif record.finished and record.state != "done":
            run.job_ended(record.state, record.message)
        elif record.state == "done" and record.applied and run.current is not None:
            run.fail(f"frame {run.current}: the result was applied but no frame was written")
        _show_progress(run)
        return not run.finished
    frame = run.next_frame()
    if frame is None:
        _show_progress(run)
        return False
    scene = bpy.data.scenes.get(run.scene)
    if scene is None or live is None or not live.client.connected:
        run.fail("the scene or the connection is gone")
        _show_progress(run)
        return False
    try:
        _RECORD = _submit_frame(live, scene, frame, run)
        run.submitted(frame, _RECORD.request_id)
    except (RuntimeError, ValueError, client_mod.ClientError) as error:
        run.fail(f"frame {frame}: {error}")
    _show_progress(run)
    return not run.finished


def _submit_frame(live, scene, frame: int, run: anim.AnimationRun):
    settings = scene.nstudio_generate
    image = frame_source(scene, frame)
    scene.frame_set(frame)   # sources (depth, pose) of this frame
    inputs = {"image": image, **scene_inputs(scene, settings, image)}
    params = generate_math.generate_params(settings.as_dict(), 0, 0, True)
    params["num_images"] = 1
    params.update(controlnet_params(settings))
    record = live.submit(scene, PIPELINE, params=params, inputs=inputs,
                         target=anim.frame_target(run.run_id, frame))
    return record


def cancel() -> bool:
    """Stop the run; the job in flight is cancelled on the server. Returns False if none ran."""
    run = _RUN
    if run is None or run.finished:
        return False
    record = _RECORD if run.current is not None else None
    run.cancel()
    live = session.current()
    if record is not None and live is not None and not record.finished:
        try:
            live.manager.cancel(record.key)
        except (KeyError, ValueError, client_mod.ClientError) as error:
            log.info("cancel of the frame's job: %s", error)
    _show_progress(run)
    return True


def _show_progress(run: anim.AnimationRun) -> None:
    scene = bpy.data.scenes.get(run.scene)
    if scene is None:
        return
    settings = scene.nstudio_generate
    done, total = run.progress
    settings.animation_done, settings.animation_total = done, total
    settings.animation_state = run.state if not run.message else f"{run.state}: {run.message}"
    session._tag_redraw()


class NSTUDIO_OT_generate_animation(bpy.types.Operator):
    """img2img over every frame of the rendered animation with a fixed seed, written as an
    image sequence"""

    bl_idname = "nstudio.generate_animation"
    bl_label = "Generate Animation"

    def execute(self, context):
        try:
            run = start(context)
        except (RuntimeError, ValueError, client_mod.ClientError) as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        self.report({"INFO"}, f"generating {len(run.frames)} frames into {run.folder}")
        return {"FINISHED"}


class NSTUDIO_OT_generate_animation_cancel(bpy.types.Operator):
    """Stop generating the animation"""

    bl_idname = "nstudio.generate_animation_cancel"
    bl_label = "Cancel Animation"

    def execute(self, context):
        if not cancel():
            self.report({"WARNING"}, "no animation is being generated")
            return {"CANCELLED"}
        return {"FINISHED"}


CLASSES = (NSTUDIO_OT_generate_animation, NSTUDIO_OT_generate_animation_cancel)


def unregister() -> None:
    global _RUN
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    _RUN = None
