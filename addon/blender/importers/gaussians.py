"""Gaussians <-> Blender objects (bpy layer).

A Gaussian object is a mesh with one vertex per Gaussian whose POINT attributes hold the raw
parameters (``addon.core.gaussians_layout`` is the table), plus a Geometry Nodes modifier that
displays them (`addon.blender.gaussian_nodes`: oriented, scaled ico-spheres coloured by the SH DC
colour with the Gaussian's opacity, or plain points above a configurable count). Everything is bulk ``foreach_set`` /
``foreach_get`` of float32 buffers; nothing loops over Gaussians in Python.
"""

from __future__ import annotations

import logging

import numpy as np

from ..gaussian_nodes import PROXY_MODIFIER_NAME, ensure_proxy_node_group
from ...core import gaussians_layout as layout
from ...core.formats.gaussians import DEGREE_BY_K, check_gaussians

log = logging.getLogger(__name__)

PROP_COLOR_SPACE = "nstudio_color_space"
PROP_SH_DEGREE = "nstudio_sh_degree"
PROP_IS_GAUSSIANS = "nstudio_gaussians"
COLOR_SPACES = ("linear", "srgb")


# ---------------------------------------------------------------- create / update (stepwise)
#
# Each create/update is a generator doing one bounded piece of Blender work per step (gather a
# block of SH coefficients, create and fill one attribute, swap the mesh), so the job manager can
# apply a large result inside its per-tick time budget; the one-call functions run the same
# generator to its end. Between two steps anything may happen (the user deletes the object,
# another file is opened), so no bpy reference is kept across a yield: IDs are looked up again
# by name and session_uid, and attributes are created and filled in one statement (a Python
# reference to a mesh attribute can dangle once another attribute is added).

# Gaussians per SH gathering step: transposing 64k Gaussians' SH rest coefficients into planes
# takes about 5 ms (K = 15), a bounded step; below this the whole table is made in one step.
_GATHER_ROWS = 65536


class _IDRef:
    """An ID (object, mesh or collection) found again after every yield by name and session_uid.

    Args:
        idb: the ID now.
        kind: its ``bpy.data`` collection: "objects", "meshes" or "collections" (a scene's
            master collection is found through ``bpy.data.scenes``).
    """

    def __init__(self, idb, kind: str):
        self.kind = kind
        self.name = idb.name
        self.uid = idb.session_uid

    def _candidates(self):
        import bpy

        if self.kind == "collections":
            return [*bpy.data.collections, *(scene.collection for scene in bpy.data.scenes)]
        return getattr(bpy.data, self.kind)

    def get(self):
        """The ID, or None once it has been deleted (or another file has been opened)."""
        import bpy

        if self.kind != "collections":
            idb = getattr(bpy.data, self.kind).get(self.name)
            if idb is not None and idb.session_uid == self.uid:
                return idb
        # Renamed meanwhile (or a master collection): a scan, only in that case.
        idb = next((c for c in self._candidates() if c.session_uid == self.uid), None)
        if idb is not None:
            self.name = idb.name
        return idb


def run_steps(steps):
    """Run a step generator to its end in one call.

    Args:
        steps: a generator from one of the ``*_steps`` functions.

    Returns:
        The generator's return value.
    """
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def _check_color_space(color_space: str) -> None:
    if color_space not in COLOR_SPACES:
        raise ValueError(f"color_space must be one of {COLOR_SPACES}, got {color_space!r}")


