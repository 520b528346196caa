"""Whole-fcurve writing and reading (bpy layer): every channel filled in one foreach_set.

`write_channels` creates an action on an ID (through `compat.new_action`: channelbags on
4.5+/5.x, ``Action.fcurves`` before) and fills each fcurve's keyframes from a float32 buffer,
never a keyframe_insert per key. `read_channel` reads an fcurve's keys back with foreach_get.
"""

from __future__ import annotations

import numpy as np

from . import compat

#: ``Keyframe.interpolation`` enum indices, for foreach_set.
INTERPOLATION = {"CONSTANT": 0, "LINEAR": 1, "BEZIER": 2}


def fill_fcurve(fcurve, frames: np.ndarray, values: np.ndarray, interpolation: str = "LINEAR") -> None:
    """Replace ``fcurve``'s keys by (frames[i], values[i]) in one go. [T], [T]"""
    n = len(frames)
    points = fcurve.keyframe_points
    if len(points):
        points.clear()
    points.add(n)
    co = np.empty((n, 2), np.float32)
    co[:, 0] = frames
    co[:, 1] = values
    points.foreach_set("co", co.ravel())
    # The enum is stored as one byte: a uint8 buffer takes foreach_set's fast path (5x faster).
    points.foreach_set("interpolation", np.full(n, INTERPOLATION[interpolation], np.uint8))
    if interpolation == "BEZIER":
        fcurve.update()  # handles


def write_channels(id_data, action_name: str, id_type: str, channels, frame_start: float = 1.0,
                   interpolation: str = "LINEAR"):
    """A new action on ``id_data`` holding one fcurve per channel.

    Args:
        id_data: the animated ID (an armature object, a camera object ...).
        action_name: name of the new action.
        id_type: slot ID type ("OBJECT").
        channels: iterable of (data_path, index, group, values [T]).
        frame_start: frame of the first value.
        interpolation: "LINEAR" or "CONSTANT" (whole-frame samples need no Bezier handles).

    Returns:
        The action.
    """
    bag = compat.new_action(id_data, action_name, id_type)
    for data_path, index, group, values in channels:
        values = np.asarray(values, np.float32)
        frames = frame_start + np.arange(len(values), dtype=np.float32)
        fill_fcurve(bag.new_fcurve(data_path, index, group), frames, values, interpolation)
    return id_data.animation_data.action


def read_channel(fcurve) -> tuple[np.ndarray, np.ndarray]:
    """(frames [N], values [N]) of an fcurve's keys, float32."""
    co = np.empty(len(fcurve.keyframe_points) * 2, np.float32)
    fcurve.keyframe_points.foreach_get("co", co)
    co = co.reshape(-1, 2)
    return co[:, 0].copy(), co[:, 1].copy()


def bone_channels(names, quats: np.ndarray, root: str | None = None, root_location: np.ndarray | None = None):
    """Channels for `write_channels`: a quaternion per bone and the root's location.

    Args:
        names: bone names. [K]
        quats: (w, x, y, z) per frame and bone. [T, K, 4]
        root: the bone that gets location keys.
        root_location: its location per frame. [T, 3]
    """
    quats = np.asarray(quats, np.float32)
    for k, name in enumerate(names):
        path = f'pose.bones["{_escape(name)}"]'
        if name == root and root_location is not None:
            for i in range(3):
                yield f"{path}.location", i, name, np.ascontiguousarray(root_location[:, i])
        for i in range(4):
            yield f"{path}.rotation_quaternion", i, name, np.ascontiguousarray(quats[:, k, i])


def euler_to_quat(angles: np.ndarray, order: str) -> np.ndarray:
    """Blender Euler angles (radians, ``order`` e.g. "XYZ": X applied first) to (w, x, y, z). [T, 3] -> [T, 4]"""
    from ..core.motion import rotations as rot

    m = np.broadcast_to(np.eye(3), angles.shape[:-1] + (3, 3))
    for axis in order:
        v = np.zeros(angles.shape)
        i = "XYZ".index(axis)
        v[..., i] = angles[..., i]
        m = rot.axis_angle_to_matrix(v) @ m
    return rot.matrix_to_quat(m)


def read_bone_quaternions(obj, names, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Quaternions [T, K, 4] and root-location-like [T, K, 3] sampled at the action's keys.

    Bones without a channel keep their rest (identity / zero); keys are read with foreach_get
    and interpolated linearly onto whole frames starting at the first key. Bones keyed in Euler
    angles (their pose bone's rotation mode) are converted.
    """
    fcurves = compat.fcurves_for(obj)
    index = {(fc.data_path, fc.array_index): fc for fc in fcurves}
    start = min((read_channel(fc)[0][0] for fc in fcurves if len(fc.keyframe_points)), default=0.0)
    grid = start + np.arange(frames, dtype=np.float64)
    quats = np.zeros((frames, len(names), 4), np.float64)
    quats[..., 0] = 1.0
    locs = np.zeros((frames, len(names), 3), np.float64)
    for k, name in enumerate(names):
        path = f'pose.bones["{_escape(name)}"]'
        for i in range(4):
            fc = index.get((f"{path}.rotation_quaternion", i))
            if fc is not None and len(fc.keyframe_points):
                f, v = read_channel(fc)
                quats[:, k, i] = np.interp(grid, f, v)
        euler = [index.get((f"{path}.rotation_euler", i)) for i in range(3)]
        mode = obj.pose.bones[name].rotation_mode
        if any(fc is not None for fc in euler) and len(mode) == 3:
            angles = np.zeros((frames, 3))
            for i, fc in enumerate(euler):
                if fc is not None and len(fc.keyframe_points):
                    f, v = read_channel(fc)
                    angles[:, i] = np.interp(grid, f, v)
            quats[:, k] = euler_to_quat(angles, mode)
        for i in range(3):
            fc = index.get((f"{path}.location", i))
            if fc is not None and len(fc.keyframe_points):
                f, v = read_channel(fc)
                locs[:, k, i] = np.interp(grid, f, v)
    return quats, locs


def _escape(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')
