"""Splat workflow operators: capture a scene and train Gaussians on it, render Gaussians (bpy layer).

Both operators are thin (STYLE.md): they gather what the job needs into protocol arrays, hand it
to the add-on's session (the one client and job manager, `addon.blender.session`) and return; the
server streams events back and the result handlers registered here turn them into Blender data
on the main thread, inside the session timer's time budget.

- ``neural_studio.capture_and_train``: renders training views of the selected objects (or the
  whole scene) with `addon.blender.capture`, creates an empty Gaussian object as the job's target, and
  submits ``splat.reconstruct``. Every ``partial`` replaces the target's Gaussians (the viewport
  shows training live); the ``result`` writes the final Gaussians and stores the metrics as
  custom properties (``nstudio_psnr``, ``nstudio_ssim``, ``nstudio_count``, ``nstudio_seconds``,
  ``nstudio_steps``). Both are written one attribute per timer step
  (`addon.blender.importers.gaussians.update_gaussian_object_steps`), so a million Gaussians never hold
  the UI for long. A cancelled job keeps the last partial already applied, whole (the server
  also sends one on cancel, with the state at the step the cancel landed).
- ``neural_studio.render_splats``: renders the selected Gaussian objects (moved to the world
  frame and merged) from the scene camera over the frame range (or the current frame) through
  ``splat.render``; the result becomes PNG files and a Blender image (an image sequence for
  more than one frame).

Capture runs on the main thread, one view at a time. Invoked from the UI (after its dialog),
the capture operator is modal: a window-manager timer renders one view per step
(`addon.blender.capture.capture_steps`), so Blender redraws and handles input between views; the
progress bar and the status bar show "Capturing view i/T", Esc cancels (the scene is restored,
nothing is submitted). Run from a script or in background mode (no window), it captures in one
blocking call with the same per-view progress. Views come from a generated layout (ring,
hemisphere, sphere) or from the selected camera objects ("Selected Cameras": each camera's own
placement, lens, sensor and shift at the capture resolution). A view takes about 0.03 s at 48 px
/ 8 Cycles samples on 2 cores, 0.1-0.2 s at 96 px / 16 samples; the training runs on the server.
"""

from __future__ import annotations

import logging
import os
import tempfile

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatVectorProperty, IntProperty, StringProperty

from ..core import client as client_mod
from ..core import handlers
from . import session
from ..core.colour import frame_to_rgba8
from ..core.formats.png import write_png
from ..core.formats.gaussians import K_BY_DEGREE

log = logging.getLogger(__name__)

RECONSTRUCT = "splat.reconstruct"
RENDER = "splat.render"

# Custom properties written on the target objects / images.
PROP_JOB = "nstudio_job"
PROP_PARTIALS = "nstudio_partials"
PROP_STEP = "nstudio_step"
PROP_STATE = "nstudio_train_state"
METRIC_PROPS = {"psnr": "nstudio_psnr", "ssim": "nstudio_ssim", "count": "nstudio_count",
                "seconds": "nstudio_seconds", "steps": "nstudio_steps"}
PROP_RENDER_DIR = "nstudio_render_dir"
PROP_RENDER_FRAME_START = "nstudio_frame_start"
#: On the target image: the rendered Gaussians' colours are sRGB-encoded already.
PROP_RENDER_SRGB = "nstudio_frames_srgb"
PROP_RENDER_FRAMES = "nstudio_frames"


# =============================================================================================
# Pure helpers (numpy only)
# =============================================================================================


def empty_gaussians(sh_degree: int = 0) -> dict:
    """A Gaussians map with no Gaussians: the target object before the first partial arrives.

    Args:
        sh_degree: SH degree 0-3 of the (empty) shN array.

    Returns:
        The PROTOCOL.md Gaussians map with N = 0.
    """
    k = K_BY_DEGREE[sh_degree]
    return {"means": np.zeros((0, 3), np.float32), "quats": np.zeros((0, 4), np.float32),
            "scales": np.zeros((0, 3), np.float32), "opacities": np.zeros((0,), np.float32),
            "sh0": np.zeros((0, 3), np.float32), "shN": np.zeros((0, k, 3), np.float32)}


