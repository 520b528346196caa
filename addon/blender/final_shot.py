"""Final shots: Blender's render and the server-rendered Gaussians, composited by depth.

:func:`setup_final_shot` turns a scene into a final-shot scene:

1. a companion scene "<name> Splats" renders with the NSTUDIO_SPLATS engine
   (:mod:`render_engine`); it shares the main scene's camera, frame range and resolution (kept in
   sync by a depsgraph handler) and links the collections that hold the Gaussian objects;
2. the Gaussian objects' display proxy (a Geometry Nodes modifier) is switched off for renders,
   so Cycles/EEVEE/Workbench see only the proxy's loose vertices, which they never draw; the
   viewport keeps showing the proxy;
3. the main scene's compositor (5.0: a ``CompositorNodeTree`` in ``scene.compositing_node_group``;
   4.x: the scene's own node tree; :mod:`compat` builds either)
   takes both Render Layers (the companion's through the node's ``scene``) and, per pixel, lays
   the nearer image over the farther one: ``splat over mesh`` where the splat depth is smaller,
   else ``mesh over splat`` (premultiplied Alpha Over both ways, chosen by a depth comparison).
   Blender's Z Combine node is not used: with "Use Alpha" it mixes premultiplied colour by alpha
   again, which darkens semi-transparent splat edges;
4. the Depth pass is enabled on both view layers;
5. every Gaussian object gets a shadow-only caster in the main scene (:mod:`splat_shadow`), so the
   Gaussians shadow the meshes (per object toggle ``obj.nstudio_splat_shadow.cast``, on by default).

Then F12 and Render Animation on the main scene render the companion scene too (Blender renders
every scene a Render Layers node names) and write the composited frames.
"""

from __future__ import annotations

import logging

import bpy

from . import compat, splat_shadow
from .render_settings import ENGINE_ID

log = logging.getLogger(__name__)

COMPANION_SUFFIX = " Splats"
GROUP_PREFIX = "NS Final Shot "
COLLECTION_SUFFIX = " Gaussians"
TAG = "nstudio_final_shot"
# Settings the companion scene copies from its source scene (RenderSettings attributes).
_RENDER_SYNC = ("resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x", "pixel_aspect_y",
                "fps", "fps_base", "use_border", "use_crop_to_border",
                "border_min_x", "border_max_x", "border_min_y", "border_max_y")
_SCENE_SYNC = ("frame_start", "frame_end", "frame_step")


class FinalShotError(Exception):
    """The scene cannot be set up (message says why)."""


def _gaussian_objects(scene) -> list:
    from .importers import gaussians as gaussian_objects

    return [o for o in scene.objects if gaussian_objects.is_gaussian_object(o)]


def _main_view_layer(scene):
    for layer in scene.view_layers:
        if layer.use:
            return layer
    raise FinalShotError(f"scene '{scene.name}' has no view layer enabled for rendering")


def sync_companion(source, companion) -> bool:
    """Copy camera, frame range and resolution from the source scene. Returns True if anything changed."""
    changed = False
    if companion.camera != source.camera:
        companion.camera = source.camera
        changed = True
    # The camera must be in the companion's view layer: a scene camera outside it is not
    # evaluated by the companion's depsgraph, so its animation would be ignored.
    if source.camera is not None and source.camera.name not in companion.collection.all_objects:
        companion.collection.objects.link(source.camera)
        changed = True
    for name in _SCENE_SYNC:
        if getattr(companion, name) != getattr(source, name):
            setattr(companion, name, getattr(source, name))
            changed = True
    for name in _RENDER_SYNC:
        if getattr(companion.render, name) != getattr(source.render, name):
            setattr(companion.render, name, getattr(source.render, name))
            changed = True
    return changed


def _ensure_companion(scene):
    name = scene.name + COMPANION_SUFFIX
    companion = bpy.data.scenes.get(name)
    if companion is None:
        companion = bpy.data.scenes.new(name)
    companion.render.engine = ENGINE_ID
    companion.nstudio_final_shot.source_scene = scene.name
    companion.render.film_transparent = True
    sync_companion(scene, companion)
    return companion


