"""nerfstudio ``camera_path.json`` <-> the PROTOCOL.md camera-path map, numpy only.

nerfstudio (``ns-render camera-path``) stores one entry per output frame in
``camera_path[i]``: ``camera_to_world`` (a 4x4 matrix flattened row-major, OpenGL camera axes:
-Z forward, +Y up, which are Blender's camera axes, so no conversion is needed), ``fov``
(vertical field of view in degrees) and ``aspect`` (width / height); at the top level
``render_width``, ``render_height``, ``fps``, ``seconds`` and ``camera_type``. Its renderer uses
square pixels with a centred principal point: ``fx = fy = (height / 2) / tan(fov / 2)``,
``cx = width / 2``, ``cy = height / 2``. The world frame is taken as is (nerfstudio's viewer is Z up).

The camera-path map: ``world_from_camera [T, 4, 4] <f4`` (Blender camera convention),
``fx, fy, cx, cy`` ([T] float32 arrays on read; scalars or [T] on write), ``width``, ``height``
(int) and ``fps`` (float).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .errors import FormatError


def _field(obj: dict, key: str, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise FormatError(f"{where}: missing '{key}'")
    return obj[key]


def _positive_number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise FormatError(f"{where}: expected a positive number, got {value!r}")
    return float(value)


def camera_path_from_json(doc: dict, source: str = "camera_path.json") -> dict:
    """Convert a parsed nerfstudio camera path document to the camera-path map.

    Args:
        doc: the parsed JSON object.
        source: what to name in error messages (the file path).

    Returns:
        ``world_from_camera [T, 4, 4] <f4``, ``fx, fy, cx, cy [T] <f4``, ``width``, ``height``
        (int), ``fps`` (float).

    Raises:
        FormatError: a field is missing or malformed, or the camera type is not perspective.
    """
    if not isinstance(doc, dict):
        raise FormatError(f"{source}: top level must be a JSON object, got {type(doc).__name__}")
    camera_type = doc.get("camera_type", "perspective")
    if camera_type != "perspective":
        raise FormatError(f"{source}: camera_type '{camera_type}' is not supported (only 'perspective')")
    width = _field(doc, "render_width", source)
    height = _field(doc, "render_height", source)
    for key, val in (("render_width", width), ("render_height", height)):
        if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
            raise FormatError(f"{source}: '{key}' must be a positive integer, got {val!r}")
    frames = _field(doc, "camera_path", source)
    if not isinstance(frames, list) or not frames:
        raise FormatError(f"{source}: 'camera_path' must be a non-empty list of frames")
    t = len(frames)
    if "fps" in doc:
        fps = _positive_number(doc["fps"], f"{source}: 'fps'")
    elif "seconds" in doc:
        fps = t / _positive_number(doc["seconds"], f"{source}: 'seconds'")
    else:
        raise FormatError(f"{source}: missing 'fps' (and no 'seconds' to derive it from)")

    matrices = np.empty((t, 16), np.float64)
    fovs = np.empty(t, np.float64)
    for i, frame in enumerate(frames):
        where = f"{source}: camera_path[{i}]"
        c2w = _field(frame, "camera_to_world", where)
        try:
            matrices[i] = np.asarray(c2w, dtype=np.float64).reshape(16)
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{where}: 'camera_to_world' must be 16 numbers (4x4 row-major)") from exc
        fovs[i] = _positive_number(_field(frame, "fov", where), f"{where}: 'fov'")
        if fovs[i] >= 180.0:
            raise FormatError(f"{where}: 'fov' must be below 180 degrees, got {fovs[i]}")
    if not np.isfinite(matrices).all():
        raise FormatError(f"{source}: camera_to_world holds non-finite numbers")
    focal = (height / 2.0) / np.tan(np.radians(fovs) / 2.0)
    return {
        "world_from_camera": matrices.reshape(t, 4, 4).astype(np.float32),
        "fx": focal.astype(np.float32),
        "fy": focal.astype(np.float32),
        "cx": np.full(t, width / 2.0, np.float32),
        "cy": np.full(t, height / 2.0, np.float32),
        "width": int(width),
        "height": int(height),
        "fps": float(fps),
    }


def camera_path_to_json(path_map: dict, source: str = "camera path") -> dict:
    """Convert a camera-path map to a nerfstudio camera path document.

    Args:
        path_map: ``world_from_camera [T, 4, 4]``, ``fx, fy, cx, cy`` (scalars or [T]),
            ``width``, ``height``, ``fps``.
        source: what to name in error messages.

    Returns:
        The JSON-ready dict (``camera_type`` "perspective"; ``keyframes`` empty: the path is
        already sampled per frame).

    Raises:
        FormatError: a field is missing or malformed, or the intrinsics cannot be written in
            nerfstudio's model (fx != fy, or a principal point off the image centre).
    """
    for key in ("world_from_camera", "fx", "fy", "cx", "cy", "width", "height", "fps"):
        _field(path_map, key, source)
    mats = np.asarray(path_map["world_from_camera"], dtype=np.float64)
    if mats.ndim != 3 or mats.shape[1:] != (4, 4) or mats.shape[0] == 0:
        raise FormatError(f"{source}: 'world_from_camera' must have shape (T, 4, 4) with T >= 1, got {mats.shape}")
    t = mats.shape[0]
    width, height = int(path_map["width"]), int(path_map["height"])
    if width <= 0 or height <= 0:
        raise FormatError(f"{source}: width and height must be positive, got {width}x{height}")
    fps = _positive_number(float(path_map["fps"]), f"{source}: 'fps'")
    intr = {}
    for key in ("fx", "fy", "cx", "cy"):
        arr = np.broadcast_to(np.asarray(path_map[key], dtype=np.float64), (t,)) if np.ndim(path_map[key]) <= 1 else None
        if arr is None or arr.shape != (t,) or not np.isfinite(arr).all():
            raise FormatError(f"{source}: '{key}' must be a finite scalar or a ({t},) array")
        intr[key] = arr
    if not np.allclose(intr["fx"], intr["fy"], rtol=1e-4):
        raise FormatError(f"{source}: nerfstudio camera paths need square pixels, but fx != fy")
    if not (np.allclose(intr["cx"], width / 2.0, atol=1e-2) and np.allclose(intr["cy"], height / 2.0, atol=1e-2)):
        raise FormatError(
            f"{source}: nerfstudio camera paths need a centred principal point "
            f"(cx = {width / 2}, cy = {height / 2}); got cx = {intr['cx'][0]}, cy = {intr['cy'][0]}"
        )
    fov = np.degrees(2.0 * np.arctan((height / 2.0) / intr["fy"]))
    return {
        "camera_type": "perspective",
        "render_width": width,
        "render_height": height,
        "fps": fps,
        "seconds": t / fps,
        "keyframes": [],
        "camera_path": [
            {"camera_to_world": mats[i].reshape(16).tolist(), "fov": float(fov[i]), "aspect": width / height}
            for i in range(t)
        ],
    }


def read_camera_path(path: str | os.PathLike) -> dict:
    """Read a nerfstudio camera_path.json file (see :func:`camera_path_from_json`)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON: {exc}") from exc
    return camera_path_from_json(doc, path)


def write_camera_path(path: str | os.PathLike, path_map: dict) -> None:
    """Write a camera-path map as a nerfstudio camera_path.json (see :func:`camera_path_to_json`)."""
    path = os.fspath(path)
    doc = camera_path_to_json(path_map, path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
