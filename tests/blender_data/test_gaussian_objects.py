"""Gaussian objects in real Blender: bit-exact storage, live updates, the display proxy."""

import numpy as np
import pytest

from addon import gaussians_layout as layout
from addon.importers import gaussians as gi
from tests.formats.conftest import make_gaussians

bpy = pytest.importorskip("bpy")

KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def assert_bit_equal(a, b, keys=KEYS):
    for key in keys:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].flags.c_contiguous, key
        assert np.array_equal(a[key].view(np.uint8), b[key].view(np.uint8)), key


def evaluated_geometry(obj):
    depsgraph = bpy.context.evaluated_depsgraph_get()
    depsgraph.update()
    return obj.evaluated_get(depsgraph).evaluated_geometry()


@pytest.mark.parametrize("k", [0, 3, 15])
def test_create_and_read_back_bit_exact(k):
    g = make_gaussians(50, k, seed=k)
    g["means"][0, 0] = np.nan
    g["quats"][1] = [0.0, 0.0, 0.0, 0.0]  # stored raw, never normalised
    g["labels"] = np.arange(50, dtype=np.int32)
    obj = gi.create_gaussian_object("Splats", g, color_space="srgb")
    assert obj.name in bpy.context.scene.objects
    assert obj[gi.PROP_COLOR_SPACE] == "srgb" and obj[gi.PROP_SH_DEGREE] == {0: 0, 3: 1, 15: 3}[k]
    assert len(obj.data.vertices) == 50 and gi.is_gaussian_object(obj)
    back = gi.read_gaussians(obj)
    assert_bit_equal(back, g, KEYS + ("labels",))


def test_empty_and_single():
    for n in (0, 1):
        g = make_gaussians(n, 3)
        assert_bit_equal(gi.read_gaussians(gi.create_gaussian_object(f"G{n}", g)), g)


def test_update_changes_count_and_degree():
    obj = gi.create_gaussian_object("Live", make_gaussians(30, 3, seed=1))
    old_mesh = obj.data.name
    g2 = make_gaussians(77, 15, seed=2)
    gi.update_gaussian_object(obj, g2)
    assert len(obj.data.vertices) == 77 and obj[gi.PROP_SH_DEGREE] == 3
    assert_bit_equal(gi.read_gaussians(obj), g2)
    assert old_mesh not in bpy.data.meshes or bpy.data.meshes[old_mesh] is obj.data
    assert obj.modifiers[gi.PROXY_MODIFIER_NAME].node_group.name == gi.PROXY_GROUP_NAME
    # same count and layout: written in place
    g3 = make_gaussians(77, 15, seed=3)
    mesh = obj.data
    gi.update_gaussian_object(obj, g3)
    assert obj.data == mesh
    assert_bit_equal(gi.read_gaussians(obj), g3)
    # smaller again
    g4 = make_gaussians(5, 0, seed=4)
    gi.update_gaussian_object(obj, g4)
    assert_bit_equal(gi.read_gaussians(obj), g4)
    assert not any(n.startswith(layout.SH_REST_PREFIX) for n in obj.data.attributes.keys())


def test_read_rejects_plain_mesh():
    mesh = bpy.data.meshes.new("plain")
    mesh.vertices.add(3)
    obj = bpy.data.objects.new("plain", mesh)
    with pytest.raises(ValueError, match="does not hold Gaussians: .*gs_rotation"):
        gi.read_gaussians(obj)


def quat_to_matrix(q):
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def test_proxy_instances_are_the_ellipsoids():
    n = 20
    g = make_gaussians(n, 3, seed=5)
    obj = gi.create_gaussian_object("Proxy", g)
    gi.set_proxy_inputs(obj, scale_factor=2.0)
    geo = evaluated_geometry(obj)
    inst = geo.instances_pointcloud()
    assert inst is not None and len(inst.points) == n
    assert geo.pointcloud is None
    refs = geo.instance_references()
    assert len(refs) == 1 and len(refs[0].mesh.vertices) == 42  # default ico-sphere: 2 subdivisions
    m = np.empty(n * 16, np.float32)
    inst.attributes["instance_transform"].data.foreach_get("value", m)
    m = m.reshape(n, 4, 4).transpose(0, 2, 1)  # Blender stores float4x4 column-major
    for i in range(n):
        expected = quat_to_matrix(g["quats"][i].astype(np.float64)) @ np.diag(2.0 * np.exp(g["scales"][i].astype(np.float64)))
        np.testing.assert_allclose(m[i, :3, :3], expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(m[i, :3, 3], g["means"][i], atol=1e-6)
    # the material reads the raw attributes on the instance domain
    assert {layout.SH0, layout.OPACITY} <= set(inst.attributes.keys())
    ng = bpy.data.node_groups[gi.PROXY_GROUP_NAME]
    assert any(nd.bl_idname == "GeometryNodeSetMaterial" and nd.inputs["Material"].default_value.name == gi.PROXY_MATERIAL_NAME
               for nd in ng.nodes)


def test_proxy_switches_to_points_above_threshold():
    n = 30
    g = make_gaussians(n, 0, seed=6)
    obj = gi.create_gaussian_object("Many", g)
    gi.set_proxy_inputs(obj, point_threshold=n - 1, scale_factor=1.5)
    geo = evaluated_geometry(obj)
    assert geo.instances_pointcloud() is None
    pc = geo.pointcloud
    assert pc is not None and len(pc.points) == n
    radius = np.empty(n, np.float32)
    pc.attributes["radius"].data.foreach_get("value", radius)
    np.testing.assert_allclose(radius, 1.5 * np.exp(g["scales"].astype(np.float64).mean(axis=1)), rtol=1e-5)
    gi.set_proxy_inputs(obj, subdivisions=1)
    assert len(evaluated_geometry(obj).instance_references()) == 0  # still points
    # at the threshold exactly: still ellipsoids
    gi.set_proxy_inputs(obj, point_threshold=n)
    geo = evaluated_geometry(obj)
    assert geo.pointcloud is None and len(geo.instances_pointcloud().points) == n


def test_proxy_built_once_per_file():
    a = gi.create_gaussian_object("A", make_gaussians(3, 0))
    b = gi.create_gaussian_object("B", make_gaussians(4, 0))
    assert a.modifiers[0].node_group == b.modifiers[0].node_group
    assert len([ng for ng in bpy.data.node_groups if ng.name.startswith(gi.PROXY_GROUP_NAME)]) == 1
    assert len([m for m in bpy.data.materials if m.name.startswith(gi.PROXY_MATERIAL_NAME)]) == 1
