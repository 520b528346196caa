"""Benchmark: motion.recover on clips Blender renders, through the detector (issue 10's goals).

For each motion (walk, turn, jump, crouch) and camera placement of bench_motion, the synthetic
clip's Anny body (its skinned mesh, posed per frame, the exact body whose keypoints are the
truth) is rendered by Workbench in headless bpy at 640x360 on a grey floor; MediaPipe Pose (in
its wheel) detects the 2D keypoints and 3D landmarks on the images; the fit, the ground and the
locked-contact refinement run as motion.recover runs them. Printed per clip and as the mean:
MPJPE, PA-MPJPE, WA-MPJPE, W-MPJPE, root error, acceleration error, foot sliding, the truth's own
sliding, camera height error (bench_motion's definitions), and the 2D detection error (median
pixel distance of confident keypoints to the truth's projection). The same fit on the clip's
projected keypoints (bench_motion's rows, no detector) is printed beside each row as the
baseline of the same run.

Rendered frames and detections are cached in ``--cache`` (keyed by motion, camera, frames),
so a second run only fits.

Goals (issue 10, on rendered clips): PA-MPJPE <= 50 mm, WA-MPJPE <= 90 mm, foot sliding
<= 3 mm/frame, acceleration error <= 6 mm/frame^2.

Usage:
    python benchmarks/bench_motion_rendered.py [--frames 60] [--motions walk,turn,jump,crouch]
        [--cache /tmp/nstudio-motion-rendered] [--no-baseline]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_motion import CAMERAS, recover_world, score  # noqa: E402

KEYS = ("mpjpe", "pa_mpjpe", "wa_mpjpe", "w_mpjpe", "root_error", "accel_error", "accel_world",
        "foot_sliding", "truth_sliding", "camera_height_error", "detect_px")
#: Blender's camera looks down -Z with +Y up: OpenCV's y and z flipped.
BLENDER_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def render(body, clip, folder: Path) -> np.ndarray:
    """The clip's posed Anny mesh rendered by Workbench through its camera. [T, H, W, 3] uint8"""
    import bpy
    from mathutils import Matrix

    from pipelines.motion.synthetic import skinned_vertices
    from tools.demo_motion import render_frames

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    verts = skinned_vertices(body, clip).astype(np.float32)                  # [T, V, 3]
    faces = np.asarray(body.faces, np.int32)
    mesh = bpy.data.meshes.new("Body")
    mesh.vertices.add(verts.shape[1])
    mesh.loops.add(faces.size)
    mesh.polygons.add(len(faces))
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(faces), 3, np.int32))
    mesh.vertices.foreach_set("co", verts[0].ravel())
    mesh.update()
    mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), bool))
    skin = bpy.data.materials.new("Skin")
    skin.diffuse_color = (0.8, 0.55, 0.42, 1.0)
    mesh.materials.append(skin)
    scene.collection.objects.link(bpy.data.objects.new("Body", mesh))
    bpy.ops.mesh.primitive_plane_add(size=40.0)
    floor = bpy.data.materials.new("Floor")
    floor.diffuse_color = (0.45, 0.45, 0.42, 1.0)
    bpy.context.object.data.materials.append(floor)

    cam_data = bpy.data.cameras.new("Camera")
    fx, _, cx, cy = clip.intrinsics
    cam_data.sensor_fit, cam_data.sensor_width = "HORIZONTAL", 36.0
    cam_data.lens = fx / clip.width * 36.0
    cam = bpy.data.objects.new("Camera", cam_data)
    scene.collection.objects.link(cam)
    cam.matrix_world = Matrix((clip.world_from_camera_cv @ BLENDER_FROM_CV).tolist())
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y = clip.width, clip.height

    def set_frame(t):
        mesh.vertices.foreach_set("co", verts[t].ravel())
        mesh.update()

    return render_frames(scene, folder, len(verts), set_frame)


def detect(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe on each frame: common keypoints [T, 23, 3] and 3D landmarks [T, 23, 4]."""
    from pipelines.motion.detect import PoseDetector, common_from_mediapipe

    detector = PoseDetector()
    try:
        found = [detector(image) for image in frames]
    finally:
        detector.close()
    return common_from_mediapipe(np.stack([k for k, _ in found]), np.stack([w for _, w in found]))


def rendered_clip(body, kind, camera, frames, cache: Path):
    """(clip, keypoints2d, directions3d): rendered and detected once, then read from ``cache``."""
    from pipelines.motion.synthetic import make_clip

    clip = make_clip(body, kind, frames=frames, camera_position=camera,
                     seed=zlib.crc32(kind.encode()) % 1000)
    name = cache / f"{kind}-{'_'.join(f'{c:g}' for c in camera)}-{frames}.npz"
    if name.exists():
        data = np.load(name)
        return clip, data["keypoints2d"], data["directions3d"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        images = render(body, clip, Path(tmp))
        rendered = time.perf_counter() - start
    start = time.perf_counter()
    kp, dirs = detect(images)
    print(f"  {kind}: rendered {len(images)} frames in {rendered:.1f} s, detected in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(name, keypoints2d=kp, directions3d=dirs, preview=images[::15])
    return clip, kp, dirs


def detection_error(clip, keypoints2d: np.ndarray) -> float:
    """Median pixel distance of the confident detected keypoints to the truth's projection."""
    truth = clip.observations.keypoints2d  # noisy by 1 px; fine against detector errors
    seen = keypoints2d[..., 2] > 0.5
    return float(np.median(np.linalg.norm(keypoints2d[..., :2] - truth[..., :2], axis=-1)[seen]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--motions", default="walk,turn,jump,crouch")
    parser.add_argument("--cameras", default=",".join(CAMERAS))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "nstudio-motion-rendered")
    parser.add_argument("--no-baseline", action="store_true", help="skip the projected-keypoint rows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from pipelines.motion import recover
    from pipelines.motion.fit import FitSettings, Observations

    body = recover.load_body(recover.ModelSource("anny", None, "wheel"), "cpu")
    settings = FitSettings()
    print(f"rendered clips (Workbench 640x360, MediaPipe full), {args.frames} frames; mm, accel "
          f"mm/frame^2, sliding mm/frame, detect_px: median 2D detection error")
    print(f"{'motion':8s} {'camera':12s} {'input':9s} " + " ".join(f"{k:>10s}" for k in KEYS))
    rows = {"rendered": [], "projected": []}
    for kind in args.motions.split(","):
        for name in args.cameras.split(","):
            clip, kp, dirs = rendered_clip(body, kind, CAMERAS[name], args.frames, args.cache)
            inputs = {"rendered": Observations(kp, dirs, clip.intrinsics)}
            if not args.no_baseline:
                inputs["projected"] = clip.observations
            for label, observations in inputs.items():
                start = time.perf_counter()
                m = score(clip, *recover_world(body, settings, observations, clip.fps))
                m["seconds"] = time.perf_counter() - start
                m["detect_px"] = detection_error(clip, kp) if label == "rendered" else 0.0
                rows[label].append(m)
                print(f"{kind:8s} {name:12s} {label:9s} " + " ".join(f"{m[k]:10.1f}" for k in KEYS), flush=True)
    for label, got in rows.items():
        if got:
            mean = {k: float(np.mean([r[k] for r in got])) for k in KEYS}
            print(f"{'mean':8s} {'':12s} {label:9s} " + " ".join(f"{mean[k]:10.1f}" for k in KEYS))


if __name__ == "__main__":
    main()
