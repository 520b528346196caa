"""Blender version differences, one function per concern (bpy layer).

The add-on supports Blender 4.2 LTS through 5.x. Every ``bpy.app.version`` branch in the add-on
lives here; feature code calls these functions and never checks the version itself.

Concerns:

- compositor (final shot): 5.0 composites with a ``CompositorNodeTree`` node group assigned to
  ``Scene.compositing_node_group`` and ending in a ``NodeGroupOutput``; its math and mix nodes are
  the shared ``ShaderNodeMath`` / ``ShaderNodeMix``, and Alpha Over has named Background /
  Foreground / Straight Alpha inputs. 4.x has one embedded tree per scene (``Scene.use_nodes``,
  ``Scene.node_tree``) ending in a ``CompositorNodeComposite``, with ``CompositorNodeMath``,
  ``CompositorNodeMixRGB`` and an Alpha Over whose inputs are (Fac, Image, Image).
- node trees of materials and worlds: always present in 5.0; 4.x needs ``use_nodes = True``.
- animation: 4.4 introduced slotted actions, 4.5 the channelbag helpers in
  ``bpy_extras.anim_utils``; 5.0 removed ``Action.fcurves``, the only API of 4.2/4.3 (and still
  working in 4.4).
- render output: 5.0 chooses multilayer EXR through ``ImageFormatSettings.media_type`` first.
- File Output compositor node: 5.0 has ``directory`` / ``file_name`` / ``file_output_items`` and
  writes ``<file_name><item>.exr``; 4.x has ``base_path`` / ``file_slots`` and appends the frame
  number (``<slot>0001.exr``). Render Layers outputs: 5.0's "Object Index" is 4.x's "IndexOB".
- Geometry Nodes: Vector Math "POWER" exists only from 4.5, so the proxy uses per-component
  math (no branch needed; noted here so nobody reintroduces it).

Importing this module does no work.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: Oldest Blender the extension supports (blender_manifest.toml's blender_version_min).
MIN_VERSION = (4, 2, 0)


def version() -> tuple[int, int, int]:
    """The running Blender's version, e.g. (4, 2, 0)."""
    import bpy

    return tuple(bpy.app.version)


def at_least(*wanted: int) -> bool:
    """True when the running Blender is at least ``wanted`` (e.g. ``at_least(4, 4)``)."""
    return version()[:len(wanted)] >= tuple(wanted)


def version_string(v: tuple[int, ...] | None = None) -> str:
    """"4.2.0" for (4, 2, 0) (default: the running Blender)."""
    return ".".join(str(x) for x in (v or version()))


# ------------------------------------------------------------------ compositor

def _group_compositor() -> bool:
    return at_least(5, 0)


def scene_compositor(scene):
    """The compositor node tree the scene renders through, or None when it has none."""
    if _group_compositor():
        return scene.compositing_node_group
    return scene.node_tree if scene.use_nodes else None


def compositor_tree(scene, name: str, tag: str):
    """A cleared compositor tree that the scene now renders through, and its image output.

    5.0: the node group ``name`` (created if missing), with one Image output socket and a
    ``NodeGroupOutput``, assigned as ``scene.compositing_node_group``; a previous group that is not
    tagged ``tag`` gets a fake user so it stays in the file. 4.x: the scene's own embedded tree
    (``use_nodes`` switched on) with a ``CompositorNodeComposite``; its previous nodes are replaced
    (4.x has one compositor per scene), with a warning when they were not ours.

    Args:
        scene: the scene.
        name: node group name (5.0 only; 4.x trees are not named).
        tag: custom property that marks trees this add-on built; set on the returned tree.

    Returns:
        (tree, image input socket of the output node).
    """
    import bpy

    if _group_compositor():
        old = scene.compositing_node_group
        if old is not None and not old.get(tag):
            old.use_fake_user = True
            log.warning("scene '%s': compositor node group '%s' replaced by '%s' (kept in the file)",
                        scene.name, old.name, name)
        tree = bpy.data.node_groups.get(name)
        if tree is None or tree.bl_idname != "CompositorNodeTree":
            tree = bpy.data.node_groups.new(name, "CompositorNodeTree")
        tree.nodes.clear()
        tree.interface.clear()
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        out = tree.nodes.new("NodeGroupOutput")
        scene.compositing_node_group = tree
    else:
        had_nodes = scene.use_nodes and scene.node_tree is not None and len(scene.node_tree.nodes) > 0
        scene.use_nodes = True
        tree = scene.node_tree
        if had_nodes and not tree.get(tag):
            log.warning("scene '%s': its compositor nodes were replaced by the final-shot compositor "
                        "(Blender %s has one compositor per scene)", scene.name, version_string())
        tree.nodes.clear()
        out = tree.nodes.new("CompositorNodeComposite")
        out.use_alpha = True
    tree[tag] = True
    out.location = (400, 100)
    return tree, out.inputs["Image"]


