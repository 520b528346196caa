"""Splat shadows in final shots (bpy layer): Gaussians cast shadows onto meshes in Cycles and EEVEE.

In a final shot (:mod:`final_shot`) the server draws the Gaussians, knowing nothing of Blender's
lights, and Blender's renderer draws the meshes without ever seeing the Gaussians (their display
proxy is off in renders): nothing would shadow a mesh. So every Gaussian object of a final shot
gets a *shadow caster*, an object "<name> Shadow" in the collection "<scene> Splat Shadows":

- its Geometry Nodes modifier (:func:`gaussian_nodes.ensure_shadow_node_group`) reads the Gaussian
  object through Object Info (so it follows every move) and puts an ellipsoid, "Size" standard
  deviations out, on every Gaussian at least "Min Opacity" opaque;
- its ray visibility is shadow only: camera, diffuse, glossy, transmission and volume rays pass
  through it, so it darkens what it shadows and nothing else; the Depth pass the compositor
  compares and the Gaussians' own colour (rendered by the server) stay as they were;
- it lives in the main scene only: the companion splat scene, which links the Gaussians'
  collections, never evaluates it.

Per Gaussian object, ``obj.nstudio_splat_shadow`` holds the toggle (on by default) and the two
settings; the Gaussian Splats panel shows them. A caster is hidden from renders while its object's
toggle is off or the object itself is hidden from renders (kept in step by :func:`sync_scene`,
which the final-shot depsgraph handler calls).
"""

from __future__ import annotations

import bpy

from . import gaussian_nodes

CASTER_SUFFIX = " Shadow"
COLLECTION_SUFFIX = " Splat Shadows"
MODIFIER_NAME = "Gaussian Shadow"
#: Custom property marking a shadow caster object.
TAG = "nstudio_shadow_caster"
# Ray visibility of a caster: shadow rays only.
_RAYS_OFF = ("visible_camera", "visible_diffuse", "visible_glossy", "visible_transmission", "visible_volume_scatter")


def _on_settings_changed(settings, _context) -> None:
    obj = settings.id_data
    for scene in bpy.data.scenes:
        if _shadow_collection(scene) is not None and obj.name in scene.objects:
            ensure_caster(scene, obj)


class NSTUDIO_SplatShadowSettings(bpy.types.PropertyGroup):
    """Per Gaussian object: its shadows in final shots (``obj.nstudio_splat_shadow``)."""

    cast: bpy.props.BoolProperty(
        name="Cast Shadows",
        description="In final shots, these Gaussians cast shadows onto meshes (through a shadow-only "
                    "ellipsoid proxy that Blender's renderer sees)",
        default=True, update=_on_settings_changed,
    )
    min_opacity: bpy.props.FloatProperty(
        name="Min Opacity",
        description="Gaussians less opaque than this cast no shadow",
        default=gaussian_nodes.DEFAULT_MIN_OPACITY, min=0.0, max=1.0, subtype="FACTOR",
        update=_on_settings_changed,
    )
    size: bpy.props.FloatProperty(
        name="Shadow Size",
        description="Radius of each Gaussian's shadow ellipsoid in standard deviations (1.2: where an "
                    "opaque Gaussian's own alpha falls to one half)",
        default=gaussian_nodes.DEFAULT_SHADOW_SIZE, min=0.0, soft_max=3.0,
        update=_on_settings_changed,
    )


# ------------------------------------------------------------------ casters

def _shadow_collection(scene):
    coll = bpy.data.collections.get(scene.name + COLLECTION_SUFFIX)
    return coll if coll is not None and coll in scene.collection.children_recursive else None


def _ensure_shadow_collection(scene):
    coll = _shadow_collection(scene)
    if coll is None:
        coll = bpy.data.collections.new(scene.name + COLLECTION_SUFFIX)
        scene.collection.children.link(coll)
    return coll


def source_of(caster):
    """The Gaussian object a caster reads (None when it was deleted)."""
    modifier = caster.modifiers.get(MODIFIER_NAME)
    if modifier is None or modifier.node_group is None:
        return None
    return modifier.get(gaussian_nodes.input_ids(modifier).get(gaussian_nodes.INPUT_SOURCE, ""))


