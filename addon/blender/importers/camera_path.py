"""Camera paths <-> animated Blender cameras (bpy layer).

Import writes whole fcurves at once (``keyframe_points.add(T)`` + ``foreach_set("co", ...)``)
into the camera's new action (a channelbag from 4.5, the action itself before: :mod:`compat`). Export samples the
scene camera once per frame with ``scene.frame_set``: constraints, parents and drivers all have
to be evaluated, and T is small.
"""

from __future__ import annotations

import logging

import numpy as np

from .. import compat
from ...core.camera import blender_from_intrinsics, lens_intrinsics, render_size
from ..cameras import lens_of
from ...core.formats.axes import rotmat_to_quat

log = logging.getLogger(__name__)

# Indices in Keyframe.interpolation's enum (foreach_set takes the index).
_INTERPOLATION = {"CONSTANT": 0, "LINEAR": 1, "BEZIER": 2}


def _quats_from_matrices(rot: np.ndarray) -> np.ndarray:
    """(w, x, y, z) unit quaternions of rotation matrices, sign-continuous along T. [T, 3, 3] -> [T, 4]"""
    q = rotmat_to_quat(rot.astype(np.float64))
    # q and -q are the same rotation; flip so neighbours agree and interpolation takes the short way.
    if len(q) > 1:
        flips = np.sign(np.einsum("ij,ij->i", q[1:], q[:-1]))
        flips[flips == 0] = 1.0
        q[1:] *= np.cumprod(flips)[:, None]
    return q


def put_fcurve(channels, data_path: str, index: int, frames: np.ndarray, values: np.ndarray, group: str,
               interpolation: str = "LINEAR") -> None:
    """One whole fcurve in bulk: keyframes at ``frames`` with ``values``, no per-key Python calls.

    Args:
        channels: from :func:`compat.new_action`.
        data_path: animated property, e.g. "location".
        index: array index of the property.
        frames: keyframe times. [T]
        values: keyframe values. [T]
        group: channel group name.
        interpolation: "CONSTANT", "LINEAR" or "BEZIER" (auto-clamped handles, as keyframe_insert makes).
    """
    fcurve = channels.new_fcurve(data_path, index, group)
    t = frames.shape[0]
    fcurve.keyframe_points.add(t)
    co = np.empty((t, 2), np.float32)
    co[:, 0] = frames
    co[:, 1] = values
    fcurve.keyframe_points.foreach_set("co", co.reshape(-1))
    fcurve.keyframe_points.foreach_set("interpolation", np.full(t, _INTERPOLATION[interpolation], np.int32))
    fcurve.update()  # sorts the keys and computes the handles


