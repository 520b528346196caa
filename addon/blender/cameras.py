"""Blender cameras -> the numbers `addon.core.camera` turns into wire cameras (the bpy side).

The one place that reads a camera's lens out of bpy. Every feature that sends cameras to the
server (F12, the viewport, camera-path export, capture) takes its :class:`camera.BlenderLens`
from :func:`lens_of` and its cameras map from `addon.core.camera`, so they cannot drift apart.

Pixel aspect: a lens read with the scene's render settings carries their pixel aspect (F12 renders
with it, so fy follows it); a lens read without them is square (capture renders square pixels).
"""

from __future__ import annotations

import numpy as np

from ..core import camera


def lens_of(camera_data, render=None) -> camera.BlenderLens:
    """The lens settings of a Blender camera (``bpy.types.Camera``) that decide its intrinsics.

    Args:
        camera_data: the camera datablock (an evaluated one for animated lenses).
        render: ``scene.render`` whose pixel aspect applies; None for square pixels.
    """
    aspect = (1.0, 1.0) if render is None else (float(render.pixel_aspect_x), float(render.pixel_aspect_y))
    return camera.BlenderLens(
        lens_mm=float(camera_data.lens), sensor_width=float(camera_data.sensor_width),
        sensor_height=float(camera_data.sensor_height), sensor_fit=camera_data.sensor_fit,
        shift_x=float(camera_data.shift_x), shift_y=float(camera_data.shift_y),
        pixel_aspect_x=aspect[0], pixel_aspect_y=aspect[1])


def check_perspective(camera_obj, what: str = "splat rendering") -> None:
    """Raise ValueError unless ``camera_obj`` is a perspective camera object."""
    if camera_obj is None or getattr(camera_obj, "type", None) != "CAMERA":
        raise ValueError(f"{getattr(camera_obj, 'name', camera_obj)!r} is not a camera object")
    if camera_obj.data.type != "PERSP":
        raise ValueError(f"camera '{camera_obj.name}' is {camera_obj.data.type}; {what} needs a perspective camera")


def frame_cameras(scene, camera_obj, width: int, height: int) -> dict:
    """The cameras map (T = 1) of an (evaluated) camera object at this frame, with the scene's pixel aspect.

    Raises:
        ValueError: no camera, or not a perspective camera.
    """
    if camera_obj is None:
        raise ValueError(f"scene '{scene.name}' has no active camera")
    check_perspective(camera_obj)
    cam = camera_obj.data
    wfc = np.array(camera_obj.matrix_world, dtype=np.float64)[None]
    return camera.lens_cameras_map(wfc, [lens_of(cam, scene.render)], width, height,
                                   near=cam.clip_start, far=cam.clip_end)


def view_camera(region, rv3d) -> camera.ViewCamera:
    """The pinhole camera of a 3D view region (``RegionView3D`` matrices and the region size)."""
    return camera.camera_from_view(rv3d.view_matrix, rv3d.window_matrix, region.width, region.height)
