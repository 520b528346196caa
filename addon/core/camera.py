"""Cameras, bpy-free: Blender lens settings <-> pinhole intrinsics, and the wire cameras map.

The one home of the Blender camera -> PROTOCOL.md cameras map conversion. Every path that sends
cameras to the server (F12 final shots, the viewport, camera-path export, capture) goes through
here; ``addon/blender/cameras.py`` only reads the numbers out of bpy (:class:`BlenderLens`,
matrices) and hands them over.

- :func:`intrinsics_from_blender` / :func:`lens_intrinsics`: Blender lens (+ pixel aspect) -> fx, fy, cx, cy.
- :func:`blender_from_intrinsics`: the inverse (camera-path import).
- :func:`cameras_map`: intrinsics + matrices -> the cameras map; :func:`lens_cameras_map`: the same
  from one :class:`BlenderLens` per view (scale stripped from the matrices, as Blender renders).
- :func:`camera_from_view`: a 3D view's view/window matrices -> a :class:`ViewCamera`.
- :func:`project`: world points -> pixels of every camera of a cameras map.

Blender's view-plane rules (``BKE_camera_params_compute_viewplane``):
- The sensor size used is ``sensor_width`` for sensor_fit AUTO and HORIZONTAL, ``sensor_height``
  for VERTICAL.
- Which image dimension the sensor spans: AUTO picks the larger of ``width * pixel_aspect_x`` and
  ``height * pixel_aspect_y``; HORIZONTAL the width; VERTICAL the height. Call that dimension's
  extent, measured in x-pixel units, ``viewfac`` (``width`` or ``height * pixel_aspect_y /
  pixel_aspect_x``).
- Focal length in x pixels: ``fx = lens / sensor * viewfac``; pixels that are not square
  (pixel_aspect_y / pixel_aspect_x = ycor) give ``fy = fx / ycor``.
- Lens shift is in units of ``viewfac`` (the fitted dimension, "the larger dimension" for AUTO):
  the view plane moves by ``shift_x * viewfac`` x-pixels to the right and ``shift_y * viewfac``
  x-pixel units up, so ``cx = width / 2 - shift_x * viewfac`` and
  ``cy = height / 2 + shift_y * viewfac / ycor`` (image row 0 at the top).

Pixel (row r, column c) covers [c, c+1) x [r, r+1); a centred principal point is (width/2, height/2),
which is also where Blender puts it (its view plane spans -winx/2 .. winx/2 "fully centred").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")

#: Far plane used when a view's projection has none (an infinite far clip).
FAR_FALLBACK = 1e10


@dataclass(frozen=True)
class BlenderLens:
    """The Blender camera settings that reproduce a set of intrinsics (see :func:`blender_from_intrinsics`).

    Attributes:
        lens_mm: focal length, millimetres (``Camera.lens``).
        sensor_width: sensor width, millimetres (``Camera.sensor_width``).
        sensor_height: sensor height, millimetres (``Camera.sensor_height``).
        sensor_fit: ``Camera.sensor_fit``: "AUTO", "HORIZONTAL" or "VERTICAL" (:func:`blender_from_intrinsics`
            always writes an explicit "HORIZONTAL" or "VERTICAL").
        shift_x: horizontal lens shift, in units of the fitted dimension (``Camera.shift_x``).
        shift_y: vertical lens shift, in units of the fitted dimension (``Camera.shift_y``).
        pixel_aspect_x: ``RenderSettings.pixel_aspect_x``.
        pixel_aspect_y: ``RenderSettings.pixel_aspect_y``.
    """

    lens_mm: float
    sensor_width: float
    sensor_height: float
    sensor_fit: str
    shift_x: float
    shift_y: float
    pixel_aspect_x: float = 1.0
    pixel_aspect_y: float = 1.0


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:  # also rejects NaN
            raise ValueError(f"{name} must be > 0, got {value!r}")


def _fitted(sensor_fit: str, width: int, height: int, pixel_aspect_x: float, pixel_aspect_y: float) -> tuple[str, float]:
    """(resolved fit "HORIZONTAL"/"VERTICAL", viewfac in x-pixel units)."""
    if sensor_fit not in SENSOR_FITS:
        raise ValueError(f"sensor_fit must be one of {SENSOR_FITS}, got {sensor_fit!r}")
    fit = sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if pixel_aspect_x * width >= pixel_aspect_y * height else "VERTICAL"
    ycor = pixel_aspect_y / pixel_aspect_x
    viewfac = float(width) if fit == "HORIZONTAL" else ycor * float(height)
    return fit, viewfac


def intrinsics_from_blender(
    lens_mm: float,
    sensor_width: float,
    sensor_height: float,
    sensor_fit: str,
    shift_x: float,
    shift_y: float,
    width: int,
    height: int,
    pixel_aspect_x: float = 1.0,
    pixel_aspect_y: float = 1.0,
) -> tuple[float, float, float, float]:
    """Pinhole intrinsics of a Blender perspective camera rendered at ``width`` x ``height``.

    Args:
        lens_mm: ``Camera.lens``, millimetres.
        sensor_width: ``Camera.sensor_width``, millimetres.
        sensor_height: ``Camera.sensor_height``, millimetres (used only by a VERTICAL fit).
        sensor_fit: ``Camera.sensor_fit``: "AUTO", "HORIZONTAL" or "VERTICAL".
        shift_x: ``Camera.shift_x``, in units of the fitted dimension.
        shift_y: ``Camera.shift_y``, in units of the fitted dimension.
        width: rendered width in pixels (resolution_x * resolution_percentage / 100).
        height: rendered height in pixels.
        pixel_aspect_x: ``RenderSettings.pixel_aspect_x``.
        pixel_aspect_y: ``RenderSettings.pixel_aspect_y``.

    Returns:
        (fx, fy, cx, cy) in pixels, PROTOCOL.md convention (row 0 at the top, centred cx = width/2).

    Raises:
        ValueError: a size or the lens is not positive, or sensor_fit is unknown.
    """
    _check_positive(lens_mm=lens_mm, sensor_width=sensor_width, sensor_height=sensor_height, width=width,
                    height=height, pixel_aspect_x=pixel_aspect_x, pixel_aspect_y=pixel_aspect_y)
    fit, viewfac = _fitted(sensor_fit, width, height, pixel_aspect_x, pixel_aspect_y)
    sensor = sensor_height if sensor_fit == "VERTICAL" else sensor_width
    ycor = pixel_aspect_y / pixel_aspect_x
    fx = lens_mm / sensor * viewfac
    fy = fx / ycor
    cx = width / 2.0 - shift_x * viewfac
    cy = height / 2.0 + shift_y * viewfac / ycor
    return float(fx), float(fy), float(cx), float(cy)


def blender_from_intrinsics(
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    width: int,
    height: int,
    sensor_mm: float = 36.0,
) -> BlenderLens:
    """Blender camera settings that reproduce pinhole intrinsics (inverse of :func:`intrinsics_from_blender`).

    The sensor is fitted to the larger image dimension (as AUTO would) but the fit is written
    explicitly, so the result does not change if the user later changes the resolution's aspect.
    Non-square pixels (fx != fy) become a pixel aspect ratio.

    Args:
        fx: focal length, x pixels.
        fy: focal length, y pixels.
        cx: principal point x, pixels (width/2 is centred).
        cy: principal point y, pixels, row 0 at the top.
        width: image width in pixels.
        height: image height in pixels.
        sensor_mm: sensor size along the fitted dimension, millimetres.

    Returns:
        The Blender lens settings.

    Raises:
        ValueError: a focal length, size or the sensor is not positive.
    """
    _check_positive(fx=fx, fy=fy, width=width, height=height, sensor_mm=sensor_mm)
    # Keep the smaller pixel-aspect component at 1, as Blender's UI presets do.
    if fx >= fy:
        pixel_aspect_x, pixel_aspect_y = 1.0, fx / fy
    else:
        pixel_aspect_x, pixel_aspect_y = fy / fx, 1.0
    fit, viewfac = _fitted("AUTO", width, height, pixel_aspect_x, pixel_aspect_y)
    ycor = pixel_aspect_y / pixel_aspect_x
    lens_mm = fx * sensor_mm / viewfac
    shift_x = (width / 2.0 - cx) / viewfac
    shift_y = (cy - height / 2.0) * ycor / viewfac
    return BlenderLens(
        lens_mm=float(lens_mm),
        sensor_width=float(sensor_mm),
        sensor_height=float(sensor_mm),
        sensor_fit=fit,
        shift_x=float(shift_x),
        shift_y=float(shift_y),
        pixel_aspect_x=float(pixel_aspect_x),
        pixel_aspect_y=float(pixel_aspect_y),
    )


def render_size(resolution_x: int, resolution_y: int, resolution_percentage: int) -> tuple[int, int]:
    """Rendered image size in pixels, as Blender computes it (integer truncation of x * percent / 100).

    Args:
        resolution_x: ``RenderSettings.resolution_x``.
        resolution_y: ``RenderSettings.resolution_y``.
        resolution_percentage: ``RenderSettings.resolution_percentage``.

    Returns:
        (width, height) in pixels.
    """
    return (resolution_x * resolution_percentage) // 100, (resolution_y * resolution_percentage) // 100


def lens_intrinsics(lens: BlenderLens, width: int, height: int) -> tuple[float, float, float, float]:
    """Pinhole intrinsics (fx, fy, cx, cy), pixels, of a Blender lens rendered at ``width`` x ``height``.

    :func:`intrinsics_from_blender` with the settings of ``lens`` (its pixel aspect included).
    """
    return intrinsics_from_blender(lens.lens_mm, lens.sensor_width, lens.sensor_height, lens.sensor_fit,
                                   lens.shift_x, lens.shift_y, width, height,
                                   lens.pixel_aspect_x, lens.pixel_aspect_y)


# ------------------------------------------------------------------ cameras map

def cameras_map(world_from_camera: np.ndarray, fx, fy, cx, cy, width: int, height: int,
                near: float = 0.01, far: float = FAR_FALLBACK, fps: Optional[float] = None) -> dict:
    """A PROTOCOL.md cameras map with a leading axis T.

    Args:
        world_from_camera: Blender camera matrices (looks down -Z, +Y up), world frame, metres. [T, 4, 4]
        fx: focal length x, pixels: scalar or [T].
        fy: focal length y, pixels: scalar or [T].
        cx: principal point x, pixels: scalar or [T].
        cy: principal point y, pixels (row 0 at the top): scalar or [T].
        width: image width, pixels.
        height: image height, pixels.
        near: near clip, metres.
        far: far clip, metres.
        fps: frames per second, where the cameras are a path.

    Returns:
        The map, arrays float32.
    """
    wfc = np.ascontiguousarray(world_from_camera, dtype=np.float32)
    if wfc.ndim != 3 or wfc.shape[1:] != (4, 4):
        raise ValueError(f"world_from_camera must be [T, 4, 4], got {wfc.shape}")

    def intr(v, name):
        a = np.asarray(v, dtype=np.float32)
        if a.ndim == 0:
            return float(a)
        if a.shape != (len(wfc),):
            raise ValueError(f"{name} must be a scalar or [T={len(wfc)}], got shape {a.shape}")
        return np.ascontiguousarray(a)

    cams = {"world_from_camera": wfc, "fx": intr(fx, "fx"), "fy": intr(fy, "fy"), "cx": intr(cx, "cx"),
            "cy": intr(cy, "cy"), "width": int(width), "height": int(height), "near": float(near), "far": float(far)}
    if fps is not None:
        cams["fps"] = float(fps)
    return cams


def lens_cameras_map(world_from_camera: np.ndarray, lenses, width: int, height: int, near: float,
                     far: float) -> dict:
    """The PROTOCOL.md cameras map of views that each have their own Blender lens.

    Args:
        world_from_camera: camera to world, Blender camera convention, metres; any scale in the
            rotation columns is removed, as Blender's renderer does. [T, 4, 4]
        lenses: one :class:`BlenderLens` per view (T of them); its pixel aspect decides fy.
        width: image width in pixels (every view).
        height: image height in pixels (every view).
        near: near clipping distance, metres.
        far: far clipping distance, metres.

    Returns:
        The cameras map; fx, fy, cx, cy are per-view arrays. [T] <f8

    Raises:
        ValueError: the counts disagree, a matrix is not finite or degenerate, or a lens is bad.
    """
    m = np.array(world_from_camera, dtype=np.float64)
    if m.ndim != 3 or m.shape[1:] != (4, 4):
        raise ValueError(f"world_from_camera must be [T, 4, 4], got {list(m.shape)}")
    if len(lenses) != len(m):
        raise ValueError(f"{len(lenses)} lenses for {len(m)} camera matrices")
    if len(m) == 0:
        raise ValueError("no cameras")
    if not np.isfinite(m).all():
        raise ValueError("world_from_camera has non-finite values")
    scale = np.linalg.norm(m[:, :3, :3], axis=1)  # length of each axis column [T, 3]
    if (scale < 1e-12).any():
        raise ValueError(f"camera {int(np.argwhere(scale < 1e-12)[0, 0])}: matrix has a zero-length axis")
    m[:, :3, :3] /= scale[:, None, :]
    intr = np.array([lens_intrinsics(lens, width, height) for lens in lenses], dtype=np.float64)  # [T, 4]
    return {
        "world_from_camera": m.astype(np.float32),
        "fx": np.ascontiguousarray(intr[:, 0]),
        "fy": np.ascontiguousarray(intr[:, 1]),
        "cx": np.ascontiguousarray(intr[:, 2]),
        "cy": np.ascontiguousarray(intr[:, 3]),
        "width": int(width),
        "height": int(height),
        "near": float(near),
        "far": float(far),
    }


def _per_camera(value, count: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    return np.broadcast_to(arr, (count,)) if arr.ndim == 0 else arr


def project(points: np.ndarray, cameras: dict) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into every camera of a cameras map.

    Args:
        points: world frame, metres. [P, 3]
        cameras: PROTOCOL.md cameras map with T cameras.

    Returns:
        pixels: (x, y) image-plane coordinates; pixel (r, c) covers [c, c+1) x [r, r+1). [T, P, 2]
        depth: distance along each camera's -Z axis, metres (<= 0 behind the camera). [T, P]
    """
    w2c = np.asarray(cameras["world_from_camera"], dtype=np.float64)
    t = len(w2c)
    c2w = np.linalg.inv(w2c)
    pts = np.asarray(points, dtype=np.float64)
    cam = np.einsum("tij,pj->tpi", c2w[:, :3, :3], pts) + c2w[:, None, :3, 3]
    depth = -cam[..., 2]
    safe = np.where(np.abs(depth) > 1e-12, depth, 1e-12)
    fx, fy = _per_camera(cameras["fx"], t), _per_camera(cameras["fy"], t)
    cx, cy = _per_camera(cameras["cx"], t), _per_camera(cameras["cy"], t)
    # Blender camera: +X right, +Y up; image rows grow downwards, hence the minus on y.
    u = fx[:, None] * cam[..., 0] / safe + cx[:, None]
    v = -fy[:, None] * cam[..., 1] / safe + cy[:, None]
    return np.stack([u, v], axis=-1), depth


