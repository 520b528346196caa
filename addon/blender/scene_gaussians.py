"""The Gaussian objects a render sees, read from Blender and merged in the world frame (bpy layer).

F12 (render thread) and the viewport engine (main thread) both call :func:`scene_gaussians`. Reading
a million Gaussians out of mesh attributes costs a bulk ``foreach_get`` per attribute, so each
object's local Gaussians are cached across frames and renders, keyed by its mesh's session_uid,
vertex count and a stamp the depsgraph handler bumps on every geometry update; moving an object
re-transforms the cached set without reading it again.
"""

from __future__ import annotations

from typing import Optional

import bpy
import numpy as np

from ..core import gaussian_transform

# Per Gaussian object, keyed by the mesh's session_uid: (content key, local Gaussians,
# matrix bytes, world Gaussians). Module level so an animation does not re-read the Gaussians
# every frame (each frame's render makes a new engine instance).
_cache: dict[int, tuple[tuple, dict, Optional[bytes], Optional[dict]]] = {}
# Mesh session_uid -> how many geometry updates the depsgraph reported for it.
_stamps: dict[int, int] = {}
# The last merged set: (key of its parts, Gaussians). Returning the same map while nothing changed
# lets the viewport tell a real change from an unrelated depsgraph update, and spares a copy.
_merged: list = [None, None]


def _content_key(obj) -> tuple:
    mesh = obj.data
    uid = mesh.session_uid
    return (uid, len(mesh.vertices), _stamps.get(uid, 0))


def world_gaussians(obj_orig, matrix_world) -> dict:
    """An object's Gaussians in the world frame, from the cache when nothing changed.

    Args:
        obj_orig: the original (not evaluated) Gaussian object.
        matrix_world: its evaluated world matrix. [4, 4]
    """
    from .importers import gaussians as gaussian_objects

    key = _content_key(obj_orig)
    uid = key[0]
    mat = np.array(matrix_world, dtype=np.float64)
    mat_bytes = mat.tobytes()
    entry = _cache.get(uid)
    if entry is None or entry[0] != key:
        local = gaussian_objects.read_gaussians(obj_orig)
        entry = (key, local, None, None)
    if entry[2] != mat_bytes:
        entry = (key, entry[1], mat_bytes, gaussian_transform.transform_gaussians(entry[1], mat))
    _cache[uid] = entry
    return entry[3]


def scene_gaussians(depsgraph) -> tuple[Optional[dict], list[str]]:
    """All Gaussian objects the depsgraph's view layer renders, merged in the world frame.

    Returns:
        (Gaussians map or None when there are none, colour spaces of the objects).
    """
    from .importers import gaussians as gaussian_objects

    sets, spaces, used, key = [], [], set(), []
    for inst in depsgraph.object_instances:
        orig = inst.object.original
        if inst.is_instance and gaussian_objects.is_gaussian_object(inst.instance_object.original):
            continue  # geometry the display proxy instances on a Gaussian object's points
        if not gaussian_objects.is_gaussian_object(orig) or len(orig.data.vertices) == 0:
            continue
        sets.append(world_gaussians(orig, inst.matrix_world))
        spaces.append(orig.get(gaussian_objects.PROP_COLOR_SPACE, "linear"))
        used.add(orig.data.session_uid)
        key.append((_content_key(orig), np.array(inst.matrix_world, dtype=np.float64).tobytes()))
    for uid in [u for u in _cache if u not in used]:
        # Keep memory to what the last render needed. pop: an F12 render (render thread) and a
        # viewport (main thread) may both be here.
        _cache.pop(uid, None)
    if not sets:
        _merged[:] = [None, None]
        return None, spaces
    key = tuple(key)
    if _merged[0] != key:
        _merged[:] = [key, gaussian_transform.merge_gaussians(sets)]
    return _merged[1], spaces


def merged_key():
    """What identifies the Gaussians :func:`scene_gaussians` merged last (their content and
    placement): a render uploads them once under this key and renders later frames by reference."""
    return _merged[0]


def note_geometry_updates(depsgraph) -> None:
    """Bump the stamp of every mesh whose geometry the depsgraph reports as changed."""
    for update in depsgraph.updates:
        if not update.is_updated_geometry:
            continue
        idb = update.id.original
        data = idb.data if isinstance(idb, bpy.types.Object) and idb.type == "MESH" else idb
        if isinstance(data, bpy.types.Mesh):
            _stamps[data.session_uid] = _stamps.get(data.session_uid, 0) + 1


@bpy.app.handlers.persistent
def _on_depsgraph_update(_scene, depsgraph) -> None:
    note_geometry_updates(depsgraph)


@bpy.app.handlers.persistent
def _on_load_post(*_args) -> None:
    clear_cache()
    _stamps.clear()


def clear_cache() -> None:
    """Forget every cached Gaussian set (the next render reads them from Blender again)."""
    _cache.clear()
    _merged[:] = [None, None]


CLASSES = ()


def register() -> None:
    bpy.app.handlers.depsgraph_update_post.append(_on_depsgraph_update)
    bpy.app.handlers.load_post.append(_on_load_post)


def unregister() -> None:
    bpy.app.handlers.load_post.remove(_on_load_post)
    bpy.app.handlers.depsgraph_update_post.remove(_on_depsgraph_update)
    clear_cache()
    _stamps.clear()
