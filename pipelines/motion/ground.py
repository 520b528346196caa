"""Ground and camera from the feet, for a static camera.

After the camera-frame fit, the ground is the plane the feet rest on: its normal starts as the
body's mean up axis (its torso's mean direction, `body_up`) and is refined from the plantings
(one point per run of frames in which a sole point is still in the image and the lowest of its
frame: depth errors move a point along its ray, not across the image): the normal of their
least squares plane where they cover an area, or made perpendicular to their line where they
lie along one (a straight walk), within MAX_CORRECTION of the body's up; its height is a low
percentile of the feet.
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
from .keypoints import INDEX

log = logging.getLogger(__name__)

#: Sole points within this height of the frame's lowest count as low (metres).
CONTACT_HEIGHT = 0.05
#: Image stillness of the ground stage's contacts, a fraction of the person's image height per
#: frame: twice the keypoints' own jitter (1 px of detector noise on a 250 px person moves a
#: point 0.4-0.6 % between frames). At 0.4 % the noise alone cut most planted frames out of
#: the contact term and the feet slid (bench_motion walk/turn/crouch at 40 frames: foot sliding
#: 7.4 -> 5.2 mm/frame, PA-MPJPE 30.5 -> 32.9 mm).
STILL_STEP = 0.008
#: The feet may turn the body's mean up axis by at most this much (degrees): the fitted pelvis
#: leans a few degrees (8.5 in the demo's walk), while plantings that ask for more are the
#: camera-frame fit's depth drift (a crouch read as walking away spreads them along the rays).
MAX_CORRECTION = 12.0
#: A planting plane is used where its thickness is under this fraction of its width (its tilt
#: then known to about 4 degrees, as well as the body's up).
MAX_THICKNESS = 0.07


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
        fps: frames per second (kept for callers: stillness is measured per frame).
    """
    kp = fit.keypoints.numpy().astype(np.float64)
    feet = kp[:, FEET]                                                 # [T, 8, 3]
    up = body_up(kp)
    # Sole keypoints sit inside the foot: at rest they are this high above the floor.
    lift = rest_keypoints(fit.rest)[FEET, 2].numpy().astype(np.float64)
    # Planted sole points: still in the image (depth errors of the camera-frame fit move a
    # point along its ray, not across it) and the lowest of their frame. Both hold whatever the
    # up axis's error: a global threshold on height or 3D speed keeps only a few points near
    # one end of a walk when the first guess of up is tilted along it, and the tilt survives.
    still = _ray_stillness(feet, kp)
    for _ in range(2):
        height = feet @ up - lift
        # The soles under the keypoints (a heel keypoint sits inside the heel, above the toes').
        # A foot planted over several frames stands in one place: one sample per planting (a
        # run of frames still in the image; its median), kept where it is the lowest of its
        # frames, so that the fit's depth drift during a planting (a crouch read as walking
        # away) cannot pass for footsteps spread over the ground.
        points = _plantings(feet - lift[:, None] * up, still > 0.5,
                            height - height.min(1, keepdims=True) < CONTACT_HEIGHT)
        log.debug("ground: %d plantings", len(points))
        if len(points) >= 4:
            centred = points - points.mean(0)
            _, sv, vt = np.linalg.svd(centred, full_matrices=False)
            spread = sv / np.sqrt(len(points))                        # std along each axis
            log.debug("ground: spread %s, normal %.1f deg from up", spread,
                      np.degrees(np.arccos(min(1.0, abs(vt[2] @ up)))))
            if spread[1] > 0.15:
                # Contacts cover an area: their plane's normal is the ground's, known to about
                # the plantings' thickness over their width (a turn on the spot treads a patch
                # a few tens of centimetres wide, whose tilt is no better than the body's).
                normal = vt[2] * np.sign(vt[2] @ up)
                if normal @ up > np.cos(np.radians(MAX_CORRECTION)) and spread[2] < MAX_THICKNESS * spread[1]:
                    up = normal
            elif spread[0] > 0.25:
                # Contacts along a line (a straight walk): the line lies on the ground, so the
                # up axis loses its component along it; the tilt across it stays the body's.
                line = vt[0]
                if abs(line @ up) < np.sin(np.radians(MAX_CORRECTION)):
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


def body_up(keypoints: np.ndarray) -> np.ndarray:
    """The body's mean up axis: the mean direction from the hips' midpoint to the shoulders'.

    Not the root's rotation: the pelvis is pinned by two hip keypoints, its lean about them only
    through the chains to the knees and shoulders; it tips as the thighs fold (a crouch) and
    leans with a single view's depth ambiguity. A fit from 2D keypoints alone leaned it 11
    degrees towards the camera on the synthetic tracking walk (the torso 6). On clips Blender
    rendered from 20 degrees above (bench_motion_rendered) the fitted pelvis leaned 9 degrees
    too little towards the camera, the torso 5-8. Where the plantings lie along a line (a
    straight walk) the lean across that line is taken from this axis as it is, and with the
    camera beside the walk it is the camera's pitch. The truth's torso stands within 1.5
    degrees of vertical over each synthetic clip; a walker's lean is forward, along the line,
    where the plantings correct it. (The mean of the torso's and the legs' directions did as
    well: static cameras' height error 324 against 342 mm on the rendered clips, moving
    cameras' scale error 4.8 against 2.5 % on the tracking walk.)

    Args:
        keypoints: common keypoints in any frame's axes, metres. [T, 23, 3]

    Returns:
        unit vector in those axes. [3]
    """
    hips = (keypoints[:, INDEX["left_hip"]] + keypoints[:, INDEX["right_hip"]]) / 2
    shoulders = (keypoints[:, INDEX["left_shoulder"]] + keypoints[:, INDEX["right_shoulder"]]) / 2
    torso = shoulders - hips
    up = (torso / np.linalg.norm(torso, axis=-1, keepdims=True)).mean(0)
    return up / np.linalg.norm(up)