# ------------------------------------------------------------------ 3D view -> camera

@dataclass(frozen=True)
class ViewCamera:
    """One pinhole camera: what the server renders for a viewport.

    Attributes:
        world_from_camera: Blender camera convention (looks down -Z, +Y up), world frame, metres. [4, 4]
        fx: focal length, x pixels.
        fy: focal length, y pixels.
        cx: principal point x, pixels (width / 2 is centred).
        cy: principal point y, pixels, row 0 at the top.
        width: image width, pixels.
        height: image height, pixels.
        near: near clip, metres.
        far: far clip, metres.
    """

    world_from_camera: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    near: float
    far: float

    def scaled(self, factor: float) -> "ViewCamera":
        """The same view at ``factor`` times the resolution (at least 1 x 1 pixel)."""
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"scale factor must be in (0, 1], got {factor!r}")
        if factor == 1.0:
            return self
        width = max(1, round(self.width * factor))
        height = max(1, round(self.height * factor))
        # Pixel coordinates scale linearly: u' = u * width' / width (and likewise for v).
        sx, sy = width / self.width, height / self.height
        return ViewCamera(self.world_from_camera, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy,
                          width, height, self.near, self.far)

    def cameras_map(self) -> dict:
        """PROTOCOL.md cameras map (T = 1) for ``splat.render``."""
        return cameras_map(self.world_from_camera[None], self.fx, self.fy, self.cx, self.cy,
                                         self.width, self.height, near=self.near, far=self.far)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixel positions (column, row from the top) of world points in front of the camera (:func:`project`).

        Args:
            points: world frame, metres. [N, 3]

        Returns:
            (u, v) in pixels. [N, 2]
        """
        exact = {"world_from_camera": np.asarray(self.world_from_camera, np.float64)[None],
                 "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}  # float64, unlike the wire map
        return project(points, exact)[0][0]


def camera_from_view(view_matrix, window_matrix, width: int, height: int) -> ViewCamera:
    """The pinhole camera of a perspective 3D view (or a camera view) drawn into a region.

    ``view_matrix`` is camera_from_world in Blender's camera axes; ``window_matrix`` is the
    OpenGL-style projection Blender draws the region with (asymmetric for lens shift and for the
    camera view's zoom and offset). For camera-space x, y, z (z < 0 in front):
    ``ndc_x = P00 * x / -z - P02`` and ``ndc_y = P11 * y / -z - P12``; pixel column
    ``u = (ndc_x + 1) * width / 2`` and row ``v = (1 - ndc_y) * height / 2``, hence
    ``fx = P00 * width / 2``, ``cx = (1 - P02) * width / 2``, ``fy = P11 * height / 2`` and
    ``cy = (1 + P12) * height / 2``; ``near = P23 / (P22 - 1)`` and ``far = P23 / (P22 + 1)``.

    Args:
        view_matrix: ``RegionView3D.view_matrix``, camera_from_world. [4, 4]
        window_matrix: ``RegionView3D.window_matrix``, the projection. [4, 4]
        width: region width, pixels.
        height: region height, pixels.

    Returns:
        The camera; ``world_from_camera`` is the inverse of ``view_matrix``.

    Raises:
        ValueError: the matrices are not finite 4 x 4, the size is not positive, or the view is
            orthographic (``splat.render`` takes pinhole cameras).
    """
    view = np.asarray(view_matrix, dtype=np.float64)
    proj = np.asarray(window_matrix, dtype=np.float64)
    for name, mat in (("view_matrix", view), ("window_matrix", proj)):
        if mat.shape != (4, 4) or not np.isfinite(mat).all():
            raise ValueError(f"{name} must be a finite 4 x 4 matrix, got shape {mat.shape}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"region size must be positive, got {width} x {height}")
    if abs(proj[3, 3]) > 1e-6 or abs(proj[3, 2] + 1.0) > 1e-6:
        raise ValueError("the view is orthographic; the splat server render needs a perspective view "
                         "(View > Perspective/Orthographic, or a perspective camera)")
    width, height = int(width), int(height)
    fx = proj[0, 0] * width / 2.0
    fy = proj[1, 1] * height / 2.0
    cx = (1.0 - proj[0, 2]) * width / 2.0
    cy = (1.0 + proj[1, 2]) * height / 2.0
    near = proj[2, 3] / (proj[2, 2] - 1.0)
    far = proj[2, 3] / (proj[2, 2] + 1.0) if abs(proj[2, 2] + 1.0) > 1e-12 else FAR_FALLBACK
    if not (fx > 0 and fy > 0 and 0 < near < far):
        raise ValueError(f"window_matrix is not a perspective projection (fx={fx:g}, fy={fy:g}, "
                         f"near={near:g}, far={far:g})")
    world_from_camera = np.linalg.inv(view)
    return ViewCamera(world_from_camera, float(fx), float(fy), float(cx), float(cy), width, height,
                      float(near), float(min(far, FAR_FALLBACK)))
