"""Ground and camera from the feet, for a static camera.

After the camera-frame fit, the ground is the plane the feet rest on: its normal starts as the
body's mean up axis and, where the feet cover enough ground (a walk), is refined by a least
squares plane through the low, slow foot points; its height is a low percentile of the feet.
The world is then Blender's: Z = the plane's normal, the origin under the body's first root
position, X along the camera's x axis laid on the ground, so the camera looks along +Y, stands
at its height above the ground and is pitched as the feet say.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .fit import FEET, Fit, rest_keypoints

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
        if len(points) >= 10:
            centred = points - points.mean(0)
            _, sv, vt = np.linalg.svd(centred, full_matrices=False)
            # Only trust the plane's tilt where the contacts spread over two directions.
            if sv[1] / np.sqrt(len(points)) > 0.15:
                normal = vt[2] * np.sign(vt[2] @ up)
                if normal @ up > np.cos(np.radians(25)):
                    up = normal
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