def _attribute_table_steps(gaussians: dict, n: int, k: int):
    """Build ``gaussians_layout.gaussian_attributes(gaussians)`` in bounded steps.

    The SH rest planes are the only part that costs time (a transpose of [N, K, 3]): they are
    gathered block by block of Gaussians through the same layout function; the other buffers
    are views of the input.

    Yields:
        "gather SH" after each block.

    Returns:
        The attribute table ``{name: (Blender type, foreach key, buffer)}`` in layout order.
    """
    if k == 0 or n <= _GATHER_ROWS:
        return layout.gaussian_attributes(gaussians)
    direct = layout.gaussian_attributes(dict(gaussians, shN=gaussians["shN"][:, :0]))
    order: list[str] = []
    gathered: dict[str, tuple[str, str, np.ndarray]] = {}
    for start in range(0, n, _GATHER_ROWS):
        rows = min(_GATHER_ROWS, n - start)
        block = layout.gaussian_attributes({key: value[start:start + rows] for key, value in gaussians.items()})
        if not order:
            order = list(block)
        for name, (btype, key, buf) in block.items():
            if name in direct:
                continue
            width = buf.size // rows
            if name not in gathered:
                gathered[name] = (btype, key, np.empty(n * width, buf.dtype))
            gathered[name][2][start * width:(start + rows) * width] = buf
        yield "gather SH"
    return {name: direct[name] if name in direct else gathered[name] for name in order}


def _same_layout(mesh, n: int, table: dict) -> bool:
    """True when the mesh has exactly n vertices and the table's Gaussian attributes (names and types)."""
    existing = {a.name: a.data_type for a in mesh.attributes if a.domain == "POINT" and a.name.startswith("gs_")}
    return len(mesh.vertices) == n and existing == {name: btype for name, (btype, _, _) in table.items()}


def _new_mesh_steps(name: str, gaussians: dict, table: dict):
    """Create a mesh holding the Gaussians: size first, then each attribute created and filled.

    The mesh has no users while it is built; a fake user keeps "purge unused data" from
    deleting it between steps. If the generator is closed before the end, the mesh is removed.

    Yields:
        What the step wrote.

    Returns:
        An :class:`_IDRef` of the finished mesh (fake user cleared, no users), or None when it
        was deleted meanwhile.
    """
    import bpy

    n = gaussians["means"].shape[0]
    mesh = bpy.data.meshes.new(name)
    mesh.use_fake_user = True
    ref = _IDRef(mesh, "meshes")
    done = False
    try:
        mesh.vertices.add(n)
        if n:
            # The generic attribute API writes positions ~100x faster than vertices.foreach_set("co")
            # (0.6 ms vs 72 ms for 1M vertices, Blender 5.0).
            mesh.attributes[layout.POSITION].data.foreach_set("vector", layout.position_buffer(gaussians))
        yield "positions"
        for attr_name, (btype, key, buf) in table.items():
            mesh = ref.get()
            if mesh is None:
                log.warning("mesh '%s' was deleted while Gaussians were written into it", ref.name)
                return None
            mesh.attributes.new(attr_name, btype, "POINT").data.foreach_set(key, buf)
            yield attr_name
        mesh = ref.get()
        if mesh is None:
            return None
        mesh.use_fake_user = False
        mesh.update()
        done = True
        return ref
    finally:
        if not done:
            mesh = ref.get()
            if mesh is not None:
                bpy.data.meshes.remove(mesh)


def _write_in_place_steps(obj_ref: _IDRef, n: int, gaussians: dict, table: dict):
    """Overwrite the object's mesh attributes one per step (same count and attribute set).

    Yields:
        What the step wrote.

    Returns:
        True when every attribute was written; False when the object was deleted or its mesh
        changed shape meanwhile (the caller then builds a new mesh).
    """
    writes = [(layout.POSITION, "vector", layout.position_buffer(gaussians))] if n else []
    writes += [(name, key, buf) for name, (_, key, buf) in table.items()]
    for attr_name, key, buf in writes:
        obj = obj_ref.get()
        if obj is None or not _same_layout(obj.data, n, table):
            return False
        obj.data.attributes[attr_name].data.foreach_set(key, buf)
        yield attr_name
    obj = obj_ref.get()
    if obj is None:
        return False
    obj.data.update()
    return True


def _tag(obj, gaussians: dict, color_space: str) -> None:
    _check_color_space(color_space)
    obj[PROP_IS_GAUSSIANS] = True
    obj[PROP_COLOR_SPACE] = color_space
    obj[PROP_SH_DEGREE] = DEGREE_BY_K[gaussians["shN"].shape[1]]


