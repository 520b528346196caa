"""Wire an image into a material's Base Color or a world's background, keeping the user's nodes.

One implementation for every feature that hands Blender an image to show (a generated image, a
baked texture): find or make the shader and the output, find or make *our* image node (marked
by ``NODE_NAME``), point it at the image and link it. Other nodes are left as they are.
"""

from __future__ import annotations

import bpy

#: The name of the image node we own in a node tree (ours to replace, the rest is the user's).
NODE_NAME = "nstudio_image"


def _feed(tree, image, shader: tuple, output: tuple, texture_idname: str, target: str) -> None:
    """shader/output: (node type, node idname, socket); target: the shader input the image feeds."""
    nodes, links = tree.nodes, tree.links
    shader_type, shader_idname, shader_socket = shader
    node = next((n for n in nodes if n.type == shader_type), None)
    if node is None:
        node = nodes.new(shader_idname)
        out_type, out_idname, out_socket = output
        out = next((n for n in nodes if n.type == out_type), None) or nodes.new(out_idname)
        links.new(node.outputs[shader_socket], out.inputs[out_socket])
    texture = nodes.get(NODE_NAME)
    if texture is None:
        texture = nodes.new(texture_idname)
        texture.name = NODE_NAME
        texture.label = "Neural Studio image"
        texture.location = (node.location.x - 320, node.location.y)
    texture.image = image
    links.new(texture.outputs["Color"], node.inputs[target])


def use_as_base_color(obj, image, material_name: str):
    """``image`` as the Base Color of ``obj``'s active material (made if it has none).

    Returns:
        The material.
    """
    material = obj.active_material
    if material is None:
        material = bpy.data.materials.new(material_name)
        obj.data.materials.append(material)
    if material.node_tree is None:   # Blender < 5 made materials without nodes
        material.use_nodes = True
    _feed(material.node_tree, image, ("BSDF_PRINCIPLED", "ShaderNodeBsdfPrincipled", "BSDF"),
          ("OUTPUT_MATERIAL", "ShaderNodeOutputMaterial", "Surface"), "ShaderNodeTexImage",
          "Base Color")
    return material


def use_as_world(scene, image, world_name: str = "Generated World"):
    """Light and show ``scene`` with ``image`` as its world (an Environment Texture into the
    Background). Returns the world."""
    world = scene.world
    if world is None:
        world = scene.world = bpy.data.worlds.new(world_name)
    if world.node_tree is None:   # Blender < 5 made worlds without nodes
        world.use_nodes = True
    _feed(world.node_tree, image, ("BACKGROUND", "ShaderNodeBackground", "Background"),
          ("OUTPUT_WORLD", "ShaderNodeOutputWorld", "Surface"), "ShaderNodeTexEnvironment", "Color")
    return world
