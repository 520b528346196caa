"""Fitting a body to 2D keypoints over a whole clip at once: one shape, a pose per frame.

An optimisation in the spirit of SMPLify / SLAHMR's stages 1-2 and HuMoR's test-time terms
(METHODS.md 2.C.3, 2.C.4), reimplemented, without learned priors: all frames are one batch on
the device and every term is a mean over frames.

Energy (camera frame is OpenCV's: x right, y down, z forward; the body's frame is the Motion
contract's: Z up, facing -Y):
- reprojection: confidence-weighted Geman-McClure rho(r) = r^2 / (r^2 + sigma^2) of the pixel
  residual of the 23 common keypoints, r in units of the person's image height;
- bone directions: 1 - cos between fitted limb directions and the detector's metric 3D
  landmarks (MediaPipe's world landmarks share the camera's axes), visibility-weighted;
- smoothness: squared acceleration of the keypoints (metres per frame^2), heavier in the
  ground stage (a second, smoothing pass); after it, a zero-phase Gaussian low-pass of the
  joint rotations and root position (`Fitter.smooth`) removes the remaining per-frame jitter;
- pose prior: squared axis-angle of the body joints, knees as hinges bending about +X only;
- shape prior: towards the mean body;
- ground stage only: zero velocity of foot points in contact, contact points at Z = 0, no
  point below the ground, and each run of contact frames holding its sole point at one place
  (contact.py).

Each stage runs Adam (Kingma & Ba 2015) on all variables at once (the shape, the robust
kernel's annealing, the 3D-landmark directions weighted up to pick each limb's depth), then
L-BFGS with a strong-Wolfe line search to converge; the root orientation starts from four yaw
hypotheses per frame, the best of which is kept (stage "init").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from nskernels.rotations import axis_angle_to_matrix, matrix_to_axis_angle, rotation_x, rotation_z
from nskernels.skinning import anchor_points, forward_kinematics, kinematic_levels

from .body import Body, Rest
from .keypoints import BONES, INDEX

log = logging.getLogger(__name__)

TORSO = [INDEX[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")]
#: Foot sole points: their contacts drive the ground stage.
FEET = [INDEX[n] for n in ("left_heel", "left_big_toe", "left_small_toe", "right_heel",
                           "right_big_toe", "right_small_toe")]


@dataclass
class FitSettings:
    """Weights and schedules of the fit.

    Attributes:
        init_iterations: Adam steps of the root-only stage per yaw hypothesis (default 40).
        iterations: steps of the full camera-frame fit (default 250): Adam steps, then L-BFGS
            evaluations (see ``adam_fraction``).
        ground_iterations: steps of the ground-stage refinement (default 150), split alike.
        lr: Adam learning rate (default 0.03).
        sigma: Geman-McClure scale, fraction of the person's image height (default 0.05).
        w_direction: weight of the 3D-landmark bone-direction prior during Adam (default 1): it
            picks the basin (a limb bent towards or away from the camera projects alike).
        w_direction_refine: ... during L-BFGS (default 0.1): the keypoints decide the details,
            the landmarks' per-frame noise would otherwise show as jitter. On clips Blender
            rendered, through MediaPipe (bench_motion_rendered, mean of 8), 0.3 -> 0.1:
            PA-MPJPE 47.5 -> 46.4 mm, WA-MPJPE 76.9 -> 75.2 mm, acceleration error 6.2 -> 6.1
            mm/frame^2 (0.6: 48.7, 80.8, 6.4; 0: as 0.1).
        w_accel: weight of the acceleration term, per (m/frame^2)^2 (default 100).
        w_pose: weight of the pose prior (default 0.002).
        w_knee: weight of the knee hinge (default 0.5).
        w_shape: weight of the shape prior (default 0.01).
        w_contact_velocity: weight of foot velocity on contacts, per (m/frame)^2 (default 200).
        w_contact_height: weight of contact height, per m^2 (default 20).
        w_penetration: weight of points below the ground, per m^2 (default 1000).
        w_lock: weight of a sole point's distance to the mean of its contact run, per m^2
            (default 2000).
        anneal: the robust kernel starts this many times wider than ``sigma`` (default 10).
        w_depth: weight of the pull of the root depth to the torso-length depth (default 10).
        shape_iterations: steps of each stage during which the shape is optimised too; it is
            frozen afterwards (default 40).
        adam_fraction: share of each stage's steps taken by Adam (shape, robust-kernel
            annealing); L-BFGS takes the rest to converge (default 0.4).
        ground_adam_fraction: the same for the ground stage, which starts from a converged fit
            and keeps its shape (default 0: Adam's first steps, a learning rate's worth in
            every variable, undid more than its 60 steps mended).
        ground_accel_scale: the acceleration weight of the ground stage, times ``w_accel``
            (default 4: the second, smoothing pass; bench_motion walk 6.9 -> 5.7, jump 10.4 ->
            8.7, crouch 10.5 -> 6.7 mm/frame^2 at the same PA-MPJPE).
        final_smoothing: standard deviation in frames of a zero-phase Gaussian low-pass of the
            joint rotations and root position after the ground stage (default 1; 0: none).
            The residual jitter of the fit is white (each frame's keypoint noise and dropped
            points), so it sits mostly above the motion's own frequencies; the energy's
            acceleration term cannot remove it without also flattening hard accelerations
            (a 10x weight made the jump worse). bench_motion, mean of 8 clips: acceleration
            error 7.7 -> 5.9 mm/frame^2, PA-MPJPE 15.7 -> 15.2 mm, foot sliding 1.3 -> 1.8
            mm/frame (contact edges are smoothed too).
    """

    init_iterations: int = 40
    iterations: int = 250
    ground_iterations: int = 150
    lr: float = 0.03
    sigma: float = 0.05
    w_direction: float = 1.0
    w_direction_refine: float = 0.1
    w_accel: float = 100.0
    w_pose: float = 0.002
    w_knee: float = 0.5
    w_shape: float = 0.01
    w_contact_velocity: float = 200.0
    w_contact_height: float = 20.0
    w_penetration: float = 1000.0
    w_lock: float = 2000.0
    anneal: float = 10.0
    shape_iterations: int = 40
    adam_fraction: float = 0.4
    ground_adam_fraction: float = 0.0
    ground_accel_scale: float = 4.0
    w_depth: float = 10.0
    final_smoothing: float = 1.0


@dataclass
class Observations:
    """What the fit sees.

    Attributes:
        keypoints2d: common keypoints (x, y pixels, confidence 0 where unseen). [T, 23, 3]
        directions3d: the detector's metric 3D landmarks in camera-aligned axes and a
            visibility, or None. [T, 23, 4]
        intrinsics: (fx, fy, cx, cy) in pixels.
    """

    keypoints2d: np.ndarray
    directions3d: np.ndarray | None
    intrinsics: tuple


@dataclass
class Fit:
    """The fitted body.

    Attributes:
        shape: shape parameters. [S]
        local_rotations: each joint's rotation relative to its parent; the root's is relative
            to the fit's frame (camera or world). [T, J, 3, 3]
        root_position: root joint positions in the fit's frame. [T, 3]
        joints: posed joints. [T, J, 3]
        keypoints: posed common keypoints. [T, 23, 3]
        rest: the body at rest for ``shape``.
        losses: final value of each energy term.
    """

    shape: Tensor
    local_rotations: Tensor
    root_position: Tensor
    joints: Tensor
    keypoints: Tensor
    rest: Rest
    losses: dict = field(default_factory=dict)


@dataclass
class Ground:
    """The ground stage's extra inputs: a static camera in a Z-up world (a moving camera's
    path: `camera_path.PathGround`, which overrides the methods below).

    Attributes:
        camera_from_world: rotation. [3, 3]
        camera_position: camera centre in the world. [3]
        contacts: soft contact per foot point in :data:`FEET` order. [T, 6]
        tilt: a correction of the camera's rotation, axis-angle in the camera, optimised. [3]
        shift: a correction of the camera's position in the world, optimised. [3]
        segments: run id of each sole point's contact frames (`contact.segments`), -1
            outside; the fit holds each run in place. [T, 6] int64, or None
    """

    camera_from_world: Tensor
    camera_position: Tensor
    contacts: Tensor
    tilt: Tensor = field(default_factory=lambda: torch.zeros(3))
    segments: Tensor | None = None
    shift: Tensor = field(default_factory=lambda: torch.zeros(3))

    def to_camera(self, points: Tensor) -> Tensor:
        """World points [T, K, 3] -> OpenCV camera points [T, K, 3], corrections applied."""
        camera_from_world = axis_angle_to_matrix(self.tilt) @ self.camera_from_world
        return (points - self.camera_position - self.shift) @ camera_from_world.T

    def prior(self) -> Tensor:
        """Holds the gauge of the world: the camera's yaw and ground position."""
        return 0.1 * (self.tilt[1] ** 2 + self.shift[:2].pow(2).sum())

    def variables(self) -> list[Tensor]:
        """The corrections, reset to zero and made optimisable."""
        self.tilt = torch.zeros(3, requires_grad=True)
        self.shift = torch.zeros(3, requires_grad=True)
        return [self.tilt, self.shift]

    def corrected(self) -> tuple[np.ndarray, np.ndarray]:
        """(camera_from_world [3, 3], camera position [3]) with the corrections applied."""
        with torch.no_grad():
            rotation = axis_angle_to_matrix(self.tilt) @ self.camera_from_world
            return rotation.numpy(), (self.camera_position + self.shift).numpy()