def _warn_unsupported(name: str, gaussians: dict) -> None:
    for extra in layout.unsupported_extras(gaussians):
        log.warning("%s: extra array '%s' has no lossless Blender attribute type; not stored", name, extra)


def create_gaussian_object_steps(name: str, gaussians: dict, collection=None, color_space: str = "linear"):
    """Stepwise :func:`create_gaussian_object`: a generator doing one bounded piece per step.

    The map and the colour space are checked now, before the generator is returned; Blender
    data is only touched by the steps. The object appears (complete) in the last step; if the
    generator is closed before, nothing is left behind.

    Args:
        name: object and mesh name.
        gaussians: the PROTOCOL.md Gaussians map (see :func:`create_gaussian_object`).
        collection: collection to link into (default: the context's active collection, as it
            is now).
        color_space: "linear" or "srgb".

    Returns:
        A generator yielding what each step did (e.g. an attribute name) and returning the new
        object, or None when the collection was deleted meanwhile.

    Raises:
        FormatError: the map does not follow the data contract.
        ValueError: unknown colour space.
    """
    import bpy

    _check_color_space(color_space)
    n, k = check_gaussians(gaussians)
    _warn_unsupported(name, gaussians)
    target = _IDRef(collection or bpy.context.collection or bpy.context.scene.collection, "collections")
    return _create_steps(name, gaussians, n, k, target, color_space)


def _create_steps(name: str, gaussians: dict, n: int, k: int, target: _IDRef, color_space: str):
    import bpy

    table = yield from _attribute_table_steps(gaussians, n, k)
    mesh_ref = yield from _new_mesh_steps(name, gaussians, table)
    mesh = mesh_ref.get() if mesh_ref is not None else None
    collection = target.get()
    if mesh is None or collection is None:
        log.warning("Gaussian object '%s' not created: its mesh or collection '%s' was deleted meanwhile",
                    name, target.name)
        if mesh is not None:
            bpy.data.meshes.remove(mesh)
        return None
    obj = bpy.data.objects.new(name, mesh)
    _tag(obj, gaussians, color_space)
    collection.objects.link(obj)
    modifier = obj.modifiers.new(PROXY_MODIFIER_NAME, "NODES")
    modifier.node_group = ensure_proxy_node_group()
    return obj


def create_gaussian_object(name: str, gaussians: dict, collection=None, color_space: str = "linear"):
    """Create one mesh object holding a set of Gaussians, with the display proxy.

    Args:
        name: object and mesh name.
        gaussians: the PROTOCOL.md Gaussians map (``means [N, 3]``, ``quats [N, 4]``, ``scales
            [N, 3]``, ``opacities [N]``, ``sh0 [N, 3]``, ``shN [N, K, 3]``, float32; extras).
        collection: collection to link into (default: the context's active collection).
        color_space: "linear" or "srgb", the space of the training images; stored on the object.

    Returns:
        The new ``bpy.types.Object``.

    Raises:
        FormatError: the map does not follow the data contract.
        ValueError: unknown colour space.
    """
    return run_steps(create_gaussian_object_steps(name, gaussians, collection, color_space))


def update_gaussian_object_steps(obj, gaussians: dict, color_space: str | None = None):
    """Stepwise :func:`update_gaussian_object`: a generator doing one bounded piece per step.

    Same count and attribute set: the attributes are overwritten in place, one per step.
    Otherwise a new mesh is built step by step and swapped in at the end, so the object shows
    the old Gaussians until the new ones are complete. The map and the colour space are checked
    now; if the object is deleted between steps the generator ends (logged), and if its mesh
    changes shape meanwhile a new mesh is built instead.

    Args:
        obj: a Gaussian object (from :func:`create_gaussian_object`).
        gaussians: the new Gaussians map.
        color_space: new colour space, or None to keep the object's.

    Returns:
        A generator yielding what each step did and returning the object, or None when it was
        deleted meanwhile.

    Raises:
        FormatError: the map does not follow the data contract.
        ValueError: unknown colour space.
    """
    if color_space is not None:
        _check_color_space(color_space)
    n, k = check_gaussians(gaussians)
    _warn_unsupported(obj.name, gaussians)
    return _update_steps(_IDRef(obj, "objects"), gaussians, n, k, color_space)


