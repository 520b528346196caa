"""Benchmark: motion.recover's fit on synthetic clips of a known Anny motion (CPU or GPU).

Accuracy: for each motion (walk, turn, jump, crouch) and camera placement, the body's 23 common
keypoints are projected through a static pinhole camera (1 px noise, 10 % dropped, MediaPipe-like
metric 3D landmarks with 2 cm noise), fitted in the camera frame, grounded (plane, camera height
and pitch from the feet) and refined with the contact runs locked; printed: MPJPE (pelvis
aligned, each in its own camera frame), PA-MPJPE, WA-MPJPE (one similarity per clip), W-MPJPE
(first two frames aligned), root error, acceleration error (mm/frame^2; in the camera frame,
and in the world as ``accel_world``), foot sliding (mm/frame
on the contact frames `contact.world_contacts` finds on the result), the truth's own sliding on
its own contacts (the floor of that figure), camera height error.

Moving camera (``--camera-motions``): the same walk/turn filmed by a camera that dollies alongside
("track") or circles ("arc"), its path handed to `camera_path.place` in another frame (turned,
moved, scaled by 1/0.37) as a camera solver gives it; printed: the recovered scale against the
truth (%), MPJPE, PA-MPJPE, world root error and camera-path error after one rigid alignment of
body and cameras together (the world's yaw and origin are a gauge), foot sliding; "composed" is
the path and the camera-frame fit composed at the recovered scale (TRAM's composition), "refined"
after the ground stage with the path (contacts, path tilt/height/scale). ``--no-landmarks``: the
same without the detector's 3D landmarks (as with client ``keypoints2d``).

Speed: the same energy (fit.py) on the same 100 frames, batched (all frames one batch, with the
temporal terms) against per frame (one frame at a time, no temporal terms), in the same run;
per-frame time is measured on --per-frame-sample frames and scaled to 100; the whole fit (ground
stage included) is printed too. Detection speed: MediaPipe
on 100 rendered 640x360 frames.

Goals (issue 10): PA-MPJPE <= 50 mm, WA-MPJPE <= 90 mm, foot sliding <= 3 mm/frame,
acceleration error <= 6 mm/frame^2; fit >= 10x faster than per frame and <= 5 s per 100 frames.

Usage:
    python benchmarks/bench_motion.py [--frames 60] [--device cpu] [--per-frame-sample 5]
        [--motions walk,turn,jump,crouch] [--skip-detect]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CAMERAS = {"front-right": (0.8, -5.0, 1.4), "high-left": (-2.5, -4.0, 2.6)}


def recover_world(body, settings, observations, fps):
    """motion.recover's fit on ``observations`` (recover.run's steps 4-6): camera-frame fit,
    ground and camera, locked contact refinement. Returns (world fit, camera_from_world [3, 3],
    camera position [3], contacts of CONTACT_POINTS [T, 4])."""
    import torch

    from pipelines.motion import contact, ground
    from pipelines.motion.fit import Fitter, Ground, rest_keypoints
    from pipelines.motion.keypoints import CONTACT_POINTS

    fitter = Fitter(body, settings)
    cam = fitter.fit_camera(observations)
    placement = ground.estimate_ground(cam, fps)
    world = ground.to_world(cam, placement)
    initial = ground.initial_contacts(world, observations.keypoints2d, fps)
    state = Ground(torch.tensor(placement.camera_from_world), torch.tensor(placement.camera_position),
                   torch.tensor(initial),
                   segments=torch.tensor(contact.lock_runs(observations.keypoints2d, world, ground.STILL_STEP)))
    world = fitter.fit_ground(observations, world, state)
    rotation, position = state.corrected()
    kp = world.keypoints.numpy()
    lift4 = rest_keypoints(world.rest)[list(CONTACT_POINTS), 2].numpy()
    return world, rotation, position, contact.world_contacts(kp[:, list(CONTACT_POINTS)], fps, lift4)


def accuracy(body, kind, camera, frames, settings):
    from pipelines.motion.synthetic import make_clip

    clip = make_clip(body, kind, frames=frames, camera_position=camera, seed=zlib.crc32(kind.encode()) % 1000)  # stable across runs (hash() is salted)
    start = time.perf_counter()
    world, rotation, position, contacts = recover_world(body, settings, clip.observations, clip.fps)
    m = score(clip, world, rotation, position, contacts)
    m["seconds"] = time.perf_counter() - start
    return m


def score(clip, world, rotation, position, contacts) -> dict:
    """The accuracy figures of a fit (`recover_world`'s outputs) against the clip's truth."""
    from pipelines.motion import contact
    from pipelines.motion.fit import rest_keypoints
    from pipelines.motion.keypoints import CONTACT_POINTS
    from pipelines.motion.synthetic import metrics

    kp = world.keypoints.numpy()
    m = metrics(kp[:, :17], clip.keypoints[:, :17], clip.fps)
    # MPJPE in each one's camera frame (the world's yaw is a gauge: pelvis-aligned world
    # coordinates counted the yaw between the two worlds as error, 120-150 mm from high-left).
    true_from_world = np.linalg.inv(clip.world_from_camera_cv)
    true_cam = clip.keypoints[:, :17] @ true_from_world[:3, :3].T + true_from_world[:3, 3]
    pred_cam = (kp[:, :17] - position) @ np.asarray(rotation).T
    in_camera = metrics(pred_cam, true_cam, clip.fps)
    m["mpjpe"] = in_camera["mpjpe"]
    # Acceleration error in the camera frame too, as VIBE and WHAM measure it (root motion
    # included). In world coordinates it also counts the yaw between the two worlds (a gauge),
    # which turns every acceleration vector: -0.3 to +1.1 mm/frame^2 per rendered clip of
    # bench_motion_rendered, printed as accel_world.
    m["accel_world"] = m["accel_error"]
    m["accel_error"] = in_camera["accel_error"]
    m.update({k: v for k, v in metrics(kp, clip.keypoints, clip.fps, contacts, list(CONTACT_POINTS)).items()
              if k == "foot_sliding"})
    # The truth's own sliding on its own contacts (same detector of contacts): the floor.
    lift4 = rest_keypoints(world.rest)[list(CONTACT_POINTS), 2].numpy()
    truth_contacts = contact.world_contacts(clip.keypoints[:, list(CONTACT_POINTS)], clip.fps, lift4)
    m["truth_sliding"] = metrics(clip.keypoints, clip.keypoints, clip.fps, truth_contacts,
                                 list(CONTACT_POINTS))["foot_sliding"]
    m["camera_height_error"] = abs(float(position[2]) - float(clip.world_from_camera_cv[2, 3])) * 1000
    return m


GIVEN_SCALE = 0.37


def moving_camera(body, kind, motion, frames, settings, landmarks=True):
    """One clip seen by a moving camera: (composed figures, refined figures)."""
    from pipelines.motion import camera_path, contact
    from pipelines.motion.fit import Fitter, rest_keypoints
    from pipelines.motion.keypoints import CONTACT_POINTS
    from pipelines.motion.synthetic import make_clip, metrics, procrustes

    clip = make_clip(body, kind, frames=frames, seed=zlib.crc32(kind.encode()) % 1000, camera_motion=motion)
    if not landmarks:
        clip.observations.directions3d = None
    true = clip.cameras_cv()
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    given = np.einsum("ij,tjk->tik", q, (true @ camera_path.BLENDER_FROM_CV)[:, :3])
    given = np.concatenate([given, np.tile([0.0, 0, 0, 1], (frames, 1, 1))], 1)
    given[:, :3, 3] = given[:, :3, 3] / GIVEN_SCALE + rng.normal(size=3) * 3
    fitter = Fitter(body, settings)
    start = time.perf_counter()
    cam = fitter.fit_camera(clip.observations)
    world, state, alignment = camera_path.place(cam, given, clip.fps, clip.observations.keypoints2d,
                                                clip.intrinsics)
    rows = []
    for stage in ("composed", "refined"):
        if stage == "refined":
            world = fitter.fit_ground(clip.observations, world, state)
        _, centres = state.corrected()
        kp = world.keypoints.numpy().astype(np.float64)
        lift4 = rest_keypoints(world.rest)[list(CONTACT_POINTS), 2].numpy()
        contacts = contact.world_contacts(kp[:, list(CONTACT_POINTS)], clip.fps, lift4)
        both = np.concatenate([kp.reshape(-1, 3), centres])
        both_true = np.concatenate([clip.keypoints.reshape(-1, 3), true[:, :3, 3]])
        aligned = procrustes(both, both_true, scale=False)
        body_aligned = aligned[:-frames].reshape(kp.shape)
        m = metrics(body_aligned[:, :17], clip.keypoints[:, :17], clip.fps)
        m["foot_sliding"] = metrics(kp, clip.keypoints, clip.fps, contacts, list(CONTACT_POINTS))["foot_sliding"]
        m["root_error"] = float(np.linalg.norm(body_aligned[:, 11:13].mean(1) - clip.keypoints[:, 11:13].mean(1), axis=-1).mean() * 1000)
        m["camera_error"] = float(np.linalg.norm(aligned[-frames:] - true[:, :3, 3], axis=-1).mean() * 1000)
        scale = alignment.scale * (state.scale_correction() if stage == "refined" else 1.0)
        m["scale_error"] = abs(scale / GIVEN_SCALE - 1) * 100
        m["seconds"] = time.perf_counter() - start
        rows.append(m)
    return rows


def speed(body, frames, sample, settings):
    from pipelines.motion.fit import Fitter, Observations
    from pipelines.motion.synthetic import make_clip

    clip = make_clip(body, "walk", frames=frames, seed=11)
    start = time.perf_counter()
    Fitter(body, settings).fit_camera(clip.observations)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    recover_world(body, settings, clip.observations, clip.fps)
    whole = time.perf_counter() - start
    obs = clip.observations
    start = time.perf_counter()
    for t in range(sample):
        one = Observations(obs.keypoints2d[t:t + 1], obs.directions3d[t:t + 1], obs.intrinsics)
        Fitter(body, settings).fit_camera(one)
    per_frame = (time.perf_counter() - start) / sample * frames
    return batched, whole, per_frame


def detect_speed(body, frames):
    from pipelines.motion.detect import PoseDetector
    from pipelines.motion.synthetic import make_clip, render_clip

    clip = make_clip(body, "walk", frames=frames, width=640, height=360, camera_position=(0.5, -4.0, 1.3))
    images = render_clip(body, clip)
    detector = PoseDetector()
    start = time.perf_counter()
    found = sum(detector(image)[0][:, 2].mean() > 0.5 for image in images)
    seconds = time.perf_counter() - start
    detector.close()
    return seconds, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--per-frame-sample", type=int, default=5)
    parser.add_argument("--motions", default="walk,turn,jump,crouch")
    parser.add_argument("--skip-detect", action="store_true")
    parser.add_argument("--camera-motions", default="track,arc",
                        help="moving-camera rows (walk and turn each); empty to skip")
    parser.add_argument("--no-landmarks", action="store_true",
                        help="moving-camera rows without the 3D landmarks (as client keypoints2d)")
    parser.add_argument("--skip-static", action="store_true", help="skip the static-camera rows and speed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from pipelines.motion import recover
    from pipelines.motion.fit import FitSettings

    torch.set_num_threads(max(1, torch.get_num_threads()))
    body = recover.load_body(recover.ModelSource("anny", None, "wheel"), args.device)
    settings = FitSettings()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, Anny body "
          f"({len(body.names)} joints, {len(body.free)} fitted)")
    if args.camera_motions:
        print("\nmoving camera (path given turned, moved and scaled; mm, scale error %)")
        keys = ("scale_error", "mpjpe", "pa_mpjpe", "wa_mpjpe", "root_error", "camera_error", "foot_sliding", "seconds")
        print(f"{'motion':8s} {'camera':8s} {'stage':9s} " + " ".join(f"{k:>12s}" for k in keys))
        for kind in ("walk", "turn"):
            for motion in args.camera_motions.split(","):
                for stage, m in zip(("composed", "refined"), moving_camera(body, kind, motion, args.frames, settings,
                                                                                 not args.no_landmarks)):
                    print(f"{kind:8s} {motion:8s} {stage:9s} " + " ".join(f"{m.get(k, float('nan')):12.1f}" for k in keys))
    if args.skip_static:
        return
    print("\naccuracy (mm; accel mm/frame^2; sliding mm/frame)")
    keys = ("mpjpe", "pa_mpjpe", "wa_mpjpe", "w_mpjpe", "root_error", "accel_error", "accel_world",
            "foot_sliding", "truth_sliding", "camera_height_error", "seconds")
    print(f"{'motion':8s} {'camera':12s} " + " ".join(f"{k:>10s}" for k in keys))
    rows = []
    for kind in args.motions.split(","):
        for name, position in CAMERAS.items():
            m = accuracy(body, kind, position, args.frames, settings)
            rows.append(m)
            print(f"{kind:8s} {name:12s} " + " ".join(f"{m.get(k, float('nan')):10.1f}" for k in keys))
    mean = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    print(f"{'mean':8s} {'':12s} " + " ".join(f"{mean[k]:10.1f}" for k in keys))

    print("\nspeed: the same energy, 100 frames")
    batched, whole, per_frame = speed(body, 100, args.per_frame_sample, settings)
    print(f"  batched (all frames, temporal terms): {batched:7.2f} s per 100 frames")
    print(f"  whole fit (camera frame + ground + locked contacts): {whole:7.2f} s per 100 frames")
    print(f"  per frame (one at a time, measured on {args.per_frame_sample}, scaled): {per_frame:7.2f} s per 100 frames")
    print(f"  speed-up {per_frame / batched:.1f}x")
    if not args.skip_detect:
        seconds, found = detect_speed(body, 100)
        print(f"  detect (MediaPipe full, 640x360): {seconds:.2f} s per 100 frames, person found in {found}/100")


if __name__ == "__main__":
    main()