@contextmanager
def scratch_compositor(scene, name: str):
    """A compositor tree the scene renders through inside the ``with``; the user's is untouched after.

    5.0: a new node group assigned as ``scene.compositing_node_group``, then the previous one
    assigned back and the group removed. 4.x (one embedded tree per scene): the scene's own tree
    with ``use_nodes`` on; the nodes added inside are removed afterwards and ``use_nodes``
    restored, so the user's nodes stay as they were.

    Yields:
        The node tree to add nodes to.
    """
    import bpy

    if _group_compositor():
        saved = scene.compositing_node_group
        tree = bpy.data.node_groups.new(name, "CompositorNodeTree")
        scene.compositing_node_group = tree
        try:
            yield tree
        finally:
            scene.compositing_node_group = saved
            bpy.data.node_groups.remove(tree)
        return
    saved_use = scene.use_nodes
    scene.use_nodes = True
    tree = scene.node_tree
    before = {n.name for n in tree.nodes}
    try:
        yield tree
    finally:
        for node in [n for n in tree.nodes if n.name not in before]:
            tree.nodes.remove(node)
        scene.use_nodes = saved_use


def file_output(nodes, folder: str, prefix: str, items, frame: int):
    """A File Output node writing one 32-bit EXR per item into ``folder`` when ``frame`` renders.

    Args:
        nodes: the compositor tree's nodes.
        items: (name, socket type "FLOAT" | "VECTOR" | "RGBA") pairs.

    Returns:
        (node, {name: (input socket, path of the file it writes)}).
    """
    node = nodes.new("CompositorNodeOutputFile")
    out = {}
    if _group_compositor():
        node.directory = folder + os.sep
        node.file_name = prefix
        node.format.media_type = "IMAGE"
        node.format.file_format = "OPEN_EXR"
        node.format.color_depth = "32"
        for name, type_ in items:
            node.file_output_items.new(type_, name)
            out[name] = (node.inputs[name], os.path.join(folder, f"{prefix}{name}.exr"))
        return node, out
    node.base_path = folder + os.sep
    node.format.file_format = "OPEN_EXR"
    node.format.color_depth = "32"
    node.file_slots.clear()
    for name, _type in items:
        node.file_slots.new(prefix + name)
        out[name] = (node.inputs[prefix + name], os.path.join(folder, f"{prefix}{name}{int(frame):04d}.exr"))
    return node, out


#: Render Layers node outputs renamed in 5.0 (5.0 name -> 4.x name).
_RENDER_LAYER_SOCKETS_4X = {"Object Index": "IndexOB", "Material Index": "IndexMA"}


def render_layer_socket(name: str) -> str:
    """The Render Layers node's output named ``name`` (5.0's names) in the running Blender."""
    return name if _group_compositor() else _RENDER_LAYER_SOCKETS_4X.get(name, name)


def compositor_math(nodes, operation: str):
    """A compositor Math node. Inputs [0], [1]; output [0] ("Value")."""
    node = nodes.new("ShaderNodeMath" if _group_compositor() else "CompositorNodeMath")
    node.operation = operation
    return node


def compositor_alpha_over(nodes):
    """A compositor Alpha Over for premultiplied images.

    Returns:
        (node, background input, foreground input); the output is ``node.outputs["Image"]``.
    """
    node = nodes.new("CompositorNodeAlphaOver")
    if _group_compositor():
        node.inputs["Straight Alpha"].default_value = False
        return node, node.inputs["Background"], node.inputs["Foreground"]
    # 4.x: "Convert Premultiplied" off and premul 0 is the premultiplied operation.
    node.use_premultiply = False
    node.premul = 0.0
    return node, node.inputs[1], node.inputs[2]


def compositor_mix(nodes):
    """A compositor colour mix ``A * (1 - factor) + B * factor``.

    Returns:
        (node, factor input, A input, B input, result output).
    """
    if _group_compositor():
        node = nodes.new("ShaderNodeMix")
        node.data_type = "RGBA"
        # ShaderNodeMix has one socket per data type under the same name; take the RGBA ones.
        return (node, _socket(node.inputs, "Factor", "VALUE"), _socket(node.inputs, "A", "RGBA"),
                _socket(node.inputs, "B", "RGBA"), _socket(node.outputs, "Result", "RGBA"))
    node = nodes.new("CompositorNodeMixRGB")
    node.blend_type = "MIX"
    return node, node.inputs[0], node.inputs[1], node.inputs[2], node.outputs["Image"]


