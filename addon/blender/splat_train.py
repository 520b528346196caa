"""Splat training feature (bpy layer): "Capture and Train Gaussians" and its result handlers.

The operator is thin (STYLE.md): it gathers what the job needs into protocol arrays, hands it to
the add-on's session (the one client and job manager, `addon.blender.session`) and returns; the
server streams events back and the result handlers registered here turn them into Blender data
on the main thread, inside the session timer's time budget.

``nstudio.capture_and_train`` renders training views of the selected objects (or the whole scene)
with `addon.blender.capture`, creates an empty Gaussian object as the job's target, and submits
``splat.reconstruct``. Every ``partial`` replaces the target's Gaussians (the viewport shows
training live); the ``result`` writes the final Gaussians and stores the metrics as custom
properties (``nstudio_psnr``, ``nstudio_ssim``, ``nstudio_count``, ``nstudio_seconds``,
``nstudio_steps``). Both are written one attribute per timer step
(`addon.blender.importers.gaussians.update_gaussian_object_steps`), so a million Gaussians never
hold the UI for long. A cancelled job keeps the last partial already applied, whole (the server
also sends one on cancel, with the state at the step the cancel landed).

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

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty

from ..core import client as client_mod
from ..core import handlers
from ..core.splat_requests import empty_gaussians, reconstruct_inputs, reconstruct_params
from . import session

log = logging.getLogger(__name__)

RECONSTRUCT = "splat.reconstruct"

# Custom properties written on the target objects.
PROP_JOB = "nstudio_job"
PROP_PARTIALS = "nstudio_partials"
PROP_STEP = "nstudio_step"
PROP_STATE = "nstudio_train_state"
METRIC_PROPS = {"psnr": "nstudio_psnr", "ssim": "nstudio_ssim", "count": "nstudio_count",
                "seconds": "nstudio_seconds", "steps": "nstudio_steps"}


# ------------------------------------------------------------------ result handlers

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


# ------------------------------------------------------------------ gathering and submitting

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

    session.require_pipeline(RECONSTRUCT)
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

    live = session.require_pipeline(RECONSTRUCT)
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


# ------------------------------------------------------------------ operator

class NSTUDIO_OT_capture_and_train(bpy.types.Operator):
    """Render training views of the selected objects (or the scene) and train Gaussians on them on the server"""

    bl_idname = "nstudio.capture_and_train"
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
            session.require_pipeline(RECONSTRUCT)
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


CLASSES = (NSTUDIO_OT_capture_and_train,)


def register() -> None:
    handlers.register_result_handler(RECONSTRUCT, on_reconstruct_result, on_partial=on_reconstruct_partial)


def unregister() -> None:
    handlers.unregister_result_handler(RECONSTRUCT)