def _plantings(points: np.ndarray, still: np.ndarray, low: np.ndarray, min_frames: int = 2,
               same_place: float = 0.03) -> np.ndarray:
    """The median position of each planting: runs of consecutive frames in which a point is
    still, kept where the point is low in most of its frames; a point's runs at the same place
    in the image are one planting (with a static camera a foot planted twice on one spot, or
    a still foot the fit's stillness test lost for a frame, is seen there).

    Args:
        points: camera-frame points. [T, P, 3]
        still: [T, P] bool
        low: [T, P] bool, the point is the lowest of its frame (or nearly).
        min_frames: shorter runs are left out.
        same_place: image distance (x/z, y/z) under which runs are one planting, a fraction of
            the spread of the points' image heights.

    Returns:
        [N, 3], one row per planting.
    """
    ray = points[..., :2] / np.clip(points[..., 2:3], 0.05, None)
    tolerance = same_place * max(float(np.ptp(ray[..., 1])), 1e-3)
    out = []
    for p in range(points.shape[1]):
        flags = np.concatenate([[False], still[:, p], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(flags))
        groups: list[list[np.ndarray]] = []
        places: list[np.ndarray] = []
        for a, b in zip(edges[::2], edges[1::2]):
            if b - a < min_frames or low[a:b, p].mean() <= 0.5:
                continue
            place = np.median(ray[a:b, p], axis=0)
            near = [i for i, q in enumerate(places) if np.linalg.norm(q - place) < tolerance]
            if near:
                groups[near[0]].append(np.arange(a, b))
            else:
                groups.append([np.arange(a, b)])
                places.append(place)
        for frames in groups:
            out.append(np.median(points[np.concatenate(frames), p], axis=0))
    return np.array(out).reshape(-1, 3)


def _ray_stillness(points: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """How still camera-frame points are along the image, in [0, 1], as `image_stillness`
    measures detected keypoints: (x/z, y/z) steps in units of the person's height in those
    coordinates, the slower of each frame's two neighbours. [T, P, 3], [T, K, 3] -> [T, P]"""
    if len(points) < 2:
        return np.ones(points.shape[:2])
    ray = points[..., :2] / np.clip(points[..., 2:3], 0.05, None)
    body_y = keypoints[..., 1] / np.clip(keypoints[..., 2], 0.05, None)
    scale = max(float(np.median(np.ptp(body_y, axis=1))), 1e-3)
    step = np.linalg.norm(np.diff(ray, axis=0), axis=-1) / scale
    speed = np.minimum(np.concatenate([step[:1], step]), np.concatenate([step, step[-1:]]))
    return np.clip(2.0 - speed / 0.004, 0.0, 1.0)


def to_world(fit: Fit, placement: Placement) -> Fit:
    """Move a camera-frame fit into the world of ``placement`` (root rotation and position)."""
    rotation = torch.tensor(placement.world_from_camera_cv[:3, :3])
    offset = torch.tensor(placement.world_from_camera_cv[:3, 3])
    local = fit.local_rotations.clone()
    local[:, 0] = rotation @ local[:, 0]
    return Fit(fit.shape, local, fit.root_position @ rotation.T + offset,
               fit.joints @ rotation.T + offset, fit.keypoints @ rotation.T + offset, fit.rest,
               dict(fit.losses))


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
    still = image_stillness(keypoints2d, STILL_STEP)
    lift = rest_keypoints(fit.rest)[FEET, 2].numpy()
    height = fit.keypoints.numpy()[:, FEET, 2] - lift
    low = np.clip(2.0 - height / 0.1, 0.0, 1.0)
    return (still * low).astype(np.float32)


def image_stillness(keypoints2d: np.ndarray, step: float = 0.004) -> np.ndarray:
    """How still each sole point is in the image, in [0, 1] (1: under ``step`` of the person's
    image height per frame on both sides' slower neighbour, 0 over twice that).
    [T, 23, 3] -> [T, 6]"""
    uv = keypoints2d[:, FEET, :2].astype(np.float64)
    conf = keypoints2d[:, FEET, 2]
    seen = keypoints2d[..., 2] > 0.05
    heights = [np.ptp(frame[ok, 1]) for frame, ok in zip(keypoints2d, seen) if ok.sum() >= 4]
    scale = float(np.median(heights)) if heights else 100.0
    if len(uv) < 2:
        return np.zeros(conf.shape, np.float32)
    moved = np.linalg.norm(np.diff(uv, axis=0), axis=-1) / scale
    ok = (conf[1:] > 0.2) & (conf[:-1] > 0.2)
    moved = np.where(ok, moved, 1.0)             # unseen: not known to be still
    speed = np.minimum(np.concatenate([moved[:1], moved]), np.concatenate([moved, moved[-1:]]))
    return np.clip(2.0 - speed / step, 0.0, 1.0).astype(np.float32)