def _socket(sockets, name: str, type_: str):
    for sock in sockets:
        if sock.name == name and sock.type == type_:
            return sock
    raise KeyError(f"no {type_} socket '{name}'")


# ------------------------------------------------------------------ shader node trees

def node_tree(id_data):
    """The shader node tree of a material or world (4.x: switches ``use_nodes`` on first)."""
    if not at_least(5, 0) and not id_data.use_nodes:
        id_data.use_nodes = True
    return id_data.node_tree


# ------------------------------------------------------------------ animation

def _slotted_actions() -> bool:
    # anim_utils' channelbag helpers (action_ensure_channelbag_for_slot,
    # animdata_get_channelbag_for_assigned_slot) arrived in 4.5; before that the legacy
    # Action.fcurves (removed in 5.0) works, on the action's first slot from 4.4.
    return at_least(4, 5)


class ActionChannels:
    """Where new fcurves of one animated ID go: a channelbag (4.5+) or the action itself (4.2-4.4)."""

    def __init__(self, container, anim=None):
        self._container = container
        self._anim = anim  # the AnimData the legacy path must give the new slot to (4.4)

    @property
    def fcurves(self):
        """The fcurve collection."""
        return self._container.fcurves

    def new_fcurve(self, data_path: str, index: int, group: str):
        """A new fcurve for ``data_path[index]`` in channel group ``group``."""
        if _slotted_actions():
            return self._container.fcurves.new(data_path, index=index, group_name=group)
        fcurve = self._container.fcurves.new(data_path, index=index, action_group=group)
        # 4.4: the legacy call creates a slot on an action assigned while it had none; the
        # AnimData does not pick it up by itself.
        if at_least(4, 4) and self._anim.action_slot is None:
            self._anim.action_slot = self._container.slots[0]
        return fcurve


def new_action(id_data, name: str, id_type: str) -> ActionChannels:
    """A new action ``name`` assigned to ``id_data``; where its fcurves go.

    Args:
        id_data: the animated ID (object, camera data, ...).
        name: action name.
        id_type: the ID type of the slot, e.g. "OBJECT", "CAMERA" (4.5+ only).
    """
    import bpy

    action = bpy.data.actions.new(name)
    anim = id_data.animation_data_create()
    anim.action = action
    if not _slotted_actions():
        return ActionChannels(action, anim)
    from bpy_extras import anim_utils

    slot = anim.action_slot
    if slot is None:
        slot = action.slots.new(id_type=id_type, name=id_data.name)
        anim.action_slot = slot
    return ActionChannels(anim_utils.action_ensure_channelbag_for_slot(action, slot))


def fcurves_for(id_data) -> list:
    """The fcurves animating ``id_data`` through its assigned action (and slot); [] if none."""
    anim = id_data.animation_data
    if anim is None or anim.action is None:
        return []
    if not _slotted_actions():
        return list(anim.action.fcurves)
    from bpy_extras import anim_utils

    bag = anim_utils.animdata_get_channelbag_for_assigned_slot(anim)
    return [] if bag is None else list(bag.fcurves)


def action_fcurves(action) -> list:
    """Every fcurve of ``action`` (all its slots' channelbags on 4.5+; ``Action.fcurves`` before)."""
    if not _slotted_actions():
        return list(action.fcurves)
    return [fc for layer in action.layers for strip in layer.strips for bag in strip.channelbags
            for fc in bag.fcurves]


# ------------------------------------------------------------------ render output

def multilayer_exr_settings() -> list[tuple[str, object]]:
    """(ImageFormatSettings attribute, value) pairs, in order, for 32-bit uncompressed multilayer EXR."""
    pairs = [("file_format", "OPEN_EXR_MULTILAYER"), ("color_depth", "32"), ("exr_codec", "NONE")]
    if at_least(5, 0):
        # 5.0 lists OPEN_EXR_MULTILAYER only once the media type says multilayer.
        pairs.insert(0, ("media_type", "MULTI_LAYER_IMAGE"))
    return pairs


def push_down(id_data, action, name: str, frame_start: int):
    """Move ``id_data``'s active ``action`` onto a new NLA track as a strip (Blender's Push Down).

    4.4+: the strip plays the action's slot the ID was using (``NlaStrip.action_slot``); 4.2-4.3
    strips have no slots. The active action is cleared afterwards, so the strip is what plays
    and the user can blend and edit it in the NLA editor.

    Returns:
        The strip.
    """
    anim = id_data.animation_data
    slot = getattr(anim, "action_slot", None)
    track = anim.nla_tracks.new()
    track.name = name
    strip = track.strips.new(name, int(frame_start), action)
    if slot is not None and hasattr(strip, "action_slot"):
        strip.action_slot = slot
    anim.action = None
    return strip