def _update_steps(obj_ref: _IDRef, gaussians: dict, n: int, k: int, color_space: str | None):
    import bpy

    table = yield from _attribute_table_steps(gaussians, n, k)
    obj = obj_ref.get()
    written = obj is not None and _same_layout(obj.data, n, table)
    if written:
        written = yield from _write_in_place_steps(obj_ref, n, gaussians, table)
    obj = obj_ref.get()
    if not written:
        if obj is None:
            log.warning("Gaussian object '%s' was deleted before its update was written", obj_ref.name)
            return None
        mesh_ref = yield from _new_mesh_steps(obj.data.name, gaussians, table)
        obj = obj_ref.get()
        mesh = mesh_ref.get() if mesh_ref is not None else None
        if obj is None or mesh is None:
            log.warning("Gaussian object '%s' was deleted before its update was written", obj_ref.name)
            if mesh is not None:
                bpy.data.meshes.remove(mesh)
            return None
        old = obj.data
        obj.data = mesh
        if old.users == 0:
            # Keep the mesh's name: the new one took "<name>.001" while the old one existed.
            old_name = old.name
            bpy.data.meshes.remove(old)
            mesh.name = old_name
    _tag(obj, gaussians, color_space or obj.get(PROP_COLOR_SPACE, "linear"))
    return obj


def update_gaussian_object(obj, gaussians: dict, color_space: str | None = None) -> None:
    """Replace an object's Gaussians (e.g. a live partial result); the count may change.

    Same count and attribute set: the attributes are overwritten in place. Otherwise a new
    mesh replaces the old one (the modifier and object stay), which is cheaper than clearing.

    Args:
        obj: a Gaussian object (from :func:`create_gaussian_object`).
        gaussians: the new Gaussians map.
        color_space: new colour space, or None to keep the object's.

    Raises:
        FormatError: the map does not follow the data contract.
        ValueError: unknown colour space.
    """
    run_steps(update_gaussian_object_steps(obj, gaussians, color_space))


# ---------------------------------------------------------------- read

def is_gaussian_object(obj) -> bool:
    """True for a mesh object that carries the Gaussian attributes."""
    if obj is None or obj.type != "MESH":
        return False
    attrs = obj.data.attributes
    return all(attrs.get(name) is not None for name in (layout.ROTATION, layout.SCALE, layout.OPACITY, layout.SH0))


def read_gaussians(obj) -> dict:
    """Read an object's Gaussians back, bit-exact to what was stored.

    Args:
        obj: a Gaussian object. Its original mesh is read (modifiers and the object's transform
            are not applied).

    Returns:
        The Gaussians map (float32 C-contiguous; extras in their stored dtype).

    Raises:
        ValueError: the object is not a mesh or lacks a Gaussian attribute (named).
    """
    if obj is None or obj.type != "MESH":
        raise ValueError(f"'{getattr(obj, 'name', obj)}' is not a mesh object holding Gaussians")
    mesh = obj.data
    n = len(mesh.vertices)
    present = {a.name: a.data_type for a in mesh.attributes if a.domain == "POINT"}
    try:
        specs = layout.attribute_specs(n, present)
    except KeyError as exc:
        raise ValueError(f"object '{obj.name}' does not hold Gaussians: {exc.args[0]}") from exc
    positions = np.empty(n * 3, np.float32)
    if n:
        mesh.attributes[layout.POSITION].data.foreach_get("vector", positions)
    for name, (key, buf, _) in specs.items():
        mesh.attributes[name].data.foreach_get(key, buf)
    return layout.gaussians_from_attributes(positions, specs)
