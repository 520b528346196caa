"""Ground and camera from the feet, for a static camera.

After the camera-frame fit, the ground is the plane the feet rest on: its normal starts as the
body's mean up axis and is refined from the low, slow foot points: the normal of their least
squares plane where they cover an area, or made perpendicular to their line where they lie
along one (a straight walk); its height is a low percentile of the feet.
The world is then Blender's: Z = the plane's normal, the origin under the body's first root
position, X along the camera's x axis laid on the ground, so the camera looks along +Y, stands
at its height above the ground and is pitched as the feet say.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .fit import FEET, Fit, rest_keypoints

log = logging.getLogger(__name__)

#: Foot points within this height of the ground count as touching it (metres).
CONTACT_HEIGHT = 0.05
#: ... and moving slower than this (metres per second).
CONTACT_SPEED = 0.5


@dataclass
class Placement:
    """A static camera placed in a Z-up world.

    Attributes:
        world_from_camera_cv: OpenCV camera (x right, y down, z forward) to world. [4, 4]
        camera_from_world: rotation, world to OpenCV camera. [3, 3]
        camera_position: camera centre in the world, metres. [3]
        height: camera height above the ground, metres.
        pitch: camera pitch, radians (negative: looking down).
    """

    world_from_camera_cv: np.ndarray
    camera_from_world: np.ndarray
    camera_position: np.ndarray
    height: float
    pitch: float


def estimate_ground(fit: Fit, fps: float) -> Placement:
    """Ground plane and camera placement from a camera-frame fit.

    Args:
        fit: the camera-frame fit (keypoints [T, 23, 3] in OpenCV camera coordinates).
        fps: frames per second (for the contact speed).
    """
    kp = fit.keypoints.numpy().astype(np.float64)
    feet = kp[:, FEET]                                                 # [T, 8, 3]
    # Body up axis in the camera: the root rotation applied to the body's +Z.
    up = fit.local_rotations[:, 0, :, 2].numpy().astype(np.float64).mean(0)
    up /= np.linalg.norm(up)
    # Sole keypoints sit inside the foot: at rest they are this high above the floor.
    lift = rest_keypoints(fit.rest)[FEET, 2].numpy().astype(np.float64)
    for _ in range(2):
        height = feet @ up - lift
        floor = np.percentile(height.min(1), 20)
        speed = np.zeros(height.shape)
        if len(kp) > 1:
            step = np.linalg.norm(np.diff(feet, axis=0), axis=-1) * fps
            speed[1:] = step
            speed[0] = step[0]
        low = (height - floor < CONTACT_HEIGHT) & (speed < CONTACT_SPEED)
        points = feet[low]
        log.debug("ground: %d low slow foot points", len(points))
        if len(points) >= 10:
            centred = points - points.mean(0)
            _, sv, vt = np.linalg.svd(centred, full_matrices=False)
            spread = sv / np.sqrt(len(points))                        # std along each axis
            if spread[1] > 0.15:
                # Contacts cover an area: their plane's normal is the ground's.
                normal = vt[2] * np.sign(vt[2] @ up)
                if normal @ up > np.cos(np.radians(25)):
                    up = normal
            elif spread[0] > 0.25:
                # Contacts along a line (a straight walk): the line lies on the ground, so the
                # up axis loses its component along it; the tilt across it stays the body's.
                line = vt[0]
                if abs(line @ up) < np.sin(np.radians(25)):
                    up = up - (up @ line) * line
                    up /= np.linalg.norm(up)
    height = feet @ up - lift
    floor = np.percentile(height.min(1), 20)
    # World axes in camera coordinates: Z = up, X = camera x laid on the ground, Y = Z x X.
    x_axis = np.array([1.0, 0.0, 0.0]) - up * up[0]
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(up, x_axis)
    rotation = np.stack([x_axis, y_axis, up])                         # world_from_camera rotation
    root0 = fit.root_position[0].numpy().astype(np.float64)
    origin = root0 - up * (root0 @ up - floor)                        # camera coordinates
    world_from_camera = np.eye(4)
    world_from_camera[:3, :3] = rotation
    world_from_camera[:3, 3] = -rotation @ origin
    camera_position = world_from_camera[:3, 3]
    forward = rotation[:, 2]                                          # camera +z in the world
    pitch = float(np.arcsin(np.clip(forward[2], -1, 1)))
    return Placement(world_from_camera.astype(np.float32), rotation.T.astype(np.float32),
                     camera_position.astype(np.float32), float(camera_position[2]), pitch)


def to_world(fit: Fit, placement: Placement) -> Fit:
    """Move a camera-frame fit into the world of ``placement`` (root rotation and position)."""
    rotation = torch.tensor(placement.world_from_camera_cv[:3, :3])
    offset = torch.tensor(placement.world_from_camera_cv[:3, 3])
    local = fit.local_rotations.clone()
    local[:, 0] = rotation @ local[:, 0]
    return Fit(fit.shape, local, fit.root_position @ rotation.T + offset,
               fit.joints @ rotation.T + offset, fit.keypoints @ rotation.T + offset, fit.rest,
               dict(fit.losses))


def contacts(points: np.ndarray, fps: float, lift: np.ndarray | None = None) -> np.ndarray:
    """Soft contact of foot points from their height and speed in the world.

    Args:
        points: foot points in the world, metres. [T, P, 3]
        fps: frames per second.
        lift: each point's height above the floor at rest (0 if None). [P]

    Returns:
        Contact in [0, 1]. [T, P]
    """
    height = points[..., 2] - (0.0 if lift is None else lift)
    speed = np.zeros(height.shape)
    if len(points) > 1:
        step = np.linalg.norm(np.diff(points, axis=0), axis=-1) * fps
        speed[1:] = step
        speed[0] = step[0]
    # Smooth ramps instead of thresholds so the ground stage's weights have no jumps.
    near = np.clip(1.5 - height / (2 * CONTACT_HEIGHT), 0.0, 1.0)
    slow = np.clip(1.5 - speed / (2 * CONTACT_SPEED), 0.0, 1.0)
    return (near * slow).astype(np.float32)


def initial_contacts(fit: Fit, keypoints2d: np.ndarray, fps: float) -> np.ndarray:
    """Contacts for the ground stage: sole points still in the image and low in the world.

    With a static camera a planted foot does not move in the image, whatever depth errors the
    camera-frame fit has (a crouch read as walking away keeps its feet still in the image), so
    the image speed decides and the world height only rules out lifted feet.

    Args:
        fit: the fit moved into the world (:func:`to_world`).
        keypoints2d: the common keypoints seen (x, y pixels, confidence). [T, 23, 3]
        fps: frames per second.

    Returns:
        Soft contact per sole point in :data:`FEET` order. [T, 6]
    """
    still = image_stillness(keypoints2d)
    lift = rest_keypoints(fit.rest)[FEET, 2].numpy()
    height = fit.keypoints.numpy()[:, FEET, 2] - lift
    low = np.clip(2.0 - height / 0.1, 0.0, 1.0)
    return (still * low).astype(np.float32)


def image_stillness(keypoints2d: np.ndarray) -> np.ndarray:
    """How still each sole point is in the image, in [0, 1] (1: under 0.4 % of the person's
    image height per frame on both sides' slower neighbour). [T, 23, 3] -> [T, 6]"""
    uv = keypoints2d[:, FEET, :2].astype(np.float64)
    conf = keypoints2d[:, FEET, 2]
    seen = keypoints2d[..., 2] > 0.05
    heights = [np.ptp(frame[ok, 1]) for frame, ok in zip(keypoints2d, seen) if ok.sum() >= 4]
    scale = float(np.median(heights)) if heights else 100.0
    if len(uv) < 2:
        return np.zeros(conf.shape, np.float32)
    step = np.linalg.norm(np.diff(uv, axis=0), axis=-1) / scale
    ok = (conf[1:] > 0.2) & (conf[:-1] > 0.2)
    step = np.where(ok, step, 1.0)               # unseen: not known to be still
    speed = np.minimum(np.concatenate([step[:1], step]), np.concatenate([step, step[-1:]]))
    return np.clip(2.0 - speed / 0.004, 0.0, 1.0).astype(np.float32)
