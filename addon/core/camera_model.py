"""Blender camera data <-> pinhole intrinsics (fx, fy, cx, cy) in PROTOCOL.md's pixel convention.

bpy-free. Follows Blender's own view-plane rules (``BKE_camera_params_compute_viewplane``):

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

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


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
