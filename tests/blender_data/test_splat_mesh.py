"""The splat.to_mesh result importer: a mesh object with vertex colours and a material showing them."""

import numpy as np
import pytest

from skimage.measure import marching_cubes

bpy = pytest.importorskip("bpy")


def _sphere_mesh(n=24):
    """A Mesh map from marching cubes of an analytic sphere SDF, red above z = 0, blue below."""
    ax = np.arange(n) - (n - 1) / 2
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
    tsdf = np.clip((np.sqrt(x * x + y * y + z * z) - n / 3) / 3, -1, 1)
    v, f, _, _ = marching_cubes(tsdf.astype(np.float32), 0.0)
    a, b, cc = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    if np.einsum("ij,ij->i", a - v.mean(0), np.cross(b - a, cc - a)).sum() < 0:
        f = f[:, ::-1]  # counter-clockwise from outside, as splat.to_mesh delivers
    zi = np.clip(np.round(v[:, 2]).astype(int), 0, n - 1)
    c = np.where((zi > (n - 1) / 2)[:, None], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    return {"vertices": (v * 0.1).astype(np.float32), "faces": np.ascontiguousarray(f, np.int32),
            "colors": c.astype(np.float32)}


class _Job:
    key = "k1"
    target = "Seal Mesh"


def test_result_becomes_a_coloured_mesh_object(blender_addon):
    from addon.blender import splat_mesh
    mesh = _sphere_mesh()
    splat_mesh.on_to_mesh_result(_Job(), mesh)
    obj = bpy.data.objects["Seal Mesh"]
    assert obj[splat_mesh.PROP_SOURCE] == "Seal"
    data = obj.data
    assert len(data.vertices) == len(mesh["vertices"]) and len(data.polygons) == len(mesh["faces"])
    co = np.empty(3 * len(data.vertices), np.float32)
    data.vertices.foreach_get("co", co)
    np.testing.assert_array_equal(co.reshape(-1, 3), mesh["vertices"])
    idx = np.empty(3 * len(data.polygons), np.int32)
    data.polygons.foreach_get("vertices", idx)
    np.testing.assert_array_equal(idx.reshape(-1, 3), mesh["faces"])
    attr = data.color_attributes[splat_mesh.COLOR_ATTRIBUTE]
    assert attr.domain == "POINT" and attr.data_type == "FLOAT_COLOR"
    rgba = np.empty(4 * len(data.vertices), np.float32)
    attr.data.foreach_get("color", rgba)
    np.testing.assert_allclose(rgba.reshape(-1, 4)[:, :3], mesh["colors"], atol=1e-6)
    # the material shows the attribute
    mat = data.materials[0]
    node = next(n for n in mat.node_tree.nodes if n.type == "ATTRIBUTE")
    assert node.attribute_name == splat_mesh.COLOR_ATTRIBUTE
    assert any(l.from_node == node and l.to_socket.name == "Base Color" for l in mat.node_tree.links)
    # normals point outwards (marching cubes faces were oriented)
    normals = np.empty(3 * len(data.polygons), np.float32)
    data.polygons.foreach_get("normal", normals)
    centres = np.empty(3 * len(data.polygons), np.float32)
    data.polygons.foreach_get("center", centres)
    outward = centres.reshape(-1, 3) - mesh["vertices"].mean(0)
    assert (np.sum(normals.reshape(-1, 3) * outward, axis=1) > 0).mean() > 0.99


def test_operator_needs_a_gaussian_object_and_a_server(blender_addon):
    from addon.blender.importers.gaussians import create_gaussian_object
    from tests.formats.conftest import make_gaussians

    assert not bpy.ops.nstudio.splat_to_mesh.poll()
    obj = create_gaussian_object("G", make_gaussians(10, 0), collection=bpy.context.scene.collection)
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.nstudio.splat_to_mesh.poll()
    with pytest.raises(RuntimeError, match="not connected to a Neural Studio server"):
        bpy.ops.nstudio.splat_to_mesh()
