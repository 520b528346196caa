"""Camera paths <-> animated Blender cameras (bpy layer).

Import writes whole fcurves at once (``keyframe_points.add(T)`` + ``foreach_set("co", ...)``)
into a layered action's channelbag (Blender 5.0 has no ``Action.fcurves``). Export samples the
scene camera once per frame with ``scene.frame_set``: constraints, parents and drivers all have
to be evaluated, and T is small.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

_LINEAR = 1  # index of 'LINEAR' in Keyframe.interpolation's enum


def blender_intrinsics(lens: float, sensor_width: float, sensor_height: float, sensor_fit: str,
                       shift_x: float, shift_y: float, width: int, height: int) -> tuple[float, float, float, float]:
    """Pinhole intrinsics of a Blender camera (square pixels), in the PROTOCOL.md convention.

    Blender measures focal length and shift against the "fit" dimension: the larger image side
    for AUTO (with the sensor width), else the side sensor_fit names.

    Args:
        lens: focal length, mm.
        sensor_width, sensor_height: sensor size, mm.
        sensor_fit: "AUTO", "HORIZONTAL" or "VERTICAL".
        shift_x, shift_y: lens shift, in units of the fit dimension.
        width, height: render resolution, pixels.

    Returns:
        (fx, fy, cx, cy) in pixels; image row 0 is the top.
    """
    if sensor_fit == "AUTO":
        horizontal, sensor = width >= height, sensor_width
    elif sensor_fit == "HORIZONTAL":
        horizontal, sensor = True, sensor_width
    else:
        horizontal, sensor = False, sensor_height
    fit = width if horizontal else height
    focal = lens / sensor * fit
    return focal, focal, width / 2.0 - shift_x * fit, height / 2.0 + shift_y * fit


def _quats_from_matrices(rot: np.ndarray) -> np.ndarray:
    """(w, x, y, z) unit quaternions of rotation matrices, sign-continuous along T. [T, 3, 3] -> [T, 4]"""
    m = rot.astype(np.float64)
    t = m.shape[0]
    q = np.empty((t, 4))
    # Four candidate formulas, each stable where its component is largest.
    d = np.stack([np.trace(m, axis1=1, axis2=2), m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    best = np.argmax(d, axis=1)
    w = best == 0
    s = 2.0 * np.sqrt(np.maximum(1.0 + d[w, 0], 1e-12))
    q[w] = np.stack([0.25 * s, (m[w, 2, 1] - m[w, 1, 2]) / s, (m[w, 0, 2] - m[w, 2, 0]) / s, (m[w, 1, 0] - m[w, 0, 1]) / s], 1)
    for i in range(3):
        sel = best == i + 1
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(np.maximum(1.0 + m[sel, i, i] - m[sel, j, j] - m[sel, k, k], 1e-12))
        qi = np.empty((int(sel.sum()), 4))
        qi[:, 0] = (m[sel, k, j] - m[sel, j, k]) / s
        qi[:, 1 + i] = 0.25 * s
        qi[:, 1 + j] = (m[sel, j, i] + m[sel, i, j]) / s
        qi[:, 1 + k] = (m[sel, k, i] + m[sel, i, k]) / s
        q[sel] = qi
    # q and -q are the same rotation; flip so neighbours agree and interpolation takes the short way.
    if t > 1:
        flips = np.sign(np.einsum("ij,ij->i", q[1:], q[:-1]))
        flips[flips == 0] = 1.0
        q[1:] *= np.cumprod(flips)[:, None]
    return q


def _put_fcurve(channelbag, data_path: str, index: int, frames: np.ndarray, values: np.ndarray, group: str) -> None:
    """One whole fcurve in bulk: T keyframes at ``frames`` with ``values``, linear interpolation."""
    fcurve = channelbag.fcurves.new(data_path, index=index, group_name=group)
    t = frames.shape[0]
    fcurve.keyframe_points.add(t)
    co = np.empty((t, 2), np.float32)
    co[:, 0] = frames
    co[:, 1] = values
    fcurve.keyframe_points.foreach_set("co", co.reshape(-1))
    fcurve.keyframe_points.foreach_set("interpolation", np.full(t, _LINEAR, np.int32))
    fcurve.update()


def _channelbag(id_data, name: str, id_type: str):
    from bpy_extras import anim_utils
    import bpy

    action = bpy.data.actions.new(name)
    anim = id_data.animation_data_create()
    anim.action = action
    slot = anim.action_slot
    if slot is None:
        slot = action.slots.new(id_type=id_type, name=id_data.name)
        anim.action_slot = slot
    return anim_utils.action_ensure_channelbag_for_slot(action, slot)


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
    fy = np.broadcast_to(np.asarray(path_map["fy"], dtype=np.float64), (t,))
    cx = np.broadcast_to(np.asarray(path_map["cx"], dtype=np.float64), (t,))
    cy = np.broadcast_to(np.asarray(path_map["cy"], dtype=np.float64), (t,))
    start = scene.frame_start if frame_start is None else int(frame_start)
    frames = np.arange(start, start + t, dtype=np.float64)

    cam_data = bpy.data.cameras.new(name)
    # Vertical fit: lens = fy * sensor_height / height holds whatever the aspect ratio.
    cam_data.sensor_fit = "VERTICAL"
    cam_data.shift_x = float((width / 2.0 - cx[0]) / height)
    cam_data.shift_y = float((cy[0] - height / 2.0) / height)
    if not (np.allclose(cx, cx[0]) and np.allclose(cy, cy[0])):
        log.warning("%s: principal point varies along the path; using the first frame's", name)
    obj = bpy.data.objects.new(name, cam_data)
    scene.collection.objects.link(obj)
    obj.rotation_mode = "QUATERNION"

    rot = mats[:, :3, :3] / np.linalg.norm(mats[:, :3, :3], axis=1, keepdims=True)  # drop any scale
    quats = _quats_from_matrices(rot)
    bag = _channelbag(obj, f"{name}Action", "OBJECT")
    for i in range(3):
        _put_fcurve(bag, "location", i, frames, mats[:, i, 3], "Object Transforms")
    for i in range(4):
        _put_fcurve(bag, "rotation_quaternion", i, frames, quats[:, i], "Object Transforms")
    lens = fy * cam_data.sensor_height / height
    _put_fcurve(_channelbag(cam_data, f"{name}CameraAction", "CAMERA"), "lens", 0, frames, lens, "Camera")

    scene.camera = obj
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
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
    scale = render.resolution_percentage / 100.0
    width, height = round(render.resolution_x * scale), round(render.resolution_y * scale)
    t = end - start + 1
    mats = np.empty((t, 4, 4), np.float32)
    intr = np.empty((t, 4), np.float32)
    current = scene.frame_current
    try:
        for i, frame in enumerate(range(start, end + 1)):
            scene.frame_set(frame)
            evaluated = camera.evaluated_get(bpy.context.evaluated_depsgraph_get())
            mats[i] = np.array(evaluated.matrix_world, dtype=np.float32)
            cam = evaluated.data
            intr[i] = blender_intrinsics(cam.lens, cam.sensor_width, cam.sensor_height, cam.sensor_fit,
                                         cam.shift_x, cam.shift_y, width, height)
    finally:
        scene.frame_set(current)
    return {
        "world_from_camera": mats,
        "fx": intr[:, 0].copy(), "fy": intr[:, 1].copy(), "cx": intr[:, 2].copy(), "cy": intr[:, 3].copy(),
        "width": width, "height": height,
        "fps": render.fps / render.fps_base,
    }
