"""Foot contacts: which sole points stand on the ground, and the runs of frames the fit locks.

A contact starts where a point is both low and slow and lasts while it stays fairly low and
fairly slow (hysteresis: one noisy frame neither starts nor ends one); runs shorter than
MIN_FRAMES are dropped. The ground stage of the fit (fit.py) holds each run's points at one
place in the world (HuMoR's and SLAHMR's "skate" term as a lock on the run's mean rather than a
per-frame velocity, so a slow drift over a planting costs as much as a jump).
"""

from __future__ import annotations

import numpy as np

#: A contact starts under this height above the point's rest height (metres) ...
ENTER_HEIGHT = 0.03
#: ... and this speed (metres per second; 6.7 mm per frame at 30 fps).
ENTER_SPEED = 0.2
#: It lasts while the point stays under this height and speed.
STAY_HEIGHT = 0.05
STAY_SPEED = 0.4
#: Shorter runs are not contacts (frames).
MIN_FRAMES = 3


def hysteresis(enter: np.ndarray, stay: np.ndarray, min_frames: int = MIN_FRAMES) -> np.ndarray:
    """Runs that start where ``enter`` holds and last while ``stay`` holds, ``min_frames`` long
    at least. A run reaches back over the ``stay`` frames before its first ``enter`` frame.
    [T, P] bool each -> [T, P] bool"""
    t_count, p_count = enter.shape
    out = np.zeros(enter.shape, bool)
    for p in range(p_count):
        flags = np.concatenate([[False], stay[:, p] | enter[:, p], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(flags))
        for a, b in zip(edges[::2], edges[1::2]):
            if b - a >= min_frames and enter[a:b, p].any():
                out[a:b, p] = True
    return out


def world_contacts(points: np.ndarray, fps: float, lift: np.ndarray | None = None) -> np.ndarray:
    """Contacts of foot points from their height above the ground (Z = 0) and speed.

    Args:
        points: foot points in the world, metres. [T, P, 3]
        fps: frames per second.
        lift: each point's height above the sole at rest (0 if None). [P]

    Returns:
        1 where in contact, else 0. [T, P] float32
    """
    height = points[..., 2] - (0.0 if lift is None else np.asarray(lift))
    if len(points) < 2:
        return (height < ENTER_HEIGHT).astype(np.float32)
    step = np.linalg.norm(np.diff(points, axis=0), axis=-1) * fps
    # The slower of each frame's two steps: the first and last frames of a planting count.
    speed = np.minimum(np.concatenate([step[:1], step]), np.concatenate([step, step[-1:]]))
    enter = (height < ENTER_HEIGHT) & (speed < ENTER_SPEED)
    stay = (height < STAY_HEIGHT) & (speed < STAY_SPEED)
    return hysteresis(enter, stay).astype(np.float32)


def segments(contact: np.ndarray, min_frames: int = MIN_FRAMES) -> np.ndarray:
    """Number the runs of contact frames of each point (ids unique over all points).

    Args:
        contact: [T, P] bool (or weights, > 0.5 counts).
        min_frames: shorter runs get no id.

    Returns:
        Run id per frame and point, -1 outside runs. [T, P] int64
    """
    on = np.asarray(contact) > 0.5
    ids = np.full(on.shape, -1, np.int64)
    count = 0
    for p in range(on.shape[1]):
        flags = np.concatenate([[False], on[:, p], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(flags))
        for a, b in zip(edges[::2], edges[1::2]):
            if b - a >= min_frames:
                ids[a:b, p] = count
                count += 1
    return ids


def lock_runs(keypoints2d: np.ndarray, fit, still_step: float, lowest_within: float = 0.1) -> np.ndarray:
    """The runs of frames the ground stage holds each sole point still in, for a static camera.

    A planted foot stands still in the image whatever depth errors the camera-frame fit has (a
    deep crouch read as moving away slides its feet along their rays, down through the ground
    for a camera looking down), so image stillness starts and keeps a run, with hysteresis; the
    world only asks that the point be among its frame's lowest (absolute heights are what the
    drift gets wrong: 0.2 m off on a crouch from above, which kept 70 % of its planted frames
    out of the height-based contacts).

    Args:
        keypoints2d: the common keypoints seen (x, y pixels, confidence). [T, 23, 3]
        fit: the fit in the world (Z up).
        still_step: image stillness step (`ground.STILL_STEP`).
        lowest_within: metres above the frame's lowest sole point that still count as low.

    Returns:
        Run ids (`segments`) per sole point in fit.FEET order, -1 outside runs. [T, 6] int64
    """
    from . import ground
    from .fit import FEET, rest_keypoints

    still = ground.image_stillness(keypoints2d, still_step)
    lift = rest_keypoints(fit.rest)[FEET, 2].numpy()
    height = fit.keypoints.numpy()[:, FEET, 2] - lift
    low = height - height.min(1, keepdims=True) < lowest_within
    runs = hysteresis(still > 0.5, still > 0.1) & low
    return segments(runs)
