"""Gaussians -> mesh in one click: the ``splat.to_mesh`` operator and its result importer.

:class:`NSTUDIO_OT_splat_to_mesh` sends the active Gaussian object's Gaussians (in the world
frame) to the server's ``splat.to_mesh``; when the result arrives, :func:`on_to_mesh_result`
builds a mesh object "<object> Mesh" from the Mesh map: vertices and faces by ``foreach_set``
from flat buffers (no Python loop per vertex), the vertex colours as a FLOAT_COLOR point
attribute "Color" (linear, as the Gaussians' colours), and a material whose Base Color reads
that attribute, so the colours show in Material Preview and renders.
"""

from __future__ import annotations

import logging

import bpy
import numpy as np
from bpy.props import IntProperty

from ..core import handlers

log = logging.getLogger(__name__)

PIPELINE = "splat.to_mesh"
COLOR_ATTRIBUTE = "Color"
MATERIAL_NAME = "NS Vertex Colour"
PROP_SOURCE = "nstudio_mesh_source"


def ensure_vertex_colour_material():
    """The shared material that shows the "Color" point attribute as Base Color."""
    mat = bpy.data.materials.get(MATERIAL_NAME)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(MATERIAL_NAME)
    mat.use_nodes = True
    tree = mat.node_tree
    bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
    attr = tree.nodes.new("ShaderNodeAttribute")
    attr.attribute_type = "GEOMETRY"
    attr.attribute_name = COLOR_ATTRIBUTE
    attr.location = (bsdf.location.x - 300, bsdf.location.y)
    tree.links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def create_mesh_object(name: str, mesh: dict, collection=None):
    """Make a mesh object from a Mesh map.

    Args:
        name: object (and mesh data) name.
        mesh: ``vertices [V, 3] <f4`` world metres, ``faces [F, 3] <i4``, optional
            ``colors [V, 3|4] <f4`` linear.
        collection: where to link it (default: the context's collection).

    Returns:
        The new object (identity transform: the vertices are in the world frame).
    """
    verts = np.ascontiguousarray(mesh["vertices"], np.float32).reshape(-1, 3)
    faces = np.ascontiguousarray(mesh["faces"], np.int32).reshape(-1, 3)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(verts)):
        raise ValueError(f"mesh faces index vertices outside 0..{len(verts) - 1}")
    data = bpy.data.meshes.new(name)
    data.vertices.add(len(verts))
    data.vertices.foreach_set("co", verts.reshape(-1))
    data.loops.add(3 * len(faces))
    data.loops.foreach_set("vertex_index", faces.reshape(-1))
    data.polygons.add(len(faces))
    data.polygons.foreach_set("loop_start", np.arange(0, 3 * len(faces), 3, dtype=np.int32))
    data.polygons.foreach_set("loop_total", np.full(len(faces), 3, np.int32))
    colours = mesh.get("colors")
    if colours is not None and len(colours) == len(verts):
        c = np.asarray(colours, np.float32)
        rgba = np.ones((len(verts), 4), np.float32)
        rgba[:, : c.shape[1]] = c
        attr = data.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
        attr.data.foreach_set("color", rgba.reshape(-1))
        data.color_attributes.active_color = attr
        data.color_attributes.render_color_index = data.color_attributes.active_color_index
    data.update()
    data.validate(clean_customdata=False)
    data.materials.append(ensure_vertex_colour_material())
    obj = bpy.data.objects.new(name, data)
    (collection or bpy.context.collection or bpy.context.scene.collection).objects.link(obj)
    return obj


def on_to_mesh_result(job, outputs: dict):
    """The ``splat.to_mesh`` result: a new mesh object named after the job's target."""
    name = job.target or "Splat Mesh"
    if len(outputs.get("faces", ())) == 0:
        log.warning("%s job %s: the surface is empty (nothing above the fusion's alpha)", PIPELINE, job.key)
        return None
    obj = create_mesh_object(name, outputs)
    obj[PROP_SOURCE] = name[: -len(" Mesh")] if name.endswith(" Mesh") else name
    log.info("%s: %d vertices, %d faces", obj.name, len(outputs["vertices"]), len(outputs["faces"]))
    return None


class NSTUDIO_OT_splat_to_mesh(bpy.types.Operator):
    """Turn the active Gaussian object into a coloured mesh on the server (splat.to_mesh)"""

    bl_idname = "nstudio.splat_to_mesh"
    bl_label = "Gaussians to Mesh"
    bl_options = {"REGISTER"}

    resolution: IntProperty(name="Resolution", default=128, min=16, max=512,
                            description="Voxels along the longest side of the Gaussians' bounds")
    target_faces: IntProperty(name="Target Faces", default=0, min=0,
                              description="Decimate to about this many faces (0: no decimation)")
    views: IntProperty(name="Views", default=24, min=4, max=512, description="Rendered views fused into the volume")

    @classmethod
    def poll(cls, context):
        from .importers.gaussians import is_gaussian_object

        return is_gaussian_object(context.active_object)

    def execute(self, context):
        from ..core import client as client_mod
        from ..core.gaussian_transform import transform_gaussians
        from . import session
        from .importers.gaussians import read_gaussians

        obj = context.active_object
        live = session.current()
        if live is None or not live.client.connected:
            self.report({"ERROR"}, "not connected to a Neural Studio server: press Connect in the Neural Studio panel")
            return {"CANCELLED"}
        info = ((live.client.welcome or {}).get("pipelines") or {}).get(PIPELINE)
        if info is None or not info.get("available", False):
            why = "the server has no such pipeline" if info is None else info.get("reason") or "unavailable"
            self.report({"ERROR"}, f"'{PIPELINE}' cannot run: {why}")
            return {"CANCELLED"}
        try:
            gaussians = transform_gaussians(read_gaussians(obj), np.array(obj.matrix_world, dtype=np.float64))
            params = {"resolution": self.resolution, "target_faces": self.target_faces, "views": self.views}
            live.submit(context.scene, PIPELINE, params=params, inputs={"gaussians": gaussians},
                        target=f"{obj.name} Mesh")
        except (ValueError, client_mod.ClientError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"meshing {len(gaussians['means']):,} Gaussians of '{obj.name}' on the server")
        return {"FINISHED"}


CLASSES = (NSTUDIO_OT_splat_to_mesh,)


def menu_object(self, context):
    self.layout.operator(NSTUDIO_OT_splat_to_mesh.bl_idname, text="Gaussians to Mesh (Neural Studio)")


def register() -> None:
    handlers.register_result_handler(PIPELINE, on_to_mesh_result)
    bpy.types.VIEW3D_MT_object.append(menu_object)


def unregister() -> None:
    bpy.types.VIEW3D_MT_object.remove(menu_object)
    handlers.unregister_result_handler(PIPELINE)