class _Model:
    """Pose and project a body for a batch of frames.

    The fit only rotates the free joints; every other joint keeps its rest rotation relative
    to its parent, so it moves rigidly with its nearest free ancestor. The keypoint anchors are
    therefore folded onto the free joints once per shape and the fit's kinematics run over
    the free joints only (15 for Anny instead of 104), which is exact.
    """

    def __init__(self, body: Body):
        self.body = body
        self.parents = torch.tensor(body.parents)
        self.levels = kinematic_levels(body.parents)
        self.free = torch.tensor(body.free)
        self.knees = [body.free.index(k) for k in body.knees]
        self.j = len(body.parents)
        self.bounded = body.shape_bounds is not None
        slot = {j: i for i, j in enumerate(body.free)}
        owner = []
        for j, p in enumerate(body.parents):
            owner.append(slot[j] if j in slot else owner[p])
        self.owner = torch.tensor(owner)                      # [J] -> free slot
        self.owner_joint = self.free[self.owner]              # [J] -> free joint index
        free_parents = []
        for j in body.free:
            p = body.parents[j]
            free_parents.append(-1 if p < 0 else owner[p])
        if free_parents[0] != -1 or any(p < 0 for p in free_parents[1:]):
            raise ValueError("the first free joint must be the root and the only one without a parent")
        self.free_parents = torch.tensor(free_parents)
        self.free_levels = kinematic_levels(free_parents)

    def shape(self, raw: Tensor) -> Tensor:
        return torch.sigmoid(raw) if self.bounded else raw

    def shape_raw(self, value: np.ndarray) -> Tensor:
        v = torch.tensor(np.asarray(value), dtype=torch.float32)
        return torch.logit(v.clamp(1e-3, 1 - 1e-3)) if self.bounded else v

    def reduce(self, rest: Rest) -> Rest:
        """Anchors folded onto the free joints: weight [23, F], offset [23, F, 3]."""
        f = len(self.body.free)
        lever = rest.joints - rest.joints[self.owner_joint]               # rest_b - rest_a [J, 3]
        weight = rest.anchor_weight                                       # [K, J]
        moment = weight[..., None] * (rest.anchor_offset + lever)         # [K, J, 3]
        w = torch.zeros(weight.shape[0], f).index_add(1, self.owner, weight)
        m = torch.zeros(weight.shape[0], f, 3).index_add(1, self.owner, moment)
        return Rest(rest.joints[self.free], w, m / w.clamp_min(1e-12)[..., None], None)

    def local_rotations(self, root: Tensor, pose: Tensor) -> Tensor:
        """root [T, 3] and pose [T, F-1, 3] axis-angle -> all joints [T, J, 3, 3]."""
        t = root.shape[0]
        free = axis_angle_to_matrix(torch.cat([root[:, None], pose], 1))
        eye = torch.eye(3).expand(t, self.j, 3, 3)
        return eye.index_copy(1, self.free, free)

    def pose_free(self, reduced: Rest, root: Tensor, pose: Tensor, position: Tensor) -> Tensor:
        """Keypoints [T, 23, 3] from the free joints only (the fit's inner loop)."""
        free = axis_angle_to_matrix(torch.cat([root[:, None], pose], 1))
        kin = forward_kinematics(free, position, reduced.joints, self.free_parents, self.free_levels)
        return anchor_points(kin, reduced.anchor_weight, reduced.anchor_offset)

    def pose(self, rest: Rest, root: Tensor, pose: Tensor, position: Tensor):
        """Every joint: (local rotations [T, J, 3, 3], Kinematics, keypoints [T, 23, 3])."""
        rotations = self.local_rotations(root, pose)
        kin = forward_kinematics(rotations, position, rest.joints, self.parents, self.levels)
        return rotations, kin, anchor_points(kin, rest.anchor_weight, rest.anchor_offset)