def create_camera_from_path(name: str, path_map: dict, scene=None, frame_start: int | None = None):
    """Create a camera animated along a camera path, one keyframe per path frame.

    Sets the scene's resolution, fps and frame range to the path's.

    Args:
        name: object/camera name.
        path_map: ``world_from_camera [T, 4, 4]`` (Blender camera convention), ``fx, fy, cx,
            cy`` (scalars or [T]), ``width``, ``height``, ``fps``.
        scene: scene to link into and configure (default: the context scene).
        frame_start: frame of the first path frame (default: the scene's frame_start).

    Returns:
        The new camera object (also made the scene camera).
    """
    import bpy

    scene = scene or bpy.context.scene
    mats = np.asarray(path_map["world_from_camera"], dtype=np.float64)
    t = mats.shape[0]
    width, height = int(path_map["width"]), int(path_map["height"])
    fx, fy, cx, cy = (np.broadcast_to(np.asarray(path_map[key], dtype=np.float64), (t,))
                      for key in ("fx", "fy", "cx", "cy"))
    start = scene.frame_start if frame_start is None else int(frame_start)
    frames = np.arange(start, start + t, dtype=np.float64)

    # Sensor fit, shift and pixel aspect from the first frame; only the lens is animated.
    first = blender_from_intrinsics(fx[0], fy[0], cx[0], cy[0], width, height)
    if not (np.allclose(cx, cx[0]) and np.allclose(cy, cy[0])):
        log.warning("%s: principal point varies along the path; using the first frame's", name)
    if not np.allclose(fy / fx, fy[0] / fx[0]):
        log.warning("%s: pixel aspect (fy / fx) varies along the path; using the first frame's", name)
    cam_data = bpy.data.cameras.new(name)
    cam_data.sensor_fit = first.sensor_fit
    cam_data.sensor_width, cam_data.sensor_height = first.sensor_width, first.sensor_height
    cam_data.shift_x, cam_data.shift_y = first.shift_x, first.shift_y
    obj = bpy.data.objects.new(name, cam_data)
    scene.collection.objects.link(obj)
    obj.rotation_mode = "QUATERNION"

    rot = mats[:, :3, :3] / np.linalg.norm(mats[:, :3, :3], axis=1, keepdims=True)  # drop any scale
    quats = _quats_from_matrices(rot)
    bag = compat.new_action(obj, f"{name}Action", "OBJECT")
    for i in range(3):
        put_fcurve(bag, "location", i, frames, mats[:, i, 3], "Object Transforms")
    for i in range(4):
        put_fcurve(bag, "rotation_quaternion", i, frames, quats[:, i], "Object Transforms")
    # With the fit fixed, the lens is proportional to the focal length in pixels.
    lens = first.lens_mm * fx / fx[0]
    put_fcurve(compat.new_action(cam_data, f"{name}CameraAction", "CAMERA"), "lens", 0, frames, lens, "Camera")

    scene.camera = obj
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = first.pixel_aspect_x, first.pixel_aspect_y
    fps = float(path_map["fps"])
    scene.render.fps = max(1, round(fps))
    scene.render.fps_base = scene.render.fps / fps
    scene.frame_start, scene.frame_end = start, start + t - 1
    scene.frame_set(start)
    return obj


def camera_path_from_scene(scene=None, camera=None, frame_start: int | None = None,
                           frame_end: int | None = None) -> dict:
    """Sample a camera over a frame range into a camera-path map.

    Args:
        scene: the scene (default: the context scene).
        camera: camera object (default: the scene camera).
        frame_start, frame_end: inclusive range (default: the scene's).

    Returns:
        ``world_from_camera [T, 4, 4] <f4``, ``fx, fy, cx, cy [T] <f4``, ``width``, ``height``,
        ``fps``.

    Raises:
        ValueError: no camera, not a perspective camera, or an empty frame range.
    """
    import bpy

    scene = scene or bpy.context.scene
    camera = camera or scene.camera
    if camera is None or camera.type != "CAMERA":
        raise ValueError("no camera to export: set the scene camera or select a camera")
    if camera.data.type != "PERSP":
        raise ValueError(f"camera '{camera.name}' is {camera.data.type}; only perspective cameras can be exported")
    start = scene.frame_start if frame_start is None else frame_start
    end = scene.frame_end if frame_end is None else frame_end
    if end < start:
        raise ValueError(f"empty frame range {start}..{end}")
    render = scene.render
    if render.pixel_aspect_x != render.pixel_aspect_y:
        raise ValueError(f"pixel aspect {render.pixel_aspect_x}:{render.pixel_aspect_y} is not square; "
                         "camera paths assume square pixels")
    width, height = render_size(render.resolution_x, render.resolution_y, render.resolution_percentage)
    t = end - start + 1
    mats = np.empty((t, 4, 4), np.float32)
    intr = np.empty((t, 4), np.float32)
    current = scene.frame_current
    try:
        for i, frame in enumerate(range(start, end + 1)):
            scene.frame_set(frame)
            evaluated = camera.evaluated_get(bpy.context.evaluated_depsgraph_get())
            mats[i] = np.array(evaluated.matrix_world, dtype=np.float32)
            intr[i] = lens_intrinsics(lens_of(evaluated.data, render), width, height)
    finally:
        scene.frame_set(current)
    return {
        "world_from_camera": mats,
        "fx": intr[:, 0].copy(), "fy": intr[:, 1].copy(), "cx": intr[:, 2].copy(), "cy": intr[:, 3].copy(),
        "width": width, "height": height,
        "fps": render.fps / render.fps_base,
    }
