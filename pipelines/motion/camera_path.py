"""A moving camera: the client's camera path, in any frame and of unknown scale, made metric and
Z-up from the body (TRAM's idea, METHODS.md 2.C.2, with the body instead of a depth network).

The path comes from a camera solver (Blender's tracker, a SLAM system): each frame's camera is
right up to one unknown similarity of the whole path: a scale (the solver's units), a rotation
(its up axis need not be the ground's normal) and an origin. The camera-frame fit
(`fit.Fitter.fit_camera`) gives the body in each frame's camera in metres, its depth from the
body's known size. With the path's rotations R_t and centres c_t (given units), a body point y
(camera frame, metres) stands in the world at

    x_t(s) = s c_t + R_t y_t        (metres, the given frame's axes)

and s is what makes the body's metric depth agree with the path's geometry. Planted feet are
the static points the path sees (a sole point the lowest of its frame over several frames; the
lowest of a frame does not depend on s, as every point of a frame shares s c_t): each planting
is triangulated from its detected image rays along the path (given units), and s is the
parallax-weighted median of the fitted root depth (metres) over the triangulated depth, TRAM's
median of metric over SLAM depth (a planting's end frames whose rays miss its point, where the
foot lands or leaves, are trimmed; one whose rays never meet moved and is left out). Where
nothing can be triangulated (no 2D keypoints, or no planting of 4 frames), s minimises a
Geman-McClure cost of the planted points' steps s (c_t - c_{t-1}) + (R_t y_t - R_{t-1} y_{t-1}),
zero on the ground (plus, weighted lower, the root's acceleration) over a logarithmic grid,
refined by reweighted least squares, then again with the kernel narrowed to the steps' own
spread. A camera that does not translate (a tripod pan) leaves s unobservable and irrelevant:
the world is then the same for every s.

The ground is the plane of the plantings in that metric world (as `ground.py` does it for a
static camera, with stillness in the world instead of the image); the output world is the given
frame rotated by the smallest rotation that takes the ground's normal to +Z, scaled by s and
lowered so the ground is Z = 0 (so a path already Z-up keeps its yaw and horizontal origin).
The ground stage (`fit.Fitter.fit_ground` with :class:`PathGround`) then refines the body with
the contact terms and the path's tilt, height and scale.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from addon.wire.schema import PipelineError
from nskernels.rotations import axis_angle_to_matrix

from .fit import FEET, Fit, Ground, rest_keypoints
from .ground import body_up
from .keypoints import INDEX

log = logging.getLogger(__name__)

FIELD = "inputs.camera.world_from_camera"
#: Blender's camera (looks down -Z, +Y up) from OpenCV's (x right, y down, z forward).
BLENDER_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])
#: A camera matrix's 3x3 part must be a rotation within this (|R^T R - I| and |det R - 1|).
RIGID_TOLERANCE = 1e-2
#: Geman-McClure scale of a planted sole point's step between frames (metres): the
#: camera-frame fit's depth jitter is a few centimetres per frame.
STEP_SIGMA = 0.03
#: The narrowest the second pass of the scale's kernel gets (metres per frame).
MIN_STEP_SIGMA = 0.005
#: A sole point within this of its frame's lowest counts as planted (metres).
LOW = 0.03
#: Weight of the root's acceleration against the planted steps.
W_ROOT_ACCEL = 0.3
#: Below this much metric travel of the camera over the clip (metres) the scale is not
#: measured (and does not matter).
MIN_TRAVEL = 0.05
#: Planted displacements are taken over up to this many frames. More did worse on the synthetic
#: walks (bench_motion's moving rows): a point that stays the lowest of its frame rolls (heel to
#: toe) and its drift over several frames outgrows the fit's per-frame depth noise.
GAPS = 1
MAX_CORRECTION = 20.0
#: A planting whose rays miss their nearest point by more than this (RMS, pixels) moved.
MAX_MISS_PX = 3.0
#: The camera must travel this fraction of its distance to the body for triangulation.
MIN_BASELINE = 0.05


# ---------------------------------------------------------------------------------------------
# The input
# ---------------------------------------------------------------------------------------------

def check_path(matrices: np.ndarray) -> np.ndarray:
    """The given path as float64, checked: finite, rigid (a rotation and a translation each).

    Args:
        matrices: ``inputs.camera.world_from_camera``, Blender's camera convention. [T, 4, 4]

    Raises:
        PipelineError: ``invalid_input`` naming the field and the first bad frame.
    """
    m = np.asarray(matrices, np.float64)
    if m.ndim != 3 or m.shape[1:] != (4, 4):
        raise PipelineError("invalid_input", f"{FIELD}: expected [T, 4, 4], got {list(m.shape)}", FIELD)
    if not np.isfinite(m).all():
        raise PipelineError("invalid_input", f"{FIELD}: contains NaN or infinity", FIELD)
    bottom = np.abs(m[:, 3] - [0.0, 0.0, 0.0, 1.0]).max(1)
    rot = m[:, :3, :3]
    ortho = np.abs(np.einsum("tji,tjk->tik", rot, rot) - np.eye(3)).max((1, 2))
    det = np.linalg.det(rot)
    bad = np.flatnonzero((bottom > 1e-6) | (ortho > RIGID_TOLERANCE) | (np.abs(det - 1) > RIGID_TOLERANCE))
    if len(bad):
        t = int(bad[0])
        raise PipelineError(
            "invalid_input", f"{FIELD}: frame {t} is not a rigid camera pose (its 3x3 part must "
            f"be a rotation, R^T R = I and det R = 1 within {RIGID_TOLERANCE}; got |R^T R - I| "
            f"{ortho[t]:.3g}, det {det[t]:.3g}; last row {m[t, 3].tolist()}); scale the path, "
            "not the camera", FIELD)
    return m


def select(path: np.ndarray, frames: int, start: int, end: int | None, total: int | None) -> np.ndarray:
    """The path's matrices for the ``frames`` fitted frames (input frames ``start`` on).

    The path may hold one camera per fitted frame; or one per requested frame
    (``end - start``, where the input ended sooner: its first ``frames``); or one per input
    frame (``total``, None when a video's length is not known before decoding: then any path
    long enough), sliced ``[start, start + frames)``.

    Raises:
        PipelineError: ``invalid_input`` when the lengths do not match.
    """
    count = len(path)
    if count == frames:
        return path
    if end is not None and count == end - start and count > frames:
        return path[:frames]
    if count >= start + frames and (total is None or count == total):
        return path[start:start + frames]
    whole = f" or {total} (the whole input)" if total is not None and total != frames else ""
    raise PipelineError("invalid_input", f"{FIELD}: {count} cameras for {frames} frames "
                        f"(params.start {start}); give one camera per frame: {frames}{whole}", FIELD)


# ---------------------------------------------------------------------------------------------
# Scale and world
# ---------------------------------------------------------------------------------------------

@dataclass
class Alignment:
    """The given path's frame in Blender's world.

    Attributes:
        scale: metres per unit of the given path (before the ground stage's refinement).
        world_from_given: the similarity ``x_world = scale * rotation @ x_given + offset``. [4, 4]
        observable: whether the camera travelled enough for the scale to be measured.
        travel: the camera's travel over the clip, metres.
        residual: median step of the planted sole points at ``scale``, metres per frame.
    """

    scale: float
    world_from_given: np.ndarray
    observable: bool
    travel: float
    residual: float


def _gm(r2: np.ndarray, sigma: float) -> np.ndarray:
    return r2 / (r2 + sigma * sigma)


def solve_scale(centres: np.ndarray, foot_steps: tuple, root_accel: tuple) -> tuple[float, float]:
    """The scale s minimising Geman-McClure costs of ``s a + b`` terms.

    Args:
        centres: camera centres, given units. [T, 3]
        foot_steps: (a [P, 3] camera steps, b [P, 3] body steps) of planted sole points.
        root_accel: (a [Q, 3], b [Q, 3]) the same for the root's second differences.

    Returns:
        (s, median planted step at s in metres; nan when there is none).
    """
    (fa, fb), (ra, rb) = foot_steps, root_accel

    def cost(s):                                                  # s [N] -> [N]
        f = _gm(((s[:, None, None] * fa + fb) ** 2).sum(-1), STEP_SIGMA).sum(1)
        r = _gm(((s[:, None, None] * ra + rb) ** 2).sum(-1), STEP_SIGMA).sum(1)
        return f + W_ROOT_ACCEL * r

    a = np.concatenate([fa, ra])
    b = np.concatenate([fb, rb])
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    moving = na > 1e-12
    # A scale of the right order: body steps over camera steps (a tracking camera moves by what
    # the feet move in the camera frame), then a grid 100x either way.
    guess = float(np.median(nb[moving]) / np.median(na[moving])) if moving.any() else 1.0
    guess = guess if np.isfinite(guess) and guess > 0 else 1.0
    grid = guess * np.exp(np.linspace(-math.log(100), math.log(100), 1841))
    s = float(grid[np.argmin(cost(grid))])
    weights = np.concatenate([np.ones(len(fa)), np.full(len(ra), W_ROOT_ACCEL)])
    s = _reweighted(s, a, b, weights, STEP_SIGMA)
    if len(fa):
        # Again with the kernel narrowed to the planted steps' own spread: a foot that slides
        # while low (the hand-over of a walk, both feet within LOW of the ground for a few
        # frames, the leaving one moving 1-6 cm a frame) sits inside STEP_SIGMA, which is sized
        # for the fit's depth jitter, and pulls s along the camera's travel (2.8 % on the
        # synthetic tracking walk with the exact body); 3 times the median planted step keeps
        # the jitter of a fitted body and drops the slides of a still better one.
        spread = 3.0 * float(np.median(np.linalg.norm(s * fa + fb, axis=-1)))
        s = _reweighted(s, a, b, weights, float(np.clip(spread, MIN_STEP_SIGMA, STEP_SIGMA)))
    step = np.linalg.norm(s * fa + fb, axis=-1)
    return s, float(np.median(step)) if len(step) else float("nan")


def _reweighted(s: float, a: np.ndarray, b: np.ndarray, weights: np.ndarray, sigma: float) -> float:
    """Iteratively reweighted least squares of the Geman-McClure cost of ``s a + b`` from ``s``
    (weight sigma^2 / (r^2 + sigma^2)^2); a [N, 3], b [N, 3], weights [N]."""
    for _ in range(20):
        r2 = ((s * a + b) ** 2).sum(-1)
        w = weights * sigma ** 2 / (r2 + sigma ** 2) ** 2
        denom = (w * (a * a).sum(-1)).sum()
        if denom <= 0:
            break
        s_new = max(-(w * (a * b).sum(-1)).sum() / denom, 1e-12)
        if abs(s_new - s) < 1e-6 * s:
            return s_new
        s = s_new
    return s


def _rotation_to_z(up: np.ndarray) -> np.ndarray:
    """The smallest rotation taking the unit vector ``up`` to +Z. [3, 3]"""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(up, z)
    sin, cos = np.linalg.norm(axis), float(up @ z)
    if sin < 1e-9:
        return np.eye(3) if cos > 0 else np.diag([1.0, -1.0, -1.0])
    k = axis / sin
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    angle = math.atan2(sin, cos)
    return np.eye(3) + math.sin(angle) * skew + (1 - math.cos(angle)) * skew @ skew


def _ground_normal(points: np.ndarray, still: np.ndarray, up: np.ndarray) -> np.ndarray:
    """The ground's normal from planted sole points (world, metres): the plane of the
    plantings where they cover an area, the body's up made perpendicular to their line where
    they lie along one, within MAX_CORRECTION of ``up``.

    Args:
        points: sole points in the metric world. [T, P, 3]
        still: planted (still and lowest of its frame). [T, P] bool
        up: the body's mean up axis. [3]
    """
    plantings = []
    for p in range(points.shape[1]):
        flags = np.concatenate([[False], still[:, p], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(flags))
        for a, b in zip(edges[::2], edges[1::2]):
            if b - a >= 2:
                plantings.append(np.median(points[a:b, p], axis=0))
    if len(plantings) < 4:
        return up
    planted = np.array(plantings)
    _, sv, vt = np.linalg.svd(planted - planted.mean(0), full_matrices=False)
    spread = sv / np.sqrt(len(planted))
    limit = math.cos(math.radians(MAX_CORRECTION))
    if spread[1] > 0.15 and spread[2] < 0.07 * spread[1]:
        normal = vt[2] * np.sign(vt[2] @ up)
        return normal if normal @ up > limit else up
    if spread[0] > 0.25 and abs(vt[0] @ up) < math.sqrt(1 - limit ** 2):
        fixed = up - (up @ vt[0]) * vt[0]
        return fixed / np.linalg.norm(fixed)
    return up


def _planted_offsets(centres: np.ndarray, feet: np.ndarray, low: np.ndarray, gaps: int = GAPS) -> tuple:
    """(a [P, 3], b [P, 3]): the camera's and a sole point's displacement between frames t - k
    and t (k = 1..gaps) where the point is the lowest of its frame at t - k, t and between: a
    planted point stands still, s a + b = 0."""
    rows_a, rows_b = [], []
    run = np.zeros(low.shape, int)                         # frames the point has been low
    for t in range(len(low)):
        run[t] = np.where(low[t], (run[t - 1] if t else 0) + 1, 0)
    for k in range(1, gaps + 1):
        ok = run[k:] > k                                   # low from t - k to t
        if not ok.any():
            break
        dc = centres[k:] - centres[:-k]
        rows_a.append(np.repeat(dc[:, None], feet.shape[1], 1)[ok])
        rows_b.append((feet[k:] - feet[:-k])[ok])
    if not rows_a:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate(rows_a), np.concatenate(rows_b)


def _planting(world_rays: np.ndarray, rays: np.ndarray, rot: np.ndarray, centres: np.ndarray,
              a: int, b: int, min_frames: int, fx: float) -> tuple | None:
    """One planting of a sole point triangulated from its rays over frames [a, b), its ends
    trimmed while its rays miss their nearest point.

    A run of frames in which a point is the lowest of its frame starts where the foot lands and
    ends where it leaves: there it can be low and still move (a walk's hand-over: the synthetic
    walks' leaving foot slides 2-6 cm a frame within LOW of the ground for a few frames). Those
    frames' rays miss the planting's point; the frame that misses most at either end is dropped
    and the rest triangulated again, until the rays meet within MAX_MISS_PX (RMS) or fewer than
    ``min_frames`` remain (then the point moved throughout and the run is left out). Whole runs
    were left out before, which left the short, low-parallax ones to decide the scale (12 % off
    on the tracking walk with the exact body).

    Args:
        world_rays: the point's unit rays in the given axes, all frames. [T, 3]
        rays: the same in the camera (OpenCV). [T, 3]
        rot: given frame from OpenCV camera. [T, 3, 3]
        centres: camera centres, given units. [T, 3]

    Returns:
        (a, b, depth in the camera of each frame of [a, b) in given units [b - a], parallax in
        radians), or None.
    """
    while b - a >= min_frames:
        r, c = world_rays[a:b], centres[a:b]
        mean = r.mean(0) / np.linalg.norm(r.mean(0))
        parallax = float(np.arccos(np.clip(r @ mean, -1, 1)).max())
        if parallax < 1e-3:
            return None
        # The point nearest every ray: sum_t (I - r r^T) (X - c_t) = 0.
        proj = np.eye(3) - r[:, :, None] * r[:, None, :]
        x = np.linalg.solve(proj.sum(0), np.einsum("tij,tj->i", proj, c))
        local = np.einsum("tji,tj->ti", rot[a:b], x - c)                          # camera frame, given units
        depth = local[:, 2]
        if (depth <= 1e-9).any():
            return None
        own = rays[a:b]
        miss = np.sqrt(((local[:, :2] / depth[:, None] - own[:, :2] / own[:, 2:]) ** 2).sum(-1)) * fx   # pixels
        if float(np.sqrt((miss ** 2).mean())) <= MAX_MISS_PX:
            return a, b, depth, parallax
        if miss[0] >= miss[-1]:
            a += 1
        else:
            b -= 1
    return None


def triangulated_scale(fit: Fit, rot: np.ndarray, centres: np.ndarray, low: np.ndarray,
                       keypoints2d: np.ndarray, intrinsics: tuple, min_frames: int = 4) -> tuple[float, float]:
    """TRAM's ratio of depths (its est_scale: median of metric over SLAM depth): each planting
    (a run of frames in which a detected sole point is the lowest of its frame) is triangulated
    from its image rays along the given path (given units); the fitted root's depth (metres)
    over the triangulated depth is one estimate of the scale per frame; the result is their
    median weighted by each run's parallax. Each run's moving ends are trimmed (`_planting`).

    Args:
        fit: the camera-frame fit.
        rot: the path's rotations, given frame from OpenCV camera. [T, 3, 3]
        centres: the path's camera centres, given units. [T, 3]
        low: the sole point is (nearly) the lowest of its frame. [T, 6] bool
        keypoints2d: the common keypoints detected (x, y pixels, confidence). [T, 23, 3]
        intrinsics: (fx, fy, cx, cy).

    Returns:
        (scale, summed parallax of the runs in radians: 0 when nothing could be triangulated).
    """
    fx, fy, cx, cy = intrinsics
    kp = np.asarray(keypoints2d, np.float64)[:, FEET]
    # The root's depth, not the foot's: the fitted root is the body's best-placed point (the
    # torso's image size gives it), while a foot's depth carries the leg's depth ambiguity.
    # A planted foot stands within a foot's length or two of the root's depth.
    fitted_depth = np.repeat(fit.root_position[:, 2:3].numpy().astype(np.float64), len(FEET), 1)
    rays = np.stack([(kp[..., 0] - cx) / fx, (kp[..., 1] - cy) / fy, np.ones(kp.shape[:2])], -1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    world_rays = np.einsum("tij,tkj->tki", rot, rays)                       # given axes
    usable = low & (kp[..., 2] > 0.3)
    ratios, weights, total = [], [], 0.0
    for p in range(kp.shape[1]):
        flags = np.concatenate([[False], usable[:, p], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(flags))
        for a, b in zip(edges[::2], edges[1::2]):
            run = _planting(world_rays[:, p], rays[:, p], rot, centres, a, b, min_frames, fx)
            if run is None:
                continue
            a, b, depth, parallax = run
            ratios.extend(fitted_depth[a:b, p] / depth)
            weights.extend([parallax] * (b - a))
            total += parallax
    if not ratios:
        return float("nan"), 0.0
    order = np.argsort(ratios)
    cum = np.cumsum(np.asarray(weights)[order])
    return float(np.asarray(ratios)[order][np.searchsorted(cum, cum[-1] / 2)]), total


def place(fit: Fit, path: np.ndarray, fps: float, keypoints2d: np.ndarray | None = None,
          intrinsics: tuple | None = None) -> tuple[Fit, "PathGround", Alignment]:
    """The camera-frame fit and the given path in Blender's metric Z-up world.

    Args:
        fit: the camera-frame fit (OpenCV camera coordinates, metres).
        path: ``world_from_camera`` per fitted frame, Blender's camera convention, given frame
            and units (checked by :func:`check_path`). [T, 4, 4]
        fps: frames per second.
        keypoints2d: the common keypoints detected (x, y pixels, confidence), or None. [T, 23, 3]
        intrinsics: (fx, fy, cx, cy) with ``keypoints2d``.

    Returns:
        (the fit in the world, the ground stage's camera path with soft contacts, alignment).
    """
    cv = np.asarray(path, np.float64) @ BLENDER_FROM_CV
    rot, centres = cv[:, :3, :3], cv[:, :3, 3]                       # given frame
    kp = fit.keypoints.numpy().astype(np.float64)                     # [T, 23, 3] camera, metres
    body = np.einsum("tij,tkj->tki", rot, kp)                          # given axes, metres
    feet = body[:, FEET]
    lift = rest_keypoints(fit.rest)[FEET, 2].numpy().astype(np.float64)
    up = body_up(body)
    # The lowest sole points of each frame (s c_t is shared by every point of a frame), their
    # height along the torso's mean axis (ground.body_up).
    height = feet @ up - lift
    low = height - height.min(1, keepdims=True) < LOW
    fa, fb = _planted_offsets(centres, feet, low)
    hips = (body[:, INDEX["left_hip"]] + body[:, INDEX["right_hip"]]) / 2
    if len(body) >= 3:
        ra = (centres[2:] - 2 * centres[1:-1] + centres[:-2])
        rb = hips[2:] - 2 * hips[1:-1] + hips[:-2]
    else:
        ra = rb = np.zeros((0, 3))
    extent = float(np.linalg.norm(centres - centres[0], axis=1).max()) if len(centres) else 0.0
    if extent > 0:
        scale, residual = solve_scale(centres, (fa, fb), (ra, rb))
        if keypoints2d is not None and intrinsics is not None:
            tri, parallax = triangulated_scale(fit, rot, centres, low, keypoints2d, intrinsics)
            log.info("camera path: steps say %.4g, triangulation %.4g (parallax %.3f)", scale, tri, parallax)
            depth = float(np.median(fit.root_position[:, 2].numpy()))
            # A baseline under MIN_BASELINE of the body's distance (a tripod whose solve
            # jitters) triangulates noise: the steps' scale is kept, which shrinks the jitter.
            if parallax > 0 and np.isfinite(tri) and tri > 0 and tri * extent > MIN_BASELINE * depth:
                scale = tri
                residual = float(np.median(np.linalg.norm(scale * fa + fb, axis=-1))) if len(fa) else residual
    else:
        scale, residual = 1.0, float("nan")
    travel = scale * extent
    observable = travel >= MIN_TRAVEL
    log.info("camera path: scale %.4g m per unit, travel %.2f m%s, planted step %.1f mm",
             scale, travel, "" if observable else " (too little to measure the scale)", residual * 1000)

    # The ground: planted sole points in the metric world.
    world_feet = scale * centres[:, None] + feet
    steps = np.linalg.norm(np.diff(world_feet, axis=0), axis=-1)
    slow = np.minimum(np.concatenate([steps[:1], steps]), np.concatenate([steps, steps[-1:]])) < 1.5 * STEP_SIGMA
    up = _ground_normal(world_feet - lift[:, None] * up, slow & low, up)
    heights = world_feet @ up - lift
    floor = float(np.percentile(heights.min(1), 20))
    q = _rotation_to_z(up)
    world_from_given = np.eye(4)
    world_from_given[:3, :3] = scale * q
    world_from_given[2, 3] = -floor

    # Cameras and body in the world.
    world_rot = np.einsum("ij,tjk->tik", q, rot)                        # world from OpenCV camera
    position = scale * centres @ q.T - [0.0, 0.0, floor]
    world = _to_world(fit, world_rot, position)
    contacts = _contacts(world, fps)
    pivot = world.root_position.numpy().mean(0)
    pivot[2] = 0.0
    state = PathGround(torch.tensor(np.transpose(world_rot, (0, 2, 1)), dtype=torch.float32),
                       torch.tensor(position, dtype=torch.float32), torch.tensor(contacts),
                       pivot=torch.tensor(pivot, dtype=torch.float32))
    return world, state, Alignment(scale, world_from_given, observable, travel, residual)


def _to_world(fit: Fit, world_rot: np.ndarray, position: np.ndarray) -> Fit:
    """A camera-frame fit moved through per-frame cameras ([T, 3, 3] world from OpenCV camera,
    centres [T, 3]) into the world."""
    r = torch.tensor(world_rot, dtype=torch.float32)
    c = torch.tensor(position, dtype=torch.float32)

    def move(points):                                                  # [T, K, 3]
        return torch.einsum("tij,tkj->tki", r, points) + c[:, None]

    local = fit.local_rotations.clone()
    local[:, 0] = r @ local[:, 0]
    return Fit(fit.shape, local, move(fit.root_position[:, None])[:, 0], move(fit.joints),
               move(fit.keypoints), fit.rest, dict(fit.losses))


def _contacts(world: Fit, fps: float) -> np.ndarray:
    """Soft contacts of the sole points for the ground stage: low in the world, and slow over
    a 5-frame window (a planted foot's world position jitters with the camera-frame fit's
    depth; the window's mean step does not). [T, 6] in :data:`FEET` order."""
    lift = rest_keypoints(world.rest)[FEET, 2].numpy()
    feet = world.keypoints.numpy()[:, FEET].astype(np.float64)
    height = feet[..., 2] - lift
    t = len(feet)
    if t < 2:
        return np.clip(2.0 - height / 0.1, 0.0, 1.0).astype(np.float32)
    idx = np.arange(t)
    a, b = np.clip(idx - 2, 0, t - 1), np.clip(idx + 2, 0, t - 1)
    speed = np.linalg.norm(feet[b] - feet[a], axis=-1) / np.maximum(b - a, 1)[:, None]   # m/frame
    lowest = height - height.min(1, keepdims=True)
    low = np.clip(2.0 - np.maximum(height, lowest) / 0.1, 0.0, 1.0)
    slow = np.clip(2.0 - speed / STEP_SIGMA, 0.0, 1.0)
    return (low * slow).astype(np.float32)


@dataclass
class PathGround(Ground):
    """The ground stage's camera for a moving camera: a path in the world whose tilt (about the
    ground pivot), height and scale (about the pivot) the stage refines; its yaw and horizontal
    origin are the world's gauge, held by the prior.

    Attributes:
        camera_from_world: per frame, world to OpenCV camera. [T, 3, 3]
        camera_position: camera centres in the world. [T, 3]
        contacts: soft contact per sole point. [T, 6]
        pivot: the point the corrections turn and scale the path about (on the ground). [3]
        tilt: world-side rotation of the path, axis-angle. [3]
        shift: translation of the path. [3]
        log_scale: log of the path's scale correction. []
    """

    pivot: Tensor = field(default_factory=lambda: torch.zeros(3))
    log_scale: Tensor = field(default_factory=lambda: torch.zeros(()))

    def _corrected(self) -> tuple[Tensor, Tensor]:
        turn = axis_angle_to_matrix(self.tilt)
        centres = (torch.exp(self.log_scale) * (self.camera_position - self.pivot)) @ turn.T + self.pivot + self.shift
        return self.camera_from_world @ turn.T, centres

    def to_camera(self, points: Tensor) -> Tensor:
        camera_from_world, centres = self._corrected()
        return torch.einsum("tij,tkj->tki", camera_from_world, points - centres[:, None])

    def prior(self) -> Tensor:
        return 0.1 * (self.tilt[2] ** 2 + self.shift[:2].pow(2).sum())

    def variables(self) -> list[Tensor]:
        self.tilt = torch.zeros(3, requires_grad=True)
        self.shift = torch.zeros(3, requires_grad=True)
        self.log_scale = torch.zeros((), requires_grad=True)
        return [self.tilt, self.shift, self.log_scale]

    def corrected(self) -> tuple[np.ndarray, np.ndarray]:
        """(camera_from_world [T, 3, 3], camera centres [T, 3]) with the corrections applied."""
        with torch.no_grad():
            rotation, centres = self._corrected()
            return rotation.numpy(), centres.numpy()

    def scale_correction(self) -> float:
        return float(torch.exp(self.log_scale.detach()))


def world_from_camera(camera_from_world: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Blender camera matrices from OpenCV rotations [T, 3, 3] and centres [T, 3]. [T, 4, 4]"""
    t = len(camera_from_world)
    out = np.zeros((t, 4, 4))
    out[:, :3, :3] = np.transpose(camera_from_world, (0, 2, 1))
    out[:, :3, 3] = centres
    out[:, 3, 3] = 1.0
    return (out @ BLENDER_FROM_CV).astype(np.float32)