def _gaussian_collections(scene, objects) -> list:
    """Collections holding the Gaussian objects; objects directly in the scene's master collection
    are moved into a new "<scene> Gaussians" collection (a master collection cannot be shared)."""
    loose = [o for o in objects if scene.collection in o.users_collection]
    if loose:
        coll_name = scene.name + COLLECTION_SUFFIX
        coll = bpy.data.collections.get(coll_name) or bpy.data.collections.new(coll_name)
        if coll.name not in scene.collection.children:
            scene.collection.children.link(coll)
        for obj in loose:
            if obj.name not in coll.objects:
                coll.objects.link(obj)
            scene.collection.objects.unlink(obj)
    colls = []
    for obj in objects:
        for coll in obj.users_collection:
            if coll != scene.collection and coll not in colls and _in_scene(scene, coll):
                colls.append(coll)
    return colls


def _in_scene(scene, coll) -> bool:
    return coll == scene.collection or coll in scene.collection.children_recursive


def _hide_proxies_in_render(objects) -> None:
    from . import gaussian_nodes

    for obj in objects:
        for mod in obj.modifiers:
            if mod.type == "NODES" and mod.node_group is not None and \
                    mod.node_group.name.startswith(gaussian_nodes.PROXY_GROUP_NAME):
                mod.show_render = False


def build_compositor(scene, companion, view_layer=None):
    """(Re)build the main scene's depth compositing node group and assign it.

    Args:
        scene: the main scene (rendered by Cycles, EEVEE or Workbench).
        companion: its splat scene.
        view_layer: the main scene's view layer to composite; default: the first one enabled.

    Returns:
        The compositor node tree (see :func:`compat.compositor_tree`).
    """
    view_layer = view_layer or _main_view_layer(scene)
    tree, image_out = compat.compositor_tree(scene, GROUP_PREFIX + scene.name, TAG)

    nodes, link = tree.nodes, tree.links.new
    main_rl = nodes.new("CompositorNodeRLayers")
    main_rl.name = main_rl.label = "Scene"
    main_rl.scene = scene
    main_rl.layer = view_layer.name
    main_rl.location = (-500, 200)
    splat_rl = nodes.new("CompositorNodeRLayers")
    splat_rl.name = splat_rl.label = "Splats"
    splat_rl.scene = companion
    splat_rl.layer = companion.view_layers[0].name
    splat_rl.location = (-500, -300)

    # 1 where the splat is nearer than the scene, else 0 (ties go to the scene, so empty splat
    # pixels, at 1e10 like the background, never cover it).
    nearer = compat.compositor_math(nodes, "LESS_THAN")
    nearer.name = nearer.label = "Splat Nearer"
    nearer.location = (-150, 400)
    link(splat_rl.outputs["Depth"], nearer.inputs[0])
    link(main_rl.outputs["Depth"], nearer.inputs[1])

    # Render passes are premultiplied; both Alpha Overs use the premultiplied operation.
    splat_over, background, foreground = compat.compositor_alpha_over(nodes)
    splat_over.name = splat_over.label = "Splat Over Scene"
    splat_over.location = (-150, 150)
    link(main_rl.outputs["Image"], background)
    link(splat_rl.outputs["Image"], foreground)
    scene_over, background, foreground = compat.compositor_alpha_over(nodes)
    scene_over.name = scene_over.label = "Scene Over Splat"
    scene_over.location = (-150, -150)
    link(splat_rl.outputs["Image"], background)
    link(main_rl.outputs["Image"], foreground)

    # Both Alpha Overs give the same alpha (a + b(1 - a) is symmetric), so mixing colour only
    # (4.x Mix keeps A's alpha) is exact.
    mix, factor, a, b, result = compat.compositor_mix(nodes)
    mix.name = mix.label = "By Depth"
    mix.location = (150, 100)
    link(nearer.outputs[0], factor)
    link(scene_over.outputs["Image"], a)
    link(splat_over.outputs["Image"], b)
    link(result, image_out)
    return tree