def reconstruct_params(steps: int, sh_degree: int, test_every: int, max_gaussians: int,
                       partial_every: int | None = None, preview_every: int | None = None) -> dict:
    """The ``splat.reconstruct`` params for the operator's settings.

    Args:
        steps: optimisation steps.
        sh_degree: SH degree of the result.
        test_every: hold out every k-th view; 0 = none.
        max_gaussians: cap on the Gaussian count.
        partial_every: steps between live partials (default: about 20 per run, at least 25
            steps apart so sending them stays a small part of the training time).
        preview_every: steps between preview images (default: about 30 per run).

    Returns:
        The params map.
    """
    if partial_every is None:
        partial_every = max(25, steps // 20)
    if preview_every is None:
        preview_every = max(10, steps // 30)
    return {"steps": int(steps), "sh_degree": int(sh_degree), "test_every": int(test_every),
            "max_gaussians": int(max_gaussians), "partial_every": int(partial_every),
            "preview_every": int(preview_every)}


def reconstruct_inputs(captured: dict) -> dict:
    """The ``splat.reconstruct`` inputs from an `addon.blender.capture.capture` result.

    Args:
        captured: ``images`` [T, H, W, 4] linear straight alpha, ``cameras`` (T cameras),
            ``points`` [P, 3], ``colors`` [P, 3].

    Returns:
        The inputs map (points/colors only when there are any).
    """
    inputs = {"images": np.ascontiguousarray(captured["images"], dtype=np.float32),
              "cameras": captured["cameras"]}
    points = captured.get("points")
    if points is not None and len(points):
        inputs["points"] = np.ascontiguousarray(points, dtype=np.float32)
        inputs["colors"] = np.ascontiguousarray(np.clip(captured["colors"], 0.0, 1.0), dtype=np.float32)
    return inputs


def frame_path(directory: str, frame: int) -> str:
    """File of one rendered frame: ``<directory>/splats_0001.png``."""
    return os.path.join(directory, f"splats_{frame:04d}.png")


# =============================================================================================
# Result handlers
# =============================================================================================


def _target_object(job):
    obj = bpy.data.objects.get(job.target) if job.target else None
    if obj is None:
        log.warning("%s job %s: target object %r is gone; result not applied", job.pipeline, job.key, job.target)
    return obj


def on_reconstruct_partial(job, outputs: dict):
    """A ``splat.reconstruct`` partial: the Gaussians so far replace the target's (live viewport).

    Returns a generator that writes one attribute per step (the job manager steps it within its
    time budget), or None when there is nothing to apply.
    """
    from .importers import gaussians as gaussian_objects

    obj = _target_object(job)
    gaussians = outputs.get("gaussians")
    if obj is None or not isinstance(gaussians, dict):
        return None
    steps = gaussian_objects.update_gaussian_object_steps(obj, gaussians, color_space=outputs.get("color_space"))
    return _apply_partial(job, steps, outputs.get("step"))


def _apply_partial(job, steps, step):
    obj = yield from steps
    if obj is None:
        return  # the target was deleted between two steps (logged by the importer)
    obj[PROP_PARTIALS] = int(obj.get(PROP_PARTIALS, 0)) + 1
    if step is not None:
        obj[PROP_STEP] = int(step)
    obj[PROP_JOB] = job.id
    obj[PROP_STATE] = "training"


def on_reconstruct_result(job, outputs: dict):
    """The ``splat.reconstruct`` result: final Gaussians, metrics as custom properties.

    Returns a generator that writes one attribute per step, or None when the target is gone.
    """
    from .importers import gaussians as gaussian_objects

    obj = _target_object(job)
    if obj is None:
        return None
    steps = gaussian_objects.update_gaussian_object_steps(obj, outputs["gaussians"],
                                                          color_space=outputs.get("color_space"))
    return _apply_result(job, steps, outputs.get("metrics") or {})


def _apply_result(job, steps, metrics: dict):
    obj = yield from steps
    if obj is None:
        return  # the target was deleted between two steps (logged by the importer)
    for key, prop in METRIC_PROPS.items():
        if key in metrics:
            obj[prop] = int(metrics[key]) if key in ("count", "steps") else float(metrics[key])
    if "steps" in metrics:
        obj[PROP_STEP] = int(metrics["steps"])
    obj[PROP_JOB] = job.id
    obj[PROP_STATE] = "done"
    log.info("%s: %s Gaussians, held-out PSNR %.2f dB", obj.name, metrics.get("count"), metrics.get("psnr", float("nan")))


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


# =============================================================================================
# Gathering (bpy)
# =============================================================================================


def _live_session():
    """The connected session, or a RuntimeError a person can act on."""
    live = session.current()
    if live is None or not live.client.connected:
        raise RuntimeError("not connected to a Neural Studio server: press Connect in the Neural Studio panel")
    return live


def _check_available(live, pipeline: str) -> None:
    info = ((live.client.welcome or {}).get("pipelines") or {}).get(pipeline)
    if info is None:
        raise RuntimeError(f"the server has no '{pipeline}' pipeline")
    if not info.get("available", False):
        raise RuntimeError(f"'{pipeline}' cannot run on the server: {info.get('reason') or 'no reason given'}")


def capture_objects(context, source: str) -> list:
    """The objects a capture covers: the selected mesh-like objects, or every visible one.

    Gaussian objects are never captured (their proxy is a display aid, not scene content).

    Raises:
        ValueError: nothing to capture, naming what to select.
    """
    from .capture import MESH_LIKE_TYPES
    from .importers import gaussians as gaussian_objects

    if source == "SELECTED":
        pool = context.selected_objects
    else:
        pool = [o for o in context.scene.objects if o.visible_get()]
    objects = [o for o in pool if o.type in MESH_LIKE_TYPES and not gaussian_objects.is_gaussian_object(o)]
    if not objects:
        what = "select the objects to capture (or choose Whole Scene)" if source == "SELECTED" else \
            "the scene has no visible mesh objects"
        raise ValueError(f"nothing to capture: {what}")
    return objects


def selected_cameras(context) -> list:
    """The selected camera objects, sorted by name (the view order, so held-out views are stable).

    Raises:
        ValueError: no camera object is selected, naming what to select.
    """
    cameras = sorted((o for o in context.selected_objects if o.type == "CAMERA"), key=lambda o: o.name)
    if not cameras:
        raise ValueError("Selected Cameras layout: no camera object is selected; select the cameras to "
                         "render the training views from (or choose a generated layout)")
    return cameras


def target_name(objects) -> str:
    """Default name of the Gaussian object trained on ``objects``."""
    return f"{objects[0].name} Splats" if objects else "Scene Splats"


def start_reconstruction(context, objects, options, steps: int = 3000, sh_degree: int = 3, test_every: int = 8,
                         max_gaussians: int = 300_000, name: str = "", partial_every: int | None = None,
                         preview_every: int | None = None, extra_params: dict | None = None,
                         cameras=None, on_view=None):
    """Capture ``objects``, create the target Gaussian object and submit ``splat.reconstruct``.

    The blocking form of the capture operator (scripts, background mode); the demo and tests
    call it directly.

    Args:
        context: a bpy context (scene, window manager).
        objects: the objects to capture.
        options: an `addon.blender.capture.CaptureOptions`.
        steps, sh_degree, test_every, max_gaussians, partial_every, preview_every: see
            :func:`reconstruct_params`.
        name: name of the Gaussian object (default "<first object> Splats").
        extra_params: further ``splat.reconstruct`` params (learning rates, densification; the
            pipeline's schema documents them), validated by the server.
        cameras: camera objects to render the views from instead of options' generated layout
            (see `addon.blender.capture.capture`).
        on_view: ``on_view(i, total)`` after each rendered view (i = 1 .. total).

    Returns:
        (job record, target object, capture dict).

    Raises:
        RuntimeError: not connected or the pipeline is unavailable.
        ValueError: bad capture options, unusable cameras or nothing to capture.
        addon.core.client.ClientError: the submit could not be sent.
    """
    from . import capture as capture_mod

    _check_available(_live_session(), RECONSTRUCT)
    captured = capture_mod.capture(objects, options, scene=context.scene, cameras=cameras, on_view=on_view)
    params = reconstruct_params(steps, sh_degree, test_every, max_gaussians, partial_every, preview_every)
    params.update(extra_params or {})
    record, obj = submit_reconstruction(context, captured, params, name or target_name(objects))
    return record, obj, captured


def submit_reconstruction(context, captured: dict, params: dict, name: str):
    """Create the (empty) target Gaussian object and submit ``splat.reconstruct`` of a capture.

    Args:
        context: a bpy context (its scene gets the object and the job record).
        captured: an `addon.blender.capture.capture` result.
        params: the ``splat.reconstruct`` params (:func:`reconstruct_params` and extras).
        name: name of the Gaussian object.

    Returns:
        (job record, target object).

    Raises:
        RuntimeError: not connected or the pipeline is unavailable.
        addon.core.client.ClientError: the submit could not be sent.
    """
    from .importers import gaussians as gaussian_objects

    live = _live_session()
    _check_available(live, RECONSTRUCT)
    obj = gaussian_objects.create_gaussian_object(name, empty_gaussians(int(params.get("sh_degree", 3))),
                                                  collection=context.scene.collection, color_space="linear")
    obj[PROP_PARTIALS] = 0
    obj[PROP_STATE] = "queued"
    try:
        record = live.submit(context.scene, RECONSTRUCT, params=params, inputs=reconstruct_inputs(captured),
                             target=obj.name)
    except Exception:
        bpy.data.objects.remove(obj)  # nothing was submitted: do not leave an empty object behind
        raise
    return record, obj


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
    live = _live_session()
    _check_available(live, RENDER)
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


# =============================================================================================
# Operators
# =============================================================================================


class NSTUDIO_OT_capture_and_train(bpy.types.Operator):
    """Render training views of the selected objects (or the scene) and train Gaussians on them on the server"""

    bl_idname = "neural_studio.capture_and_train"
    bl_label = "Capture and Train Gaussians"
    bl_options = {"REGISTER"}

    source: EnumProperty(name="Capture", items=(
        ("SELECTED", "Selected Objects", "Only the selected objects; everything else is hidden while capturing"),
        ("SCENE", "Whole Scene", "Every visible object")), default="SELECTED")
    layout: EnumProperty(name="Camera Layout", items=(
        ("hemisphere", "Hemisphere", "Cameras spread over the upper hemisphere (objects on a ground)"),
        ("sphere", "Sphere", "Cameras all around"),
        ("ring", "Ring", "One ring of cameras at 25 degrees elevation"),
        ("cameras", "Selected Cameras", "Render from the selected camera objects (their own placement, lens, "
                                        "sensor and shift) at the capture resolution; Views is ignored")),
        default="hemisphere")
    views: IntProperty(name="Views", default=48, min=2, max=1000, description="Number of training views")
    resolution: IntProperty(name="Resolution", default=128, min=16, max=4096, description="Square view size, pixels")
    engine: EnumProperty(name="Render Engine", items=(
        ("CYCLES", "Cycles", ""), ("EEVEE", "EEVEE", ""), ("WORKBENCH", "Workbench", "")), default="CYCLES")
    samples: IntProperty(name="Samples", default=32, min=1, max=4096)
    steps: IntProperty(name="Training Steps", default=3000, min=1, max=1_000_000)
    test_every: IntProperty(name="Hold Out Every", default=8, min=0, max=1000,
                            description="Hold out every k-th view to measure quality; 0 = none")
    max_gaussians: IntProperty(name="Max Gaussians", default=300_000, min=1, max=50_000_000)
    sh_degree: IntProperty(name="SH Degree", default=3, min=0, max=3)
    # Set by invoke(): the dialog's OK then captures modally. Scripts (EXEC) capture blocking.
    interactive: BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"})

    # Modal state (set by _start_modal).
    _steps = None
    _timer = None
    _total = 0
    _name = ""

    def invoke(self, context, event):
        self.interactive = True
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        from . import capture as capture_mod

        try:
            cameras = selected_cameras(context) if self.layout == "cameras" else None
            objects = capture_objects(context, self.source)
            # With cameras, capture ignores the layout and count.
            options = capture_mod.CaptureOptions(layout=self.layout, count=self.views, width=self.resolution,
                                                 height=self.resolution, engine=self.engine, samples=self.samples)
            total = len(cameras) if cameras else self.views
            _check_available(_live_session(), RECONSTRUCT)
            if self.interactive and context.window is not None:
                steps = capture_mod.capture_steps(objects, options, context.scene, cameras)
                return self._start_modal(context, steps, total, target_name(objects))
            wm = context.window_manager
            wm.progress_begin(0.0, float(total))
            try:
                _, obj, captured = start_reconstruction(
                    context, objects, options, steps=self.steps, sh_degree=self.sh_degree,
                    test_every=self.test_every, max_gaussians=self.max_gaussians, cameras=cameras,
                    on_view=lambda done, total: wm.progress_update(float(done)))
            finally:
                wm.progress_end()
        except (RuntimeError, ValueError, client_mod.ClientError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self._report_submitted(captured, obj)
        return {"FINISHED"}

    # -- modal capture: one view per timer event ------------------------------------------------

    def _start_modal(self, context, steps, total: int, name: str):
        self._steps, self._total, self._name = steps, total, name
        wm = context.window_manager
        wm.progress_begin(0.0, float(total))
        self._timer = wm.event_timer_add(0.01, window=context.window)
        wm.modal_handler_add(self)
        self._show(context, 0)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._stop(context)
            self.report({"WARNING"}, "capture cancelled: nothing was submitted")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}  # Blender stays responsive between views
        try:
            done, _ = next(self._steps)
        except StopIteration as stop:
            captured = stop.value
            self._stop(context)
            return self._submit(context, captured)
        except (RuntimeError, ValueError, ReferenceError) as exc:  # ReferenceError: an object was deleted
            self._stop(context)
            self.report({"ERROR"}, f"capture failed: {exc}")
            return {"CANCELLED"}
        self._show(context, done)
        return {"RUNNING_MODAL"}

    def cancel(self, context):
        self._stop(context)

    def _show(self, context, done: int) -> None:
        """Progress after ``done`` views; the status bar names the view rendered next."""
        context.window_manager.progress_update(float(done))
        if context.workspace is not None:
            context.workspace.status_text_set(f"Capturing view {min(done + 1, self._total)}/{self._total} "
                                              f"(Esc to cancel)")

    def _stop(self, context) -> None:
        """End the modal capture: restore the scene (closing the steps), timer, progress, status text."""
        if self._steps is not None:
            self._steps.close()
            self._steps = None
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        if self._total:
            wm.progress_end()
            self._total = 0
        if context.workspace is not None:
            context.workspace.status_text_set(None)

    def _submit(self, context, captured: dict):
        params = reconstruct_params(self.steps, self.sh_degree, self.test_every, self.max_gaussians)
        try:
            _, obj = submit_reconstruction(context, captured, params, self._name)
        except (RuntimeError, client_mod.ClientError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self._report_submitted(captured, obj)
        return {"FINISHED"}

    def _report_submitted(self, captured: dict, obj) -> None:
        views = len(captured["cameras"]["world_from_camera"])
        self.report({"INFO"}, f"captured {views} views in {captured['seconds']:.1f} s; training "
                              f"'{obj.name}' on the server ({self.steps} steps)")


class NSTUDIO_OT_render_splats(bpy.types.Operator):
    """Render the selected Gaussian objects from the scene camera on the server into an image (sequence)"""

    bl_idname = "neural_studio.render_splats"
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


class NSTUDIO_PT_splats(bpy.types.Panel):
    bl_label = "Gaussian Splats"
    bl_idname = "NSTUDIO_PT_splats"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Neural Studio"

    def draw(self, context):
        layout = self.layout
        layout.operator(NSTUDIO_OT_capture_and_train.bl_idname, icon="RENDER_RESULT")
        layout.operator(NSTUDIO_OT_render_splats.bl_idname, icon="RENDER_STILL")
        obj = context.active_object
        if obj is not None and METRIC_PROPS["psnr"] in obj:
            col = layout.column(align=True)
            col.label(text=f"PSNR {obj[METRIC_PROPS['psnr']]:.2f} dB, SSIM {obj.get(METRIC_PROPS['ssim'], 0.0):.3f}")
            col.label(text=f"{obj.get(METRIC_PROPS['count'], 0):,} Gaussians in {obj.get(METRIC_PROPS['seconds'], 0.0):.0f} s")


CLASSES = (NSTUDIO_OT_capture_and_train, NSTUDIO_OT_render_splats, NSTUDIO_PT_splats)


def register() -> None:
    handlers.register_result_handler(RECONSTRUCT, on_reconstruct_result, on_partial=on_reconstruct_partial)
    handlers.register_result_handler(RENDER, on_render_result, on_partial=on_render_partial)


def unregister() -> None:
    handlers.unregister_result_handler(RENDER)
    handlers.unregister_result_handler(RECONSTRUCT)