def rest_keypoints(rest: Rest) -> Tensor:
    """The common keypoints of the rest pose, body frame. [23, 3]"""
    return (rest.anchor_weight[..., None] * (rest.anchor_offset + rest.joints)).sum(1)


def _gm(residual2: Tensor, sigma: float) -> Tensor:
    return residual2 / (residual2 + sigma * sigma)


def _project(points: Tensor, intrinsics: tuple) -> tuple[Tensor, Tensor]:
    fx, fy, cx, cy = intrinsics
    z = points[..., 2].clamp_min(0.05)
    return torch.stack([fx * points[..., 0] / z + cx, fy * points[..., 1] / z + cy], -1), z


def _initial_translation(kp: np.ndarray, intrinsics: tuple, torso_m: float) -> np.ndarray:
    """Root positions from the torso's image length (pinhole: z = f L / l), gaps filled."""
    fx, fy, cx, cy = intrinsics
    conf = kp[..., 2]
    t_count = kp.shape[0]
    out = np.full((t_count, 3), np.nan, np.float32)
    ls, rs, lh, rh = TORSO
    for t in range(t_count):
        if min(conf[t, [ls, rs, lh, rh]]) <= 0.05:
            continue
        shoulders = (kp[t, ls, :2] + kp[t, rs, :2]) / 2
        hips = (kp[t, lh, :2] + kp[t, rh, :2]) / 2
        length = max(np.linalg.norm(shoulders - hips), 1.0)
        z = fy * torso_m / length
        out[t] = ((hips[0] - cx) * z / fx, (hips[1] - cy) * z / fy, z)
    seen = ~np.isnan(out[:, 0])
    if not seen.any():
        out[:] = (0.0, 0.0, 4.0)
        return out
    idx = np.arange(t_count)
    for c in range(3):
        out[:, c] = np.interp(idx, idx[seen], out[seen, c])
    return out


