"""Gaussian objects in real Blender: bit-exact storage, live updates, the display proxy."""

import numpy as np
import pytest

from addon.core import gaussians_layout as layout
from addon.blender import gaussian_nodes
from addon.blender.importers import gaussians as gi
from tests.formats.conftest import make_gaussians

bpy = pytest.importorskip("bpy")

KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def assert_bit_equal(a, b, keys=KEYS):
    for key in keys:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].flags.c_contiguous, key
        assert np.array_equal(a[key].view(np.uint8), b[key].view(np.uint8)), key


def proxy_output(obj):
    """What the display proxy of ``obj`` evaluates to, through the depsgraph's instance list
    (the same on Blender 4.2 and 5.0; ``Object.evaluated_geometry`` only exists from 4.3).

    Returns:
        (instance matrices [I, 4, 4], vertex counts of the instanced meshes [I],
         radii of each evaluated point cloud of the proxy [list of [P]]).
    """
    depsgraph = bpy.context.evaluated_depsgraph_get()
    depsgraph.update()
    mats, verts, clouds = [], [], []
    for inst in depsgraph.object_instances:
        if not inst.is_instance or inst.parent is None or inst.parent.original != obj:
            continue
        if inst.object.type == "POINTCLOUD":
            # read now: evaluated data is freed as the iteration moves on
            radius = np.empty(len(inst.object.data.points), np.float32)
            inst.object.data.attributes["radius"].data.foreach_get("value", radius)
            clouds.append(radius)
        else:
            mats.append(np.array(inst.matrix_world, dtype=np.float64))
            verts.append(len(inst.object.data.vertices))
    return np.array(mats).reshape(-1, 4, 4), np.array(verts, dtype=np.int64), clouds


def instance_attribute_names(obj):
    """Attribute names on the proxy's instance domain, or None where Blender cannot list them (4.2)."""
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    if not hasattr(evaluated, "evaluated_geometry"):  # the GeometrySet API is 4.3+
        return None
    geometry = evaluated.evaluated_geometry()  # keep it alive while its point cloud is read
    return set(geometry.instances_pointcloud().attributes.keys())


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
    assert obj.modifiers[gaussian_nodes.PROXY_MODIFIER_NAME].node_group.name == gaussian_nodes.PROXY_GROUP_NAME
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
    gaussian_nodes.set_proxy_inputs(obj, scale_factor=2.0)
    m, verts, clouds = proxy_output(obj)
    assert len(m) == n and not clouds
    assert set(verts.tolist()) == {42}  # default ico-sphere: 2 subdivisions
    for i in range(n):  # the object is at the origin: instance world matrix = instance transform
        expected = quat_to_matrix(g["quats"][i].astype(np.float64)) @ np.diag(2.0 * np.exp(g["scales"][i].astype(np.float64)))
        # instances come in point order
        np.testing.assert_allclose(m[i, :3, :3], expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(m[i, :3, 3], g["means"][i], atol=1e-6)
    # the material reads the raw attributes on the instance domain
    names = instance_attribute_names(obj)
    assert names is None or {layout.SH0, layout.OPACITY} <= names
    ng = bpy.data.node_groups[gaussian_nodes.PROXY_GROUP_NAME]
    assert any(nd.bl_idname == "GeometryNodeSetMaterial" and nd.inputs["Material"].default_value.name == gaussian_nodes.PROXY_MATERIAL_NAME
               for nd in ng.nodes)


def test_proxy_switches_to_points_above_threshold():
    n = 30
    g = make_gaussians(n, 0, seed=6)
    obj = gi.create_gaussian_object("Many", g)
    gaussian_nodes.set_proxy_inputs(obj, point_threshold=n - 1, scale_factor=1.5)
    m, _, clouds = proxy_output(obj)
    assert len(m) == 0 and len(clouds) == 1
    radius = clouds[0]
    assert radius.shape == (n,)
    np.testing.assert_allclose(radius, 1.5 * np.exp(g["scales"].astype(np.float64).mean(axis=1)), rtol=1e-5)
    gaussian_nodes.set_proxy_inputs(obj, subdivisions=1)
    m, _, clouds = proxy_output(obj)
    assert len(m) == 0 and len(clouds) == 1  # still points
    # at the threshold exactly: still ellipsoids
    gaussian_nodes.set_proxy_inputs(obj, point_threshold=n)
    m, _, clouds = proxy_output(obj)
    assert len(m) == n and not clouds


def test_proxy_built_once_per_file():
    a = gi.create_gaussian_object("A", make_gaussians(3, 0))
    b = gi.create_gaussian_object("B", make_gaussians(4, 0))
    assert a.modifiers[0].node_group == b.modifiers[0].node_group
    assert len([ng for ng in bpy.data.node_groups if ng.name.startswith(gaussian_nodes.PROXY_GROUP_NAME)]) == 1
    assert len([m for m in bpy.data.materials if m.name.startswith(gaussian_nodes.PROXY_MATERIAL_NAME)]) == 1