def setup_final_shot(scene, view_layer=None):
    """Make ``scene`` render its Gaussian objects through the server, composited by depth.

    Idempotent: running it again updates the companion scene, the linked collections and the
    compositor (e.g. after adding Gaussian objects).

    Args:
        scene: the main scene.
        view_layer: the main view layer to composite; default: the first one enabled.

    Returns:
        The companion scene "<name> Splats".

    Raises:
        FinalShotError: the scene is itself a companion scene, has no camera, or holds no
            Gaussian objects.
    """
    if scene.render.engine == ENGINE_ID:
        raise FinalShotError(f"scene '{scene.name}' renders with the splat engine itself; run this on the main scene")
    if scene.camera is None:
        raise FinalShotError(f"scene '{scene.name}' has no active camera")
    objects = _gaussian_objects(scene)
    if not objects:
        raise FinalShotError(f"scene '{scene.name}' has no Gaussian objects")

    # 1. The companion scene, with the collections holding the Gaussians.
    companion = _ensure_companion(scene)
    for coll in _gaussian_collections(scene, objects):
        if coll not in companion.collection.children_recursive:
            companion.collection.children.link(coll)

    # 2. Keep the main renderer off the display proxies.
    _hide_proxies_in_render(objects)

    # 3. Depth on both sides, and the compositor.
    view_layer = view_layer or _main_view_layer(scene)
    view_layer.use_pass_z = True
    for layer in companion.view_layers:
        layer.use_pass_z = True
    build_compositor(scene, companion, view_layer)
    scene.render.use_compositing = True

    # 4. Shadows of the Gaussians onto the meshes, in the main scene only.
    splat_shadow.ensure_casters(scene, objects)
    return companion


# ------------------------------------------------------------------ keep companions in sync

@bpy.app.handlers.persistent
def _sync_companions(*_args) -> None:
    for companion in bpy.data.scenes:
        settings = getattr(companion, "nstudio_final_shot", None)
        if settings is None or not settings.source_scene or companion.render.engine != ENGINE_ID:
            continue
        source = bpy.data.scenes.get(settings.source_scene)
        if source is not None and source != companion:
            sync_companion(source, companion)
            splat_shadow.sync_scene(source)


# ------------------------------------------------------------------ operator and UI

class NSTUDIO_OT_setup_final_shot(bpy.types.Operator):
    """Render this scene's Gaussians on the server and composite them with the scene by depth"""

    bl_idname = "nstudio.setup_final_shot"
    bl_label = "Set Up Final Shot"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.scene is not None

    def execute(self, context):
        try:
            companion = setup_final_shot(context.scene)
        except FinalShotError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Final shot ready: splats render in scene '{companion.name}'")
        return {"FINISHED"}


def draw_final_shot(layout, context) -> None:
    """Final-shot controls, for any panel: set-up button and the companion's settings."""
    scene = context.scene
    companion = bpy.data.scenes.get(scene.name + COMPANION_SUFFIX)
    layout.operator(NSTUDIO_OT_setup_final_shot.bl_idname, icon="RENDER_STILL")
    if companion is not None and hasattr(companion, "nstudio_final_shot"):
        col = layout.column()
        col.label(text=f"Splats: scene '{companion.name}'")
        col.prop(companion.nstudio_final_shot, "endpoint")
        col.prop(companion.nstudio_final_shot, "sh_degree")


class NSTUDIO_PT_final_shot(bpy.types.Panel):
    bl_label = "Neural Studio Final Shot"
    bl_idname = "NSTUDIO_PT_final_shot"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        draw_final_shot(self.layout, context)


CLASSES = (NSTUDIO_OT_setup_final_shot, NSTUDIO_PT_final_shot)


def register() -> None:
    bpy.app.handlers.depsgraph_update_post.append(_sync_companions)


def unregister() -> None:
    bpy.app.handlers.depsgraph_update_post.remove(_sync_companions)