class Fitter:
    """Runs the stages; ``report(stage, step, total)`` is called every few steps (progress and
    cancel: it may raise)."""

    def __init__(self, body: Body, settings: FitSettings, device: str = "cpu",
                 report: Callable[[str, int, int], None] | None = None):
        self.body = body
        self.settings = settings
        self.model = _Model(body)
        self.device = device
        self.report = report or (lambda stage, step, total: None)

    # -- energy -------------------------------------------------------------------------------
    def _energy(self, obs: dict, reduced: Rest, root, pose, position, shape_raw, ground: Ground | None,
                sigma: float | None = None, w_direction: float | None = None):
        """Total energy and its terms; ``reduced`` from `_Model.reduce` (free joints only)."""
        s = self.settings
        sigma = s.sigma if sigma is None else sigma
        w_direction = s.w_direction if w_direction is None else w_direction
        kp = self.model.pose_free(reduced, root, pose, position)
        t = kp.shape[0]
        cam_points = kp if ground is None else ground.to_camera(kp)
        uv, _ = _project(cam_points, obs["intrinsics"])
        r2 = ((uv - obs["uv"]) ** 2).sum(-1) / obs["scale"] ** 2
        terms = {"reprojection": (obs["conf"] * _gm(r2, sigma)).sum() / obs["conf_total"]}
        if obs["dirs"] is not None and w_direction > 0:
            a, b = obs["bones"]
            fitted = cam_points[:, b] - cam_points[:, a]
            fitted = fitted / fitted.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            cos = (fitted * obs["dirs"]).sum(-1)
            terms["direction"] = w_direction * (obs["dir_w"] * (1 - cos)).sum() / max(t, 1)
        if t >= 3 and s.w_accel > 0:
            accel = kp[2:] - 2 * kp[1:-1] + kp[:-2]
            # While the robust kernel is wide the reprojection pulls (sigma / wide)^2 as hard;
            # the smoothness follows it down, or it would freeze the limbs before they find
            # their basin.
            w_accel = s.w_accel if ground is None else s.w_accel * s.ground_accel_scale
            terms["accel"] = w_accel * (s.sigma / sigma) ** 2 * (accel ** 2).sum(-1).mean()
        if ground is None and s.w_depth > 0 and obs.get("depth0") is not None and len(obs["depth0"]) == t:
            # The torso's image length gives the depth whatever the limbs do; a soft pull to it
            # keeps folded legs (a crouch) from being read as the body moving away.
            terms["depth"] = s.w_depth * ((position[:, 2] / obs["depth0"] - 1) ** 2).mean()
        terms["pose"] = s.w_pose * (pose ** 2).sum(-1).mean()
        if self.model.knees:
            knee = pose[:, [k - 1 for k in self.model.knees]]
            terms["knee"] = s.w_knee * (torch.relu(-knee[..., 0]) ** 2 + knee[..., 1:].pow(2).sum(-1)).mean()
        shape = self.model.shape(shape_raw)
        prior = shape - torch.tensor(self.body.shape_init)
        terms["shape"] = s.w_shape * (prior ** 2).sum()
        if ground is not None:
            feet = kp[:, FEET]
            # A sole point touching the ground stands as high as it does at rest (the heel
            # keypoint is inside the heel, a few cm above the sole).
            height = feet[..., 2] - rest_keypoints(reduced)[FEET, 2]
            if t >= 2:
                velocity = (feet[1:] - feet[:-1]).pow(2).sum(-1)
                weight = ground.contacts[1:] * ground.contacts[:-1]
                terms["contact_velocity"] = s.w_contact_velocity * (weight * velocity).sum() / t
            if ground.segments is not None and s.w_lock > 0 and bool((ground.segments >= 0).any()):
                # Each run of contact frames holds its point at one place: the squared distance
                # to the run's mean (a slow drift over a planting costs as much as a jump).
                on = ground.segments >= 0
                ids = ground.segments[on]
                points = feet[on]                                           # [N, 3]
                count = torch.zeros(int(ids.max()) + 1).index_add(0, ids, torch.ones(len(ids)))
                mean = torch.zeros(len(count), 3).index_add(0, ids, points) / count[:, None]
                terms["lock"] = s.w_lock * (points - mean[ids]).pow(2).sum() / t
            terms["contact_height"] = s.w_contact_height * (ground.contacts * height ** 2).sum() / t
            terms["penetration"] = s.w_penetration * (torch.relu(-kp[..., 2]) ** 2).sum() / t
            terms["camera"] = ground.prior()
        return sum(terms.values()), terms, kp

    def _observations(self, observations: Observations) -> dict:
        kp = torch.tensor(observations.keypoints2d, dtype=torch.float32)
        conf = kp[..., 2].clamp(0, 1)
        seen = kp[conf > 0.05][:, :2]
        span = (seen.max(0).values - seen.min(0).values).max() if len(seen) else torch.tensor(1.0)
        # Person scale per clip: the median height of the keypoints' box over the frames.
        heights = []
        for frame in observations.keypoints2d:
            ok = frame[:, 2] > 0.05
            if ok.sum() >= 4:
                heights.append(np.ptp(frame[ok, 1]))
        scale = float(np.median(heights)) if heights else float(span)
        a = torch.tensor([p for p, _ in BONES])
        b = torch.tensor([q for _, q in BONES])
        dirs = dir_w = None
        if observations.directions3d is not None:
            d3 = torch.tensor(observations.directions3d, dtype=torch.float32)
            vec = d3[:, b, :3] - d3[:, a, :3]
            dirs = vec / vec.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            dir_w = torch.minimum(d3[:, a, 3], d3[:, b, 3]) * (vec.norm(dim=-1) > 1e-4)
        return {"uv": kp[..., :2], "conf": conf, "conf_total": conf.sum().clamp_min(1.0),
                "scale": max(scale, 8.0), "intrinsics": observations.intrinsics,
                "dirs": dirs, "dir_w": dir_w, "bones": (a, b)}

    # -- stages -------------------------------------------------------------------------------
    def fit_camera(self, observations: Observations) -> Fit:
        """Fit in the camera frame: root-only hypotheses, then everything."""
        s = self.settings
        obs = self._observations(observations)
        t = obs["uv"].shape[0]
        f = len(self.body.free)
        shape_raw = self.model.shape_raw(self.body.shape_init)
        with torch.no_grad():
            rest0 = self.body.rest(self.model.shape(shape_raw))
            reduced0 = self.model.reduce(rest0)
            torso = (rest0.anchor_weight[TORSO][:, :, None] * (rest0.anchor_offset[TORSO] + rest0.joints)).sum(1)
            torso_m = float(((torso[0] + torso[1]) / 2 - (torso[2] + torso[3]) / 2).norm())
        position0 = torch.tensor(_initial_translation(observations.keypoints2d, obs["intrinsics"], torso_m))
        obs["depth0"] = position0[:, 2].clone()

        # 1. Root orientation: four yaws per frame, each fitted alone, the best kept.
        upright = rotation_x(torch.tensor(math.pi / 2))  # body Z up -> camera -y, facing the camera
        yaws = [0.0, 0.5 * math.pi, math.pi, 1.5 * math.pi]
        h = len(yaws)
        root = torch.cat([matrix_to_axis_angle(upright @ rotation_z(torch.tensor(y))).expand(t, 3) for y in yaws])
        root = root.clone().requires_grad_(True)
        position = position0.repeat(h, 1).clone().requires_grad_(True)
        pose = torch.zeros(h * t, f - 1, 3)
        obs_h = dict(obs, uv=obs["uv"].repeat(h, 1, 1), conf=obs["conf"].repeat(h, 1),
                     dirs=None if obs["dirs"] is None else obs["dirs"].repeat(h, 1, 1),
                     dir_w=None if obs["dir_w"] is None else obs["dir_w"].repeat(h, 1))
        optimiser = torch.optim.Adam([root, position], lr=s.lr * 2)
        for step in range(s.init_iterations):
            optimiser.zero_grad()
            kp = self.model.pose_free(reduced0, root, pose, position)
            uv, _ = _project(kp, obs["intrinsics"])
            r2 = ((uv - obs_h["uv"]) ** 2).sum(-1) / obs["scale"] ** 2
            per_frame = (obs_h["conf"] * _gm(r2, s.anneal * s.sigma)).sum(-1)
            if obs_h["dirs"] is not None:
                a, b = obs["bones"]
                fitted = kp[:, b] - kp[:, a]
                fitted = fitted / fitted.norm(dim=-1, keepdim=True).clamp_min(1e-6)
                per_frame = per_frame + (obs_h["dir_w"] * (1 - (fitted * obs_h["dirs"]).sum(-1))).sum(-1)
            per_frame.sum().backward()
            optimiser.step()
            self.report("fit", step, s.init_iterations + s.iterations)
        best = per_frame.detach().reshape(h, t).argmin(0)
        frames = torch.arange(t)
        root0 = root.detach().reshape(h, t, 3)[best, frames]
        position0 = position.detach().reshape(h, t, 3)[best, frames]
        # Frames without a detection take the orientation of the nearest frame with one (their
        # hypotheses all cost nothing); the fit fills them through the smoothness term.
        observed = (obs["conf"] > 0.05).sum(1) >= 4
        if observed.any() and not observed.all():
            seen = torch.nonzero(observed)[:, 0]
            nearest = seen[(frames[:, None] - seen[None]).abs().argmin(1)]
            root0 = root0[nearest]

        # 2. Everything, all frames at once.
        root = root0.clone().requires_grad_(True)
        position = position0.clone().requires_grad_(True)
        pose = torch.zeros(t, f - 1, 3, requires_grad=True)
        shape_raw = shape_raw.clone().requires_grad_(True)
        params = [root, position, pose, shape_raw]
        fit = self._optimise(obs, params, s.iterations, None, "fit", s.init_iterations,
                             s.init_iterations + s.iterations)
        return fit

    def fit_ground(self, observations: Observations, start: Fit, ground: Ground) -> Fit:
        """Refine a fit already in the world with the contact and ground terms."""
        obs = self._observations(observations)
        root = matrix_to_axis_angle(start.local_rotations[:, 0]).clone().requires_grad_(True)
        pose = matrix_to_axis_angle(start.local_rotations[:, self.model.free[1:]]).clone().requires_grad_(True)
        position = start.root_position.clone().requires_grad_(True)
        shape_raw = self.model.shape_raw(start.shape.numpy()).requires_grad_(True)
        steps = self.settings.ground_iterations
        # The camera's tilt and height are refined with the body (the ground plane from the
        # camera-frame fit inherits its depth errors); its yaw and ground position are a gauge
        # of the world the priors below hold in place.
        fit = self._optimise(obs, [root, position, pose, shape_raw, *ground.variables()],
                             steps, ground, "ground", 0, steps, self.settings.ground_adam_fraction)
        return self.smooth(fit, self.settings.final_smoothing)

    def smooth(self, fit: Fit, sigma: float) -> Fit:
        """``fit`` with its free joints' rotations and root position low-passed over time.

        A Gaussian of ``sigma`` frames, zero phase, ends padded by repeating the end frames. The
        rotations are averaged as matrices and projected back onto SO(3) (the chordal mean,
        close to the geodesic one for the few degrees between neighbouring frames); the
        kinematics then give joints and keypoints consistent with the body.
        """
        t = fit.local_rotations.shape[0]
        if sigma <= 0 or t < 3:
            return fit
        radius = max(1, int(math.ceil(3 * sigma)))
        offsets = torch.arange(-radius, radius + 1)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = kernel / kernel.sum()
        index = (torch.arange(t)[:, None] + offsets[None]).clamp(0, t - 1)       # [T, 2r+1]

        def low_pass(x: Tensor) -> Tensor:                                         # [T, ...]
            return torch.einsum("tk,tk...->t...", kernel.expand(t, -1), x[index])

        free = fit.local_rotations[:, self.model.free]                              # [T, F, 3, 3]
        u, _, vt = torch.linalg.svd(low_pass(free))
        fix = torch.ones(u.shape[:-1])
        fix[..., -1] = torch.det(u @ vt).sign()
        free = u @ torch.diag_embed(fix) @ vt
        position = low_pass(fit.root_position)
        axis_angle = matrix_to_axis_angle(free)
        with torch.no_grad():
            rotations, kin, kp = self.model.pose(fit.rest, axis_angle[:, 0], axis_angle[:, 1:], position)
        return Fit(fit.shape, rotations.detach(), position.detach(), kin.positions.detach(), kp.detach(),
                   fit.rest, fit.losses)

    def _optimise(self, obs, params, steps, ground, stage, offset, total, adam_fraction=None) -> Fit:
        """Adam for the first ``adam_fraction`` of ``steps`` (shape, wide robust kernel), then
        L-BFGS for the rest (shape frozen, final kernel).

        Adam's per-parameter step does not shrink with the gradient: from the truth itself 250
        Adam steps left the walk's reprojection energy twice as high (PA-MPJPE 0 -> 8 mm), and
        from the usual start it stopped at 75 mm. L-BFGS with a strong-Wolfe line search reaches
        the energy's minimum in about as many evaluations (15 mm on that clip), each cheaper than
        an Adam step with the shape free."""
        root, position, pose, shape_raw = params[:4]
        s = self.settings
        adam_fraction = s.adam_fraction if adam_fraction is None else adam_fraction
        adam_steps = steps if steps < 10 else int(round(steps * adam_fraction))
        optimiser = torch.optim.Adam(params, lr=s.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(adam_steps, 1), eta_min=s.lr * 0.05)
        terms = {}
        shape_steps = min(adam_steps, s.shape_iterations)
        reduced = None
        for step in range(adam_steps):
            optimiser.zero_grad(set_to_none=True)
            if step < shape_steps:
                reduced = self.model.reduce(self.body.rest(self.model.shape(shape_raw)))
            elif step == shape_steps or step == 0:
                # The shape is settled: freeze it and reuse its rest (a shape update costs
                # several times a pose update). Adam skips parameters without a gradient.
                with torch.no_grad():
                    reduced = self.model.reduce(self.body.rest(self.model.shape(shape_raw)))
            # Graduated non-convexity: a wide robust kernel first, so that far-off points
            # (straight legs at the start) still pull, narrowing to sigma by 60 % of the steps.
            anneal = min(1.0, step / (0.6 * adam_steps)) if ground is None else 1.0
            sigma = s.sigma * s.anneal ** (1.0 - anneal)
            loss, terms, _ = self._energy(obs, reduced, root, pose, position, shape_raw, ground, sigma)
            loss.backward()
            optimiser.step()
            schedule.step()
            self.report(stage, offset + step, total)
        lbfgs_steps = steps - adam_steps
        if lbfgs_steps > 0:
            with torch.no_grad():
                reduced = self.model.reduce(self.body.rest(self.model.shape(shape_raw)))
            free = [p for i, p in enumerate(params) if i != 3]
            lbfgs = torch.optim.LBFGS(free, lr=1.0, max_iter=lbfgs_steps, max_eval=lbfgs_steps,
                                      history_size=20, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-10, tolerance_change=1e-12)
            evaluations = [0]

            def closure():
                lbfgs.zero_grad(set_to_none=True)
                loss, _, _ = self._energy(obs, reduced, root, pose, position, shape_raw, ground,
                                          w_direction=s.w_direction_refine)
                loss.backward()
                evaluations[0] += 1
                self.report(stage, offset + adam_steps + min(evaluations[0], lbfgs_steps), total)
                return loss

            lbfgs.step(closure)
        with torch.no_grad():
            shape = self.model.shape(shape_raw)
            rest = self.body.rest(shape)
            loss, terms, _ = self._energy(obs, self.model.reduce(rest), root, pose, position, shape_raw, ground,
                                          w_direction=s.w_direction_refine if steps - adam_steps > 0 else None)
            rotations, kin, kp = self.model.pose(rest, root, pose, position)
        self.report(stage, offset + steps, total)
        return Fit(shape.detach(), rotations.detach(), position.detach(), kin.positions.detach(),
                   kp.detach(), rest, {k: float(v) for k, v in terms.items()})


def fit_per_frame(body: Body, observations: Observations, settings: FitSettings) -> list[Fit]:
    """The same energy fitted one frame at a time (no temporal terms): the benchmark's baseline."""
    fits = []
    for t in range(observations.keypoints2d.shape[0]):
        one = Observations(observations.keypoints2d[t:t + 1],
                           None if observations.directions3d is None else observations.directions3d[t:t + 1],
                           observations.intrinsics)
        fits.append(Fitter(body, settings).fit_camera(one))
    return fits