def casters(scene) -> list:
    """The shadow casters of a scene's final shot."""
    coll = _shadow_collection(scene)
    return [] if coll is None else [o for o in coll.objects if o.get(TAG)]


def ensure_caster(scene, obj):
    """The shadow caster of Gaussian object ``obj`` in ``scene`` (made if missing), in step with the
    object's settings.

    Args:
        scene: the final shot's main scene.
        obj: a Gaussian object in it.

    Returns:
        The caster object.
    """
    for caster in casters(scene):
        if source_of(caster) == obj:
            sync_caster(caster)
            return caster
    mesh = bpy.data.meshes.new(obj.name + CASTER_SUFFIX)
    caster = bpy.data.objects.new(obj.name + CASTER_SUFFIX, mesh)
    caster[TAG] = True
    for name in _RAYS_OFF:
        setattr(caster, name, False)
    caster.visible_shadow = True
    _ensure_shadow_collection(scene).objects.link(caster)
    modifier = caster.modifiers.new(MODIFIER_NAME, "NODES")
    modifier.node_group = gaussian_nodes.ensure_shadow_node_group()
    # Only renders need it: the viewport shows the Gaussians' display proxy instead.
    modifier.show_viewport = False
    modifier[gaussian_nodes.input_ids(modifier)[gaussian_nodes.INPUT_SOURCE]] = obj
    sync_caster(caster)
    return caster


def sync_caster(caster) -> bool:
    """Bring a caster in step with its Gaussian object (settings, render visibility).

    Returns:
        True when something changed (a depsgraph handler writes only then).
    """
    source = source_of(caster)
    settings = getattr(source, "nstudio_splat_shadow", None)
    hidden = source is None or settings is None or not settings.cast or source.hide_render
    changed = False
    if caster.hide_render != hidden:
        caster.hide_render = hidden
        changed = True
    if settings is not None:
        modifier = caster.modifiers[MODIFIER_NAME]
        ids = gaussian_nodes.input_ids(modifier)
        for name, value in ((gaussian_nodes.INPUT_MIN_OPACITY, settings.min_opacity),
                            (gaussian_nodes.INPUT_SIZE, settings.size)):
            if abs(modifier[ids[name]] - value) > 1e-7:
                modifier[ids[name]] = value
                changed = True
        if changed:
            caster.update_tag()
    return changed


def ensure_casters(scene, objects) -> list:
    """A caster for each Gaussian object of a final shot; casters of objects no longer there are removed.

    Args:
        scene: the final shot's main scene.
        objects: its Gaussian objects.

    Returns:
        The casters, in the order of ``objects``.
    """
    keep = [ensure_caster(scene, obj) for obj in objects]
    for caster in casters(scene):
        if caster not in keep:
            mesh = caster.data
            bpy.data.objects.remove(caster)
            if mesh.users == 0:
                bpy.data.meshes.remove(mesh)
    return keep


def sync_scene(scene) -> None:
    """Bring every caster of a scene in step with its Gaussian object (cheap; writes only changes)."""
    for caster in casters(scene):
        sync_caster(caster)


def draw_shadow_settings(layout, obj) -> None:
    """The shadow controls of a Gaussian object, for any panel."""
    settings = obj.nstudio_splat_shadow
    col = layout.column(align=True)
    col.prop(settings, "cast")
    sub = col.column(align=True)
    sub.active = settings.cast
    sub.prop(settings, "min_opacity")
    sub.prop(settings, "size")
    if not any(source_of(c) == obj for c in casters(bpy.context.scene)):
        col.label(text="Applies to final shots (Set Up Final Shot)", icon="INFO")


CLASSES = (NSTUDIO_SplatShadowSettings,)


def register() -> None:
    bpy.types.Object.nstudio_splat_shadow = bpy.props.PointerProperty(type=NSTUDIO_SplatShadowSettings)


def unregister() -> None:
    del bpy.types.Object.nstudio_splat_shadow
