"""`motion.recover`: video -> a body's motion in Blender's world (PROTOCOL.md Motion).

Steps: decode the video (PyAV) or take the client's frames or keypoints; detect 2D keypoints
and metric 3D landmarks per frame (MediaPipe Pose, inside its wheel); fit a body over the whole
clip at once (fit.py: one shape, a pose per frame, robust reprojection, 3D bone directions,
smoothness, pose and joint-limit priors); place a static camera and the ground from the feet
(ground.py), or, given a moving camera's path of unknown scale, make that path metric and Z-up
from the body (camera_path.py); refine with foot contacts on the ground (no skating on contact
frames).
Methods: METHODS.md 2.C (SLAHMR's staged optimisation, HuMoR's contact terms, TRAM's
metric scale from the body), reimplemented without learned priors.

Inputs (one of): ``video`` (encoded file bytes), ``frames [T, H, W, 3] |u1`` with ``fps``, or
``keypoints2d [T, K, 3]`` with ``width``, ``height``, ``fps`` and ``params.keypoint_format``.
Optional ``camera`` with intrinsics (default: centred principal point, ``fov_degrees``) and,
for a moving camera, ``world_from_camera [T, 4, 4]`` (Blender's camera convention, any frame,
any scale: e.g. Blender's camera solver), one per fitted frame or one per input frame.
Outputs: the Motion map (skeleton, rotations, root_translation, joints, keypoints3d, contacts,
confidence, camera, body, mesh for Anny) plus ``keypoints2d [T, K, 3]`` as detected (MediaPipe's
33 for video/frames; the client's own otherwise).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from addon.wire.contracts import FLOAT, MOTION_FIELDS
from addon.wire.schema import Array, PipelineError, Struct, Value

from ..base import Job, ModelSource, ModelSpec, Pipeline
from .keypoints import FORMATS

log = logging.getLogger(__name__)

#: Where the SMPL family's files are looked for when no model registry resolved them.
MODELS_DIR_ENV = "NSTUDIO_MODELS_DIR"
SMPL_FILES = {"smpl": "SMPL_NEUTRAL.pkl", "smplx": "SMPLX_NEUTRAL.npz"}


@dataclass
class Params:
    """Settings of `motion.recover`.

    Attributes:
        body: the body model: "anny" (default, inside its wheel), "smpl" or "smplx" (the
            user's files, through the model registry), or a server-side path to an SMPL-family
            .pkl/.npz.
        keypoint_format: layout of ``inputs.keypoints2d``: coco17, mediapipe33, halpe26,
            openpose25.
        start, end: frame range [start, end) of the video or frames (end None: to the end).
        fov_degrees: horizontal field of view when the camera's intrinsics are not given
            (default 57.5, between the contract's 55 and 60).
        iterations: steps of the full fit (default 250).
        ground_iterations: steps of the ground stage (default 150; 0 skips the contact
            refinement but still places the ground and the camera).
        smoothness: weight of the acceleration term (default 100).
        min_confidence: MediaPipe's detection/tracking threshold (default 0.5).
    """

    body: str = field(default="anny", metadata={"doc": '"anny" (default), "smpl", "smplx" or a server-side model file path'})
    keypoint_format: str = field(default="coco17", metadata={"doc": "layout of inputs.keypoints2d", "choices": tuple(FORMATS)})
    start: int = field(default=0, metadata={"doc": "first frame", "min": 0})
    end: int | None = field(default=None, metadata={"doc": "frame to stop before (default: the end)", "min": 1})
    fov_degrees: float = field(default=57.5, metadata={"doc": "horizontal field of view when intrinsics are not given", "min": 5.0, "max": 170.0})
    iterations: int = field(default=250, metadata={"doc": "steps of the full fit", "min": 0, "max": 20000})
    ground_iterations: int = field(default=150, metadata={"doc": "steps of the ground and contact stage", "min": 0, "max": 20000})
    smoothness: float = field(default=100.0, metadata={"doc": "weight of the acceleration term", "min": 0.0})
    min_confidence: float = field(default=0.5, metadata={"doc": "detector confidence threshold", "min": 0.0, "max": 1.0})

    def __post_init__(self):
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"params.end ({self.end}) must be after params.start ({self.start})")


def _intrinsic(doc: str):
    from addon.wire.schema import Either

    return Either((Value("float", doc), Array(FLOAT, ("T",), doc + ". [T]")), doc=doc, optional=True)


INPUTS = {
    "video": Array(("|u1",), (None,), "the bytes of an encoded video file (mp4/mov/mkv/webm/avi). [B]", optional=True),
    "frames": Array(("|u1",), ("T", "H", "W", 3), "sRGB frames, row 0 at the top. [T, H, W, 3]", optional=True),
    "keypoints2d": Array(FLOAT, ("T", None, 3), "x, y pixels and confidence per keypoint, in params.keypoint_format. [T, K, 3]", optional=True),
    "width": Value("int", "image width of keypoints2d, pixels", optional=True),
    "height": Value("int", "image height of keypoints2d, pixels", optional=True),
    "fps": Value("float", "frames per second of frames/keypoints2d", optional=True),
    "camera": Struct({
        "fx": _intrinsic("focal length along x, pixels"),
        "fy": _intrinsic("focal length along y, pixels"),
        "cx": _intrinsic("principal point x, pixels"),
        "cy": _intrinsic("principal point y, pixels"),
        "world_from_camera": Array(("<f4",), (None, 4, 4), "a moving camera's path, Blender's camera convention, in any frame and units (e.g. Blender's camera solver): made metric and Z-up from the body. One per fitted frame, or per input frame (sliced by params.start/end). [T, 4, 4]", optional=True),
        "width": Value("int", optional=True),
        "height": Value("int", optional=True),
    }, doc="the source camera's intrinsics (default: centred, params.fov_degrees)", optional=True),
}
OUTPUTS = {**MOTION_FIELDS,
           "keypoints2d": Array(("<f4",), ("T", None, 3), "keypoints as detected: x, y pixels, confidence. [T, K, 3]")}


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

def load_body(source: ModelSource, device: str):
    """ModelSpec loader of the body: Anny from its wheel, SMPL / SMPL-X from a file."""
    from . import body as bodies

    if source.origin == "wheel" or source.ref == "anny":
        return bodies.load_anny(device)
    if source.path is None:
        expected = SMPL_FILES.get(source.ref, source.ref)
        raise PipelineError("unavailable", f"body {source.ref!r}: model file {expected} not found "
                            f"(put it in ${MODELS_DIR_ENV} or give params.body as its path)", "params.body")
    name = Path(source.path).name.lower()
    kind = "smplx" if "smplx" in name or source.ref == "smplx" else "smpl"
    return bodies.load_smpl(Path(source.path), kind)


def load_detector(source: ModelSource, device: str):
    """ModelSpec loader of the detector: a factory of MediaPipe Pose trackers (one per clip,
    as a tracker keeps state between frames)."""
    from .detect import PoseDetector

    return PoseDetector


MODELS = (
    ModelSpec("body", "anny", load_body, param="body", kinds=("file", "models-dir", "wheel"),
              doc="the body model: Anny (in its wheel) or the user's SMPL/SMPL-X file"),
    ModelSpec("detector", "mediapipe-pose", load_detector, kinds=("wheel",),
              doc="MediaPipe Pose full (pose_landmark_full.tflite, in the mediapipe wheel)"),
)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

def _check(inputs: dict, params: Params) -> str:
    """What the schema cannot say; returns the input kind: "video", "frames" or "keypoints2d"."""
    given = [k for k in ("video", "frames", "keypoints2d") if k in inputs]
    if len(given) != 1:
        raise PipelineError("invalid_input", "inputs: give exactly one of video, frames or "
                            f"keypoints2d (got {given or 'none'})", "inputs")
    kind = given[0]
    if kind == "video" and inputs["video"].size == 0:
        raise PipelineError("invalid_input", "inputs.video: empty (0 bytes)", "inputs.video")
    if kind in ("frames", "keypoints2d") and inputs[kind].shape[0] == 0:
        raise PipelineError("invalid_input", f"inputs.{kind}: zero frames", f"inputs.{kind}")
    if kind in ("frames", "keypoints2d"):
        fps = inputs.get("fps")
        if fps is None or not (0 < fps < 1000):
            raise PipelineError("invalid_input", f"inputs.fps: required with {kind}, a number in "
                                f"(0, 1000) (got {fps!r})", "inputs.fps")
    if kind == "keypoints2d":
        for name in ("width", "height"):
            if not isinstance(inputs.get(name), int) or inputs[name] <= 0:
                raise PipelineError("invalid_input", f"inputs.{name}: required with keypoints2d, "
                                    f"a positive int (got {inputs.get(name)!r})", f"inputs.{name}")
        count = FORMATS[params.keypoint_format][0]
        kp = inputs["keypoints2d"]
        if kp.shape[1] != count:
            raise PipelineError("invalid_input", f"inputs.keypoints2d: {kp.shape[1]} points per "
                                f"frame but params.keypoint_format {params.keypoint_format!r} has "
                                f"{count} (expected [T, {count}, 3])", "inputs.keypoints2d")
        if not np.isfinite(kp).all():
            raise PipelineError("invalid_input", "inputs.keypoints2d: contains NaN or infinity",
                                "inputs.keypoints2d")
    camera = inputs.get("camera") or {}
    if camera.get("world_from_camera") is not None:
        from .camera_path import check_path, select

        path = check_path(camera["world_from_camera"])
        if kind in ("frames", "keypoints2d"):
            total = inputs[kind].shape[0]
            end = total if params.end is None else min(params.end, total)
            if end > params.start:
                select(path, end - params.start, params.start, params.end, total)
    for name in ("fx", "fy"):
        if name in camera and not np.all(np.asarray(camera[name]) > 0):
            raise PipelineError("invalid_input", f"inputs.camera.{name}: must be positive",
                                f"inputs.camera.{name}")
    return kind


def _intrinsics(camera: dict, width: int, height: int, fov_degrees: float) -> tuple:
    """(fx, fy, cx, cy): given values (a path's first) or the contract's default."""
    default_f = 0.5 * width / math.tan(math.radians(fov_degrees) / 2)

    def first(name, default):
        value = camera.get(name)
        return float(np.asarray(value).reshape(-1)[0]) if value is not None else default

    fx = first("fx", default_f)
    return fx, first("fy", fx), first("cx", width / 2), first("cy", height / 2)


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------

def run(inputs: dict, params: Params, job: Job, models: Mapping) -> dict:
    """Decode, detect, fit, ground; progress per stage with a keypoint preview; cancel <= 1 s."""
    # 1. Check inputs
    kind = _check(inputs, params)
    import torch

    from . import contact as contacts, decode, detect, ground
    from .fit import Fitter, FitSettings, Observations, rest_keypoints
    from .keypoints import CONTACT_POINTS, to_common
    from nskernels.rotations import matrix_to_quaternion

    camera_in = inputs.get("camera") or {}
    torch.set_grad_enabled(True)

    # 2. Keypoints: the client's, or decode and detect frame by frame (never the whole clip)
    directions = None
    if kind == "keypoints2d":
        raw = np.asarray(inputs["keypoints2d"], np.float32)
        end = raw.shape[0] if params.end is None else min(params.end, raw.shape[0])
        raw = raw[params.start:end]
        if raw.shape[0] == 0:
            raise PipelineError("invalid_params", f"params.start: {params.start} leaves no frames "
                                f"of the {inputs['keypoints2d'].shape[0]}", "params.start")
        keypoints2d = raw
        common = to_common(raw, params.keypoint_format)
        width, height, fps = inputs["width"], inputs["height"], float(inputs["fps"])
    else:
        if kind == "video":
            source, frames = decode.open_video(inputs["video"], params.start, params.end)
        else:
            source, frames = decode.open_frames(inputs["frames"], inputs["fps"], params.start, params.end)
        detector = models["detector"](params.min_confidence)
        kps, worlds = [], []
        width = height = 0
        total = source.count or 0
        try:
            for index, rgb in enumerate(frames):
                job.check_cancel()
                height, width = rgb.shape[:2]
                kp, world = detector(rgb)
                kps.append(kp), worlds.append(world)
                preview = detect.draw_keypoints(rgb, kp) if index % 15 == 0 else None
                job.progress("detect", index + 1, max(total, index + 1),
                             f"frame {index + 1}" + (f"/{total}" if total else ""), preview)
        finally:
            detector.close()
        if not kps:
            field_name = "inputs.video" if kind == "video" else "inputs.frames"
            raise PipelineError("invalid_input", f"{field_name}: zero frames in [{params.start}, "
                                f"{params.end if params.end is not None else 'end'})", field_name)
        keypoints2d = np.stack(kps)
        common, directions = detect.common_from_mediapipe(keypoints2d, np.stack(worlds))
        fps = source.fps
    seen = common[..., 2] > 0.05
    if seen.sum(1).max(initial=0) < 6:
        where = "inputs.keypoints2d" if kind == "keypoints2d" else f"inputs.{kind}"
        raise PipelineError("invalid_input", f"{where}: no person found (no frame has 6 or more "
                            "confident keypoints)", where)
    intrinsics = _intrinsics(camera_in, width, height, params.fov_degrees)

    path = None
    if camera_in.get("world_from_camera") is not None:
        from .camera_path import check_path, select

        total = inputs[kind].shape[0] if kind != "video" else None
        path = select(check_path(camera_in["world_from_camera"]), len(common), params.start,
                      params.end, total)
        if len(path) == 1:
            path = None          # one camera: the static placement below

    # 3. Body model
    body = models["body"]

    # 4. Fit in the camera frame, all frames at once
    settings = FitSettings(iterations=params.iterations, ground_iterations=params.ground_iterations,
                           w_accel=params.smoothness)
    last = [0.0]

    def report(stage, step, total):
        job.check_cancel()
        now = time.monotonic()
        if now - last[0] > 0.2 or step >= total:
            last[0] = now
            job.progress(stage, step, total, f"{stage} step {step}/{total}")

    observations = Observations(common, directions, intrinsics)
    fitter = Fitter(body, settings, job.device, report)
    fit = fitter.fit_camera(observations)

    # 5. Ground and camera, then the contact refinement in the world
    if path is None:
        placement = ground.estimate_ground(fit, fps)
        world = ground.to_world(fit, placement)
        camera_from_world, camera_position = placement.camera_from_world, placement.camera_position
        if settings.ground_iterations > 0:
            from .fit import Ground

            contact = ground.initial_contacts(world, common, fps)
            # Runs of frames where a foot stays put in the image: a static camera sees a planted
            # foot still (a moving one does not, so the path case has no locks).
            segments = torch.tensor(contacts.lock_runs(common, world, ground.STILL_STEP))
            state = Ground(torch.tensor(placement.camera_from_world), torch.tensor(placement.camera_position),
                           torch.tensor(contact), segments=segments)
            world = fitter.fit_ground(observations, world, state)
            camera_from_world, camera_position = state.corrected()
    else:
        # A moving camera: the path made metric and Z-up from the body (TRAM's idea).
        from . import camera_path

        world, state, alignment = camera_path.place(fit, path, fps, common, intrinsics)
        if settings.ground_iterations > 0:
            world = fitter.fit_ground(observations, world, state)
        camera_from_world, camera_position = state.corrected()      # [T, 3, 3], [T, 3]
        log.info("motion.recover: camera path scale %.4g m per unit (%s)",
                 alignment.scale * state.scale_correction(),
                 "measured" if alignment.observable else "the camera hardly moves: not measured")
    job.progress("ground", 1, 1, "placed on the ground")

    # 6. Package the Motion map
    rest = body.rest(world.shape, full=True)
    t = world.keypoints.shape[0]
    keypoints = world.keypoints.numpy()
    contact_points = contacts.world_contacts(keypoints[:, list(CONTACT_POINTS)], fps,
                                             rest_keypoints(rest)[list(CONTACT_POINTS), 2].numpy())
    if path is None:
        world_from_cv = np.eye(4, dtype=np.float32)
        world_from_cv[:3, :3] = np.asarray(camera_from_world).T
        world_from_cv[:3, 3] = camera_position
        # Blender's camera looks down -Z with +Y up: OpenCV's y and z axes flipped.
        world_from_camera = np.repeat((world_from_cv @ np.diag([1.0, -1.0, -1.0, 1.0]).astype(np.float32))[None], t, 0)
    else:
        world_from_camera = camera_path.world_from_camera(camera_from_world, camera_position)
    confidence = np.clip(common[:, :17, 2].mean(1), 0, 1).astype(np.float32)
    outputs = {
        "fps": float(fps),
        "skeleton": {"names": list(body.names),
                     "parents": np.asarray(body.parents, np.int32),
                     "rest": rest.joints.detach().numpy().astype(np.float32)},
        "rotations": matrix_to_quaternion(world.local_rotations).numpy().astype(np.float32),
        "root_translation": world.root_position.numpy().astype(np.float32),
        "joints": world.joints.numpy().astype(np.float32),
        "keypoints3d": keypoints[:, :17].astype(np.float32),
        "contacts": contact_points.astype(np.float32),
        "confidence": confidence,
        "camera": {"world_from_camera": world_from_camera,
                   "fx": float(intrinsics[0]), "fy": float(intrinsics[1]),
                   "cx": float(intrinsics[2]), "cy": float(intrinsics[3]),
                   "width": int(width), "height": int(height), "fps": float(fps)},
        "body": body.to_body_params(world.local_rotations, world.root_position, world.shape),
        "keypoints2d": np.asarray(keypoints2d, np.float32),
    }
    if body.faces is not None and rest.vertices is not None:
        outputs["mesh"] = {"vertices": rest.vertices.detach().numpy().astype(np.float32),
                           "faces": body.faces, "skin_index": body.skin_index,
                           "skin_weight": body.skin_weight}
    log.info("motion.recover: %d frames, body %s, camera height %.2f m%s", t, body.model,
             float(world_from_camera[0, 2, 3]),
             "" if path is not None else f", pitch {math.degrees(placement.pitch):.1f} deg")
    return outputs


def probe() -> tuple[bool, str]:
    """Available where torch, anny, mediapipe and av are installed (imports none of them)."""
    import importlib.util

    for module, extra in (("torch", "server"), ("anny", "server"), ("mediapipe", "server"), ("av", "server")):
        if importlib.util.find_spec(module) is None:
            return False, f"{module} is not installed in the server's environment (pip install '.[{extra}]')"
    return True, ""


PIPELINE = Pipeline(
    name="motion.recover",
    summary="Video -> body motion in Blender's world: detect, fit a body, ground it, place the camera",
    params=Params,
    inputs=INPUTS,
    outputs=OUTPUTS,
    run=run,
    probe=probe,
    check=lambda inputs, params: _check(inputs, params),
    models=MODELS,
)
