"""Synthetic clips with a known answer: a body moving in the world, seen by a static camera or
along a camera path (``camera_motion``: "pan" turns on a tripod, "track" dollies alongside the
body, "arc" circles it; all keep the body in view).

Used by the tests and the benchmark. A motion is a set of local rotations of the body's fitted
joints (sines and smooth bumps: no kinks, so the truth's acceleration is smooth) plus a root
yaw and lift; the feet stay level, the lower foot carries the body (a softmax of the two
soles' heights: the root moves by what that foot moved relative to the body and stands on it),
so planted feet neither skate nor pivot (the hips twist against a turn). The observations are the body's 23 common keypoints projected through the camera, with pixel noise,
dropped points and the metric, camera-aligned 3D landmarks a detector such as MediaPipe gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


from nskernels.rotations import axis_angle_to_matrix, matrix_to_axis_angle

from .body import Body
from .fit import Observations, _Model, rest_keypoints
from .keypoints import INDEX

MOTIONS = ("walk", "turn", "jump", "crouch")
_LEFT_SOLE = [INDEX[n] for n in ("left_heel", "left_big_toe", "left_small_toe")]
_RIGHT_SOLE = [INDEX[n] for n in ("right_heel", "right_big_toe", "right_small_toe")]


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


def _bump(phase, centre: float, power: int = 3):
    """A smooth periodic bump in [0, 1], 1 at ``centre``, ((1 + cos)/2)^power (C-infinity)."""
    return (0.5 * (1 + np.cos(phase - centre))) ** power


#: Mean over a cycle of ``_bump(p, c, 4)``: C(8, 4) / 2^8.
_BUMP4_MEAN = 70 / 256
#: Thigh pitch range of the walk (radians, front to back).
_STRIDE = 0.7
_KNEE_PEAK, _KNEE_LEAD, _KNEE_POWER = 1.0, -0.3, 3


def _gait_angle(phase):
    """Thigh pitch of the walk at gait ``phase`` (radians; negative: forward), C-infinity:
    the integral of ``-1 + bump / mean(bump)`` (swing forward around phase 0, back in stance),
    scaled to :data:`_STRIDE` and centred."""
    grid = np.linspace(-math.pi, math.pi, 2049)
    rate = 1.0 - _bump(grid, 0.0, 4) / _BUMP4_MEAN          # d(pitch)/d(phase), +: backwards
    curve = np.concatenate([[0.0], np.cumsum(0.5 * (rate[1:] + rate[:-1]) * np.diff(grid))])
    curve = (curve - 0.5 * (curve.max() + curve.min())) * _STRIDE / np.ptp(curve)
    wrapped = (np.asarray(phase) + math.pi) % (2 * math.pi) - math.pi
    return np.interp(wrapped, grid, curve)


def _motion(body: Body, kind: str, t_count: int, fps: float):
    """Local rotations of the free joints [T, F-1, 3, 3], root yaw [T], root lift [T].

    Every curve is built from sines and smooth bumps: the truth has no kinks (a kinked truth
    makes any estimate look jerky in the acceleration error). Feet stay level, so a planted foot
    moves rigidly with the body and :func:`make_clip` can keep it in place.
    """
    names = [body.names[j] for j in body.free[1:]]
    pitch = np.zeros((t_count, len(names)))     # about each joint's X (+: leg back / knee bent / toes down)
    twist = np.zeros((t_count, len(names)))     # about the parent's Z, applied after the pitch
    time = np.arange(t_count) / fps
    phase = 2 * math.pi * 0.9 * time

    left = lambda n: n.endswith(".L") or n.startswith("left")  # noqa: E731
    right = lambda n: n.endswith(".R") or n.startswith("right")  # noqa: E731
    is_thigh = lambda n: "upperleg" in n or n.endswith("_hip")  # noqa: E731
    is_knee = lambda n: "lowerleg" in n or n.endswith("_knee")  # noqa: E731
    is_foot = lambda n: "foot" in n or n.endswith("_ankle")  # noqa: E731
    is_arm = lambda n: "upperarm" in n or n.endswith("_shoulder")  # noqa: E731

    def put(target, select, values):
        for i, name in enumerate(names):
            if select(name):
                target[:, i] = values

    yaw = np.zeros(t_count)
    lift = np.zeros(t_count)
    if kind in ("walk", "turn"):
        yaw = np.full(t_count, math.radians(60)) if kind == "walk" else np.linspace(0, 1.5 * math.pi, t_count)
        for side, offset in ((left, 0.0), (right, math.pi)):
            p = phase + offset
            # Gait: the thigh swings forward while its knee is bent (a bump around p = 0) and
            # moves back at a steady rate in stance (its rate is -1 + bump / mean(bump), whose
            # integral closes over a cycle), so the body moves at a nearly constant speed and
            # the feet hand over without a jolt. The foot stays level (its pitch undoes thigh
            # + knee), so a planted foot moves rigidly with the leg.
            swing = _bump(p, 0.0, 4)
            thigh = _gait_angle(p)
            knee = _KNEE_PEAK * _bump(p, _KNEE_LEAD, _KNEE_POWER)
            put(pitch, lambda n: is_thigh(n) and side(n), thigh)
            put(pitch, lambda n: is_knee(n) and side(n), knee)
            put(pitch, lambda n: is_foot(n) and side(n), -(thigh + knee))
            put(pitch, lambda n: is_arm(n) and side(n), -thigh)
            # A turning body keeps its planted foot's heading: the hip twists against the yaw
            # while the foot is down and catches up while it swings, so planted feet do not
            # pivot (in the truth nor in the metric).
            rate = np.gradient(yaw)
            heading = np.cumsum(rate * swing / _BUMP4_MEAN)
            heading -= heading.mean() - yaw.mean()
            put(twist, lambda n: is_thigh(n) and side(n), heading - yaw)
    elif kind == "crouch":
        depth = 0.5 * (1 - np.cos(2 * math.pi * time / max(time[-1], 1e-6)))
        put(pitch, is_thigh, -1.1 * depth)
        put(pitch, is_knee, 2.0 * depth)
        put(pitch, is_foot, -0.9 * depth)
        put(pitch, is_arm, -0.8 * depth)
        yaw[:] = math.radians(-30)
    elif kind == "jump":
        # 1.2 jumps a second: a crouch around each landing/take-off (phase 0), flight between.
        p = 2 * math.pi * 1.2 * time
        crouch = _bump(p, 0.0, 3)
        put(pitch, is_thigh, -0.7 * crouch)
        put(pitch, is_knee, 1.3 * crouch)
        put(pitch, is_foot, -0.6 * crouch)
        put(pitch, is_arm, -1.2 * (0.5 * (1 - np.cos(p))))
        lift = 0.3 * _bump(p, math.pi, 4)
        yaw[:] = math.radians(20)
    else:
        raise ValueError(f"unknown motion {kind!r}; known: {MOTIONS}")
    zero = torch.zeros(t_count, len(names))
    rx = axis_angle_to_matrix(torch.stack([torch.tensor(pitch, dtype=torch.float32), zero, zero], -1))
    rz = axis_angle_to_matrix(torch.stack([zero, zero, torch.tensor(twist, dtype=torch.float32)], -1))
    return rz @ rx, yaw, lift


#: Softness of the choice of the planted foot (metres of sole height): the foot lower by a few
#: times this carries the body. Large enough that the hand-over takes a few frames instead of
#: one (a root velocity switching in one frame is a kink in the truth). The price: during the
#: ~4-frame hand-over both soles are within 3 cm of the floor and the one leaving slides
#: 17-60 mm/frame (the contact hysteresis of contact.py excludes it by its speed; the camera
#: path's triangulation trims such frames off a planting).
STANCE_SOFTNESS = 0.01


def make_clip(body: Body, kind: str = "walk", frames: int = 60, fps: float = 30.0,
              camera_position=(0.8, -5.0, 1.4), width: int = 640, height: int = 360,
              fov_degrees: float = 55.0, noise_px: float = 1.0, drop: float = 0.1,
              shape: np.ndarray | None = None, seed: int = 0, camera_motion: str = "static") -> Clip:
    """A clip of ``kind`` seen from a camera at ``camera_position`` looking at the body's start
    (``camera_motion`` "static"), or moving from there (:func:`camera_path`)."""
    rng = np.random.default_rng(seed)
    model = _Model(body)
    shape = body.shape_init if shape is None else np.asarray(shape, np.float32)
    local, yaw, lift = _motion(body, kind, frames, fps)
    pose = matrix_to_axis_angle(local)
    with torch.no_grad():
        rest = body.rest(torch.tensor(shape, dtype=torch.float32))
        # Each foot's sole height: its sole keypoints less their height above the sole at rest.
        sole_lift = rest_keypoints(rest)[:, 2].numpy()
        root = torch.zeros(frames, 3)
        root[:, 2] = torch.tensor(yaw, dtype=torch.float32)   # a pure yaw's axis-angle is (0, 0, yaw)
        position = rest.joints[0].expand(frames, 3).clone()
        _, _, kp = model.pose(rest, root, pose, position)
        kp = kp.numpy().astype(np.float64)
        soles = [kp[:, ids] - np.array([0, 0, 1.0]) * sole_lift[ids, None] for ids in (_LEFT_SOLE, _RIGHT_SOLE)]
        heights = np.stack([s[..., 2].mean(1) for s in soles], 1)                       # [T, 2]
        # The lower foot carries the body (a softmax of the sole heights): the root moves by
        # what the carrying foot moved relative to the body, and stands on it.
        carry = np.exp(-(heights - heights.min(1, keepdims=True)) / STANCE_SOFTNESS)
        carry /= carry.sum(1, keepdims=True)
        steps = np.stack([s.mean(1) for s in soles], 1)                                 # [T, 2, 3]
        moved = np.diff(steps, axis=0)                                                  # [T-1, 2, 3]
        weight = 0.5 * (carry[1:] + carry[:-1])
        shift = np.zeros((frames, 3))
        shift[1:, :2] = -np.cumsum((weight[..., None] * moved).sum(1), axis=0)[:, :2]
        shift[:, 2] = -(carry * heights).sum(1) + lift
        position = position + torch.tensor(shift, dtype=torch.float32)
        rotations, kin, kp = model.pose(rest, root, pose, position)
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


def skinned_vertices(body: Body, clip: Clip) -> np.ndarray:
    """The clip's posed mesh: the body's skinned vertices per frame (world). [T, V, 3]"""
    from nskernels.skinning import Kinematics, skin_points

    rest = body.rest(torch.tensor(clip.shape, dtype=torch.float32), full=True)
    with torch.no_grad():
        world_rot = _world_rotations(torch.tensor(clip.local_rotations), body.parents)
        return skin_points(Kinematics(world_rot, torch.tensor(clip.joints)), rest.joints, rest.vertices,
                           torch.tensor(body.skin_index, dtype=torch.long),
                           torch.tensor(body.skin_weight)).numpy()


def render_clip(body: Body, clip: Clip, background=(70, 90, 110)) -> np.ndarray:
    """Render the clip's body as a shaded point-splatted mesh (numpy; no GPU, no bpy).

    Each vertex of the skinned Anny mesh is projected through the clip's camera and splatted as
    a small square, far to near (painter's order), shaded by its normal (Lambert, key light from
    the camera's upper left); a checker ground plane is drawn first.

    Returns:
        sRGB frames. [T, H, W, 3] uint8
    """
    faces = torch.tensor(body.faces, dtype=torch.long)
    verts = skinned_vertices(body, clip)
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
