"""Where capture puts its cameras, numpy only: training-view layouts around a bounding box.

What `addon/blender/capture.py` needs and what can be tested without Blender:

- training camera layouts around a bounding box (ring, Fibonacci hemisphere, Fibonacci sphere),
  as look-at matrices in Blender's camera convention (`world_from_camera`: the camera looks down
  its -Z axis, +Y is up in the image; Z-up world, metres);
- the Blender lens of generated cameras (:func:`layout_lens`), whose wire intrinsics come from
  `camera.lens_intrinsics` (the one home of the Blender lens -> pinhole formula), so the camera
  Blender renders with and the cameras sent to the server cannot disagree;
- the held-out split used by `splat.reconstruct` (`test_every`).

Cameras are returned as the PROTOCOL.md cameras map:
`{"world_from_camera": (T,4,4) <f4, "fx","fy","cx","cy": float, "width","height": int, "near","far": float}`.
"""

from __future__ import annotations

import math

import numpy as np

from .camera import BlenderLens, lens_intrinsics

LAYOUTS = ("ring", "hemisphere", "sphere")

#: Blender's default full-frame sensor width (mm); with sensor fit AUTO it spans the larger side.
SENSOR_WIDTH_MM = 36.0


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Blender-convention camera matrices looking from `eye` at `target`.

    Args:
        eye: camera centres, world frame, metres. [T, 3] (or [3])
        target: points looked at, world frame, metres. [T, 3] (or [3])
        up: the world direction that should appear up in the image; when a camera looks
            (anti)parallel to it, world +Y is used instead for that camera.

    Returns:
        world_from_camera: columns are the camera's +X (right), +Y (up), +Z (backwards: the camera
        looks down -Z) axes and its centre. [T, 4, 4] float64 (or [4, 4])
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    single = eye.ndim == 1
    eye, target = np.atleast_2d(eye), np.atleast_2d(target)
    eye, target = np.broadcast_arrays(eye, target)
    back = eye - target
    norm = np.linalg.norm(back, axis=1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("look_at: eye and target coincide")
    back = back / norm
    ups = np.broadcast_to(np.asarray(up, dtype=np.float64), back.shape).copy()
    # A camera looking straight along `up` has no defined roll: pick world +Y as its up.
    parallel = np.abs(np.sum(back * ups, axis=1)) > 1.0 - 1e-9
    ups[parallel] = (0.0, 1.0, 0.0)
    right = np.cross(ups, back)
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    cam_up = np.cross(back, right)
    out = np.zeros((len(eye), 4, 4))
    out[:, :3, 0] = right
    out[:, :3, 1] = cam_up
    out[:, :3, 2] = back
    out[:, :3, 3] = eye
    out[:, 3, 3] = 1.0
    return out[0] if single else out


def fibonacci_directions(count: int, hemisphere: bool, min_elevation_deg: float = 10.0) -> np.ndarray:
    """Evenly spread unit directions (Fibonacci lattice), Z up.

    Args:
        count: number of directions.
        hemisphere: only directions above `min_elevation_deg` (for objects standing on a ground);
            otherwise the whole sphere.
        min_elevation_deg: lowest elevation for the hemisphere layout, degrees.

    Returns:
        Unit vectors. [T, 3]
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    i = np.arange(count, dtype=np.float64) + 0.5
    if hemisphere:
        z_lo = math.sin(math.radians(min_elevation_deg))
        z = 1.0 - i / count * (1.0 - z_lo)
    else:
        z = 1.0 - 2.0 * i / count
    golden = math.pi * (3.0 - math.sqrt(5.0))
    phi = golden * i
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def ring_directions(count: int, elevation_deg: float = 25.0) -> np.ndarray:
    """Unit directions on a horizontal ring at one elevation, Z up. [T, 3]"""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    phi = 2.0 * math.pi * np.arange(count) / count
    el = math.radians(elevation_deg)
    return np.stack(
        [math.cos(el) * np.cos(phi), math.cos(el) * np.sin(phi), np.full(count, math.sin(el))], axis=1
    )


def layout_lens(lens_mm: float) -> BlenderLens:
    """The Blender lens of generated capture cameras: `lens_mm` on a 36 mm sensor, AUTO fit, no shift.

    `addon/capture.py` gives its temporary camera exactly these settings, and
    :func:`lens_intrinsics` turns the same settings into the wire intrinsics.

    Raises:
        ValueError: lens_mm is not positive.
    """
    if not lens_mm > 0:  # also rejects NaN
        raise ValueError(f"lens_mm must be > 0, got {lens_mm!r}")
    return BlenderLens(lens_mm=float(lens_mm), sensor_width=SENSOR_WIDTH_MM, sensor_height=SENSOR_WIDTH_MM,
                       sensor_fit="AUTO", shift_x=0.0, shift_y=0.0)


def capture_cameras(
    bbox_min,
    bbox_max,
    layout: str = "hemisphere",
    count: int = 48,
    width: int = 128,
    height: int = 128,
    lens_mm: float = 50.0,
    margin: float = 1.1,
    elevation_deg: float = 25.0,
) -> dict:
    """Training cameras around a bounding box, all looking at its centre.

    The distance is chosen so the box's bounding sphere (times `margin`) fits the narrower field of
    view of every camera.

    Args:
        bbox_min: lower corner of the box, world frame, metres. [3]
        bbox_max: upper corner of the box, world frame, metres. [3]
        layout: "ring" (one elevation), "hemisphere" (Fibonacci, above 10 degrees) or "sphere".
        count: number of cameras T.
        width, height: image size in pixels.
        lens_mm: focal length in millimetres on a 36 mm sensor (AUTO fit; :func:`layout_lens`).
        margin: scale of the bounding sphere that must fit in view (> 1 leaves a border).
        elevation_deg: elevation of the ring layout, degrees.

    Returns:
        The PROTOCOL.md cameras map with T cameras (world_from_camera [T, 4, 4] <f4).
    """
    lo = np.asarray(bbox_min, dtype=np.float64)
    hi = np.asarray(bbox_max, dtype=np.float64)
    if lo.shape != (3,) or hi.shape != (3,) or np.any(hi < lo) or not np.all(np.isfinite([lo, hi])):
        raise ValueError(f"bad bounding box {lo} .. {hi}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    fx, fy, cx, cy = lens_intrinsics(layout_lens(lens_mm), width, height)
    centre = (lo + hi) / 2.0
    radius = max(float(np.linalg.norm(hi - lo)) / 2.0, 1e-3) * margin
    half_fov = min(math.atan(cx / fx), math.atan(cy / fy))
    distance = radius / math.sin(half_fov)
    if layout == "ring":
        dirs = ring_directions(count, elevation_deg)
    else:
        dirs = fibonacci_directions(count, hemisphere=layout == "hemisphere")
    eyes = centre + distance * dirs
    return {
        "world_from_camera": look_at(eyes, centre).astype(np.float32),
        "fx": fx,
        "fy": fy,
        "cx": cx,
        "cy": cy,
        "width": int(width),
        "height": int(height),
        # The whole bounding sphere lies between these planes for every camera.
        "near": float(max(distance - radius, 1e-3) * 0.5),
        "far": float((distance + radius) * 2.0),
    }


def holdout_split(count: int, test_every: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and held-out views: every `test_every`-th view (0, k, 2k, ...) is held out.

    `test_every` 0 holds nothing out. This is the split `splat.reconstruct` uses.

    Returns:
        (train, test) index arrays.
    """
    idx = np.arange(count)
    if test_every <= 0:
        return idx, idx[:0]
    test = idx % test_every == 0
    return idx[~test], idx[test]
