"""Synthetic clips with a known answer: a body moving in the world, seen by a static camera or
along a camera path (``camera_motion``: "pan" turns on a tripod, "track" dollies alongside the
body, "arc" circles it; all keep the body in view).

Used by the tests, the benchmark and the demo. A motion is a set of local rotations of the
body's fitted joints plus a root path; the lower foot of each frame stays planted (the root
moves by what it moved, so walks do not skate) and feet are put on the ground frame by frame. The
observations are the body's 23 common keypoints projected through the camera, with pixel noise,
dropped points and the metric, camera-aligned 3D landmarks a detector such as MediaPipe gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


from .body import Body
from .fit import Observations, _Model

MOTIONS = ("walk", "turn", "jump", "crouch")


@dataclass
class Clip:
    """A synthetic clip.

    Attributes:
        keypoints: world keypoints (Z up, metres). [T, 23, 3]
        joints: world joints. [T, J, 3]
        local_rotations: [T, J, 3, 3] (root's in the world)
        root_position: [T, 3]
        world_from_camera_cv: OpenCV camera to world. [4, 4]
        intrinsics: (fx, fy, cx, cy)
        width, height: image size in pixels.
        fps: frames per second.
        observations: what a detector would report.
        shape: the body's shape. [S]
        path: OpenCV camera to world per frame for a moving camera, else None (static:
            ``world_from_camera_cv``, which is then the path's first frame). [T, 4, 4]
    """

    keypoints: np.ndarray
    joints: np.ndarray
    local_rotations: np.ndarray
    root_position: np.ndarray
    world_from_camera_cv: np.ndarray
    intrinsics: tuple
    width: int
    height: int
    fps: float
    observations: Observations
    shape: np.ndarray
    path: np.ndarray | None = None

    def cameras_cv(self) -> np.ndarray:
        """OpenCV camera to world for every frame (the static camera repeated). [T, 4, 4]"""
        if self.path is not None:
            return self.path
        return np.repeat(self.world_from_camera_cv[None], len(self.keypoints), 0)


def look_at(position, target) -> np.ndarray:
    """OpenCV camera (x right, y down, z forward) at ``position`` looking at ``target``. [4, 4]"""
    position, target = np.asarray(position, float), np.asarray(target, float)
    forward = target - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    out = np.eye(4)
    out[:3, :3] = np.stack([right, down, forward], 1)
    out[:3, 3] = position
    return out


CAMERA_MOTIONS = ("static", "pan", "track", "arc")


def camera_path(kind: str, camera_position, keypoints: np.ndarray, seed: int = 0) -> np.ndarray:
    """A camera path that keeps the body in view. [T, 4, 4] OpenCV camera to world.

    Args:
        kind: "static", "pan" (on a tripod at ``camera_position``, turning to follow the body),
            "track" (moving alongside with the body's horizontal travel plus 0.5 m more, and a
            hand-held bob of 3 cm), or "arc" (circling the body's start by 50 degrees at a
            constant height).
        camera_position: where the camera starts. [3]
        keypoints: the body's world keypoints. [T, 23, 3]
    """
    t_count = len(keypoints)
    start = np.asarray(camera_position, float)
    centre = keypoints.mean(1)
    centre[:, 2] = 0.9
    u = np.linspace(0.0, 1.0, t_count)
    if kind == "static":
        return np.repeat(look_at(start, centre[0])[None], t_count, 0)
    if kind == "pan":
        return np.stack([look_at(start, c) for c in centre])
    if kind == "track":
        travel = centre - centre[0]
        travel[:, 2] = 0.0
        heading = travel[-1] / max(np.linalg.norm(travel[-1]), 1e-6)
        phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
        bob = 0.03 * np.sin(2 * np.pi * 1.7 * u[:, None] * np.array([1.0, 1.3, 2.0]) + phase)
        positions = start + travel + 0.5 * u[:, None] * heading + bob
        return np.stack([look_at(p, c) for p, c in zip(positions, centre)])
    if kind == "arc":
        pivot = centre[0].copy()
        pivot[2] = start[2]
        offset = start - pivot
        angles = np.radians(50.0) * u
        cos, sin = np.cos(angles), np.sin(angles)
        positions = pivot + np.stack([cos * offset[0] - sin * offset[1], sin * offset[0] + cos * offset[1],
                                      np.full(t_count, offset[2])], 1)
        return np.stack([look_at(p, c) for p, c in zip(positions, centre)])
    raise ValueError(f"unknown camera motion {kind!r}; known: {CAMERA_MOTIONS}")


def _motion(body: Body, kind: str, t_count: int, fps: float):
    """Local axis-angle of the free joints [T, F-1, 3], root yaw [T], root path [T, 3]."""
    names = [body.names[j] for j in body.free[1:]]
    pose = np.zeros((t_count, len(names), 3))
    time = np.arange(t_count) / fps
    phase = 2 * math.pi * 0.9 * time

    def set_x(name_part, values):
        for i, name in enumerate(names):
            if name_part(name):
                pose[:, i, 0] = values

    left = lambda n: n.endswith(".L") or n.startswith("left")  # noqa: E731
    right = lambda n: n.endswith(".R") or n.startswith("right")  # noqa: E731
    is_thigh = lambda n: "upperleg" in n or n.endswith("_hip")  # noqa: E731
    is_knee = lambda n: "lowerleg" in n or n.endswith("_knee")  # noqa: E731
    is_arm = lambda n: "upperarm" in n or n.endswith("_shoulder")  # noqa: E731
    yaw = np.zeros(t_count)
    path = np.zeros((t_count, 3))
    if kind in ("walk", "turn"):
        swing = 0.45 * np.sin(phase)
        set_x(lambda n: is_thigh(n) and left(n), -swing)
        set_x(lambda n: is_thigh(n) and right(n), swing)
        set_x(lambda n: is_knee(n) and left(n), 0.7 * np.clip(np.sin(phase - 1.2), 0, None))
        set_x(lambda n: is_knee(n) and right(n), 0.7 * np.clip(np.sin(phase + math.pi - 1.2), 0, None))
        set_x(lambda n: is_arm(n) and left(n), 0.4 * np.sin(phase))
        set_x(lambda n: is_arm(n) and right(n), -0.4 * np.sin(phase))
        if kind == "walk":
            # The body moves forward by planting its feet (see make_clip), not along a path.
            yaw[:] = math.radians(60)
        else:
            yaw = np.linspace(0, 1.5 * math.pi, t_count)
    elif kind == "crouch":
        depth = 0.5 * (1 - np.cos(2 * math.pi * time / max(time[-1], 1e-6)))
        set_x(lambda n: is_thigh(n), -1.1 * depth)
        set_x(lambda n: is_knee(n), 2.0 * depth)
        set_x(lambda n: "foot" in n or n.endswith("_ankle"), -0.9 * depth)
        set_x(lambda n: is_arm(n), -0.8 * depth)
        yaw[:] = math.radians(-30)
    elif kind == "jump":
        cycle = (time * 1.2) % 1.0
        crouch = np.where(cycle < 0.4, np.sin(math.pi * cycle / 0.4), 0.0)
        set_x(lambda n: is_thigh(n), -0.7 * crouch)
        set_x(lambda n: is_knee(n), 1.3 * crouch)
        set_x(lambda n: "foot" in n or n.endswith("_ankle"), -0.6 * crouch)
        set_x(lambda n: is_arm(n), -1.2 * np.sin(math.pi * cycle))
        air = np.where(cycle >= 0.4, np.sin(math.pi * (cycle - 0.4) / 0.6), 0.0)
        path[:, 2] = 0.3 * air
        yaw[:] = math.radians(20)
    else:
        raise ValueError(f"unknown motion {kind!r}; known: {MOTIONS}")
    return pose, yaw, path


def make_clip(body: Body, kind: str = "walk", frames: int = 60, fps: float = 30.0,
              camera_position=(0.8, -5.0, 1.4), width: int = 640, height: int = 360,
              fov_degrees: float = 55.0, noise_px: float = 1.0, drop: float = 0.1,
              shape: np.ndarray | None = None, seed: int = 0, camera_motion: str = "static") -> Clip:
    """A clip of ``kind`` seen from a camera at ``camera_position`` looking at the body's start
    (``camera_motion`` "static"), or moving from there (:func:`camera_path`)."""
    rng = np.random.default_rng(seed)
    model = _Model(body)
    shape = body.shape_init if shape is None else np.asarray(shape, np.float32)
    pose, yaw, path = _motion(body, kind, frames, fps)
    with torch.no_grad():
        rest = body.rest(torch.tensor(shape, dtype=torch.float32))
        root = torch.zeros(frames, 3)
        pelvis = rest.joints[0]
        position = torch.tensor(path, dtype=torch.float32) + pelvis
        # Yaw enters as the root rotation; the axis-angle of a pure yaw is (0, 0, yaw).
        root[:, 2] = torch.tensor(yaw, dtype=torch.float32)
        rotations, kin, kp = model.pose(rest, root, torch.tensor(pose, dtype=torch.float32), position)
        # Walk without skating: the lower foot of each frame stays where it was planted, and
        # the root moves by what that foot moved relative to the body.
        feet = kp[:, [17, 19, 21]].numpy(), kp[:, [18, 20, 22]].numpy()     # left, right soles
        low = np.stack([f[..., 2].min(1) for f in feet], 1)                   # [T, 2]
        shift_xy = np.zeros((frames, 3))
        for t in range(1, frames):
            stance = int(np.argmin(low[t]))
            step = feet[stance][t].mean(0) - feet[stance][t - 1].mean(0)
            shift_xy[t] = shift_xy[t - 1] - np.array([step[0], step[1], 0.0])
        position = position + torch.tensor(shift_xy, dtype=torch.float32)
        rotations, kin, kp = model.pose(rest, root, torch.tensor(pose, dtype=torch.float32), position)
        # Stand on the ground: the lowest foot point of each frame on Z = 0 (plus the jump).
        lowest = kp[..., 2].min(1).values - torch.tensor(path[:, 2], dtype=torch.float32)
        shift = torch.zeros(frames, 3)
        shift[:, 2] = -lowest
        position = position + shift
        rotations, kin, kp = model.pose(rest, root, torch.tensor(pose, dtype=torch.float32), position)
    keypoints = kp.numpy()
    path = camera_path(camera_motion, camera_position, keypoints, seed)
    world_from_camera = path[0]
    focal = 0.5 * width / math.tan(math.radians(fov_degrees) / 2)
    intrinsics = (focal, focal, width / 2, height / 2)
    camera_from_world = np.linalg.inv(path)                                   # [T, 4, 4]
    cam = np.einsum("tij,tkj->tki", camera_from_world[:, :3, :3], keypoints) + camera_from_world[:, None, :3, 3]
    uv = np.stack([focal * cam[..., 0] / cam[..., 2] + width / 2,
                   focal * cam[..., 1] / cam[..., 2] + height / 2], -1)
    uv = uv + rng.normal(0, noise_px, uv.shape)
    conf = rng.uniform(0.6, 1.0, uv.shape[:2])
    conf[rng.random(conf.shape) < drop] = 0.0
    kp2d = np.concatenate([uv, conf[..., None]], -1).astype(np.float32)
    hips = (cam[:, 11] + cam[:, 12]) / 2
    landmarks = cam - hips[:, None] + rng.normal(0, 0.02, cam.shape)
    dirs = np.concatenate([landmarks, conf[..., None]], -1).astype(np.float32)
    return Clip(keypoints, kin.positions.numpy(), rotations.numpy(), position.numpy(),
                world_from_camera.astype(np.float32), intrinsics, width, height, fps,
                Observations(kp2d, dirs, intrinsics), shape,
                None if camera_motion == "static" else path.astype(np.float32))


def procrustes(pred: np.ndarray, true: np.ndarray, scale: bool = True) -> np.ndarray:
    """Similarity (or rigid) alignment of ``pred`` onto ``true`` (Umeyama 1991). [N, 3] -> [N, 3]"""
    mp, mt = pred.mean(0), true.mean(0)
    p, q = pred - mp, true - mt
    u, s, vt = np.linalg.svd(p.T @ q)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.diag([1.0, 1.0, d])
    rotation = (u @ fix @ vt).T
    factor = (s * np.diag(fix)).sum() / (p ** 2).sum() if scale else 1.0
    return factor * p @ rotation.T + mt


def metrics(pred: np.ndarray, true: np.ndarray, fps: float, pred_contacts: np.ndarray | None = None,
            feet: list | None = None) -> dict:
    """Standard figures in millimetres on keypoints [T, K, 3] (world).

    MPJPE after aligning the pelvis (hip midpoint) per frame; PA-MPJPE with a per-frame
    similarity; WA-MPJPE with one similarity for the whole clip; W-MPJPE with the first two
    frames aligned rigidly; root error (hip midpoint, world, first two frames aligned);
    acceleration error; foot sliding (mm/frame of horizontal motion of foot points on frames
    where the prediction says they touch the ground).
    """
    pelvis_p = (pred[:, 11] + pred[:, 12]) / 2
    pelvis_t = (true[:, 11] + true[:, 12]) / 2
    mm = 1000.0
    out = {"mpjpe": float(np.linalg.norm((pred - pelvis_p[:, None]) - (true - pelvis_t[:, None]), axis=-1).mean() * mm)}
    out["pa_mpjpe"] = float(np.mean([np.linalg.norm(procrustes(p, t) - t, axis=-1).mean()
                                     for p, t in zip(pred, true)]) * mm)
    flat_p, flat_t = pred.reshape(-1, 3), true.reshape(-1, 3)
    out["wa_mpjpe"] = float(np.linalg.norm(procrustes(flat_p, flat_t) - flat_t, axis=-1).mean() * mm)
    first_p, first_t = pred[:2].reshape(-1, 3), true[:2].reshape(-1, 3)
    mp, mt = first_p.mean(0), first_t.mean(0)
    u, s, vt = np.linalg.svd((first_p - mp).T @ (first_t - mt))
    d = np.sign(np.linalg.det(u @ vt))
    rotation = (u @ np.diag([1, 1, d]) @ vt).T
    aligned = (flat_p - mp) @ rotation.T + mt
    out["w_mpjpe"] = float(np.linalg.norm(aligned - flat_t, axis=-1).mean() * mm)
    # The world's yaw and ground origin are a gauge: root error after the same first-two-frames
    # rigid alignment as W-MPJPE.
    root_aligned = (pelvis_p - mp) @ rotation.T + mt
    out["root_error"] = float(np.linalg.norm(root_aligned - pelvis_t, axis=-1).mean() * mm)
    if len(pred) >= 3:
        acc_p = pred[2:] - 2 * pred[1:-1] + pred[:-2]
        acc_t = true[2:] - 2 * true[1:-1] + true[:-2]
        out["accel_error"] = float(np.linalg.norm(acc_p - acc_t, axis=-1).mean() * mm)
    if pred_contacts is not None and feet is not None and len(pred) >= 2:
        step = np.linalg.norm(np.diff(pred[:, feet, :2], axis=0), axis=-1)
        on = (pred_contacts[1:] > 0.5) & (pred_contacts[:-1] > 0.5)
        out["foot_sliding"] = float(step[on].mean() * mm) if on.any() else 0.0
    return out


def render_clip(body: Body, clip: Clip, background=(70, 90, 110)) -> np.ndarray:
    """Render the clip's body as a shaded point-splatted mesh (numpy; no GPU, no bpy).

    Each vertex of the skinned Anny mesh is projected through the clip's camera and splatted as
    a small square, far to near (painter's order), shaded by its normal (Lambert, key light from
    the camera's upper left); a checker ground plane is drawn first.

    Returns:
        sRGB frames. [T, H, W, 3] uint8
    """
    from nskernels.skinning import Kinematics, skin_points

    rest = body.rest(torch.tensor(clip.shape, dtype=torch.float32), full=True)
    faces = torch.tensor(body.faces, dtype=torch.long)
    with torch.no_grad():
        rotations = torch.tensor(clip.local_rotations)
        positions = torch.tensor(clip.joints)
        world_rot = _world_rotations(rotations, body.parents)
        verts = skin_points(Kinematics(world_rot, positions), rest.joints, rest.vertices,
                            torch.tensor(body.skin_index, dtype=torch.long),
                            torch.tensor(body.skin_weight)).numpy()
    w, h = clip.width, clip.height
    fx, fy, cx, cy = clip.intrinsics
    camera_from_world = np.linalg.inv(clip.world_from_camera_cv)
    frames = np.empty((len(verts), h, w, 3), np.uint8)
    # Ground: a checker of 0.5 m squares seen through the camera (per pixel ray-plane hit).
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    rays = np.stack([(xs - cx) / fx, (ys - cy) / fy, np.ones_like(xs)], -1) @ clip.world_from_camera_cv[:3, :3].T
    origin = clip.world_from_camera_cv[:3, 3]
    hit = -origin[2] / np.where(rays[..., 2] < -1e-6, rays[..., 2], -1e-6)
    ground = origin + rays * hit[..., None]
    checker = ((np.floor(ground[..., 0] * 2) + np.floor(ground[..., 1] * 2)) % 2).astype(bool)
    floor = np.where(checker[..., None], np.array([150, 150, 140]), np.array([110, 110, 100]))
    sky = rays[..., 2] >= -1e-6
    base = np.where(sky[..., None], np.array(background), floor).astype(np.uint8)
    light = np.array([-0.4, -0.6, -0.7])
    light /= np.linalg.norm(light)
    for t, v in enumerate(verts):
        cam = v @ camera_from_world[:3, :3].T + camera_from_world[:3, 3]
        tri = cam[faces.numpy()]
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        vn = np.zeros_like(cam)
        for k in range(3):
            np.add.at(vn, faces.numpy()[:, k], normals)
        vn /= np.linalg.norm(vn, axis=1, keepdims=True) + 1e-12
        shade = np.clip(-(vn @ light), 0.0, 1.0) * 0.75 + 0.25
        facing = (vn * cam).sum(1) < 0          # normals towards the camera
        u = np.round(fx * cam[:, 0] / cam[:, 2] + cx - 0.5).astype(int)
        r = np.round(fy * cam[:, 1] / cam[:, 2] + cy - 0.5).astype(int)
        order = np.argsort(-cam[:, 2])
        image = base.copy()
        skin = np.array([205, 160, 130])
        for du in (-1, 0, 1):
            for dv in (-1, 0, 1):
                uu, rr = u[order] + du, r[order] + dv
                ok = (uu >= 0) & (uu < w) & (rr >= 0) & (rr < h) & facing[order]
                image[rr[ok], uu[ok]] = (skin * shade[order][ok, None]).astype(np.uint8)
        frames[t] = image
    return frames


def _world_rotations(local: torch.Tensor, parents: list) -> torch.Tensor:
    out = local.clone()
    for j, p in enumerate(parents):
        if p >= 0:
            out[:, j] = out[:, p] @ local[:, j]
    return out
