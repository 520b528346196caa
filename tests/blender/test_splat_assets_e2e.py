"""One click from a Gaussian object to a coloured mesh object, through a real server."""

from __future__ import annotations

import numpy as np
from blender_support import tick_until

import bpy
from addon.blender import session

C0 = 0.28209479177387814
RED, BLUE = np.array([0.8, 0.2, 0.1]), np.array([0.1, 0.3, 0.9])


def sphere_gaussians(n):
    """Flat Gaussians tangent to the unit sphere, red above the equator, blue below (kept here:
    importing tests/pipelines from this folder would shadow the real `pipelines` package)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z * z)
    phi = np.pi * (1 + 5**0.5) * i
    d = np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)
    axis = np.cross([0.0, 0.0, 1.0], d)
    s = np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.arctan2(s[:, 0], d[:, 2])
    axis = np.where(s > 1e-9, axis / np.maximum(s, 1e-9), [1.0, 0.0, 0.0])
    quats = np.concatenate([np.cos(angle / 2)[:, None], axis * np.sin(angle / 2)[:, None]], 1)
    spacing = np.sqrt(4 * np.pi / n)
    colour = np.where(d[:, 2:3] > 0, RED, BLUE)
    return {"means": d.astype(np.float32), "quats": quats.astype(np.float32),
            "scales": np.tile(np.log([0.7 * spacing, 0.7 * spacing, 0.003]), (n, 1)).astype(np.float32),
            "opacities": np.full(n, 3.0, np.float32), "sh0": ((colour - 0.5) / C0).astype(np.float32),
            "shN": np.zeros((n, 0, 3), np.float32)}


def test_gaussians_to_mesh_operator(enabled_addon, shared_server):
    from addon.blender import splat_mesh
    from addon.blender.importers.gaussians import create_gaussian_object

    enabled_addon.endpoint = shared_server.endpoint
    assert bpy.ops.nstudio.connect() == {"FINISHED"}
    tick_until(lambda: session.current().client.connected, 30, "the welcome")
    g = sphere_gaussians(2500)
    obj = create_gaussian_object("Ball", g, collection=bpy.context.scene.collection)
    obj.location = (2.0, 0.0, 0.0)  # the mesh comes back in the world frame
    bpy.context.view_layer.objects.active = obj
    bpy.context.view_layer.update()
    assert bpy.ops.nstudio.splat_to_mesh(resolution=40, views=10) == {"FINISHED"}
    tick_until(lambda: "Ball Mesh" in bpy.data.objects, 120, "the mesh object")
    mesh_obj = bpy.data.objects["Ball Mesh"]
    data = mesh_obj.data
    co = np.empty(3 * len(data.vertices), np.float32)
    data.vertices.foreach_get("co", co)
    r = np.linalg.norm(co.reshape(-1, 3) - [2.0, 0.0, 0.0], axis=1)
    assert len(data.polygons) > 500 and np.abs(r - 1.0).mean() < 0.05
    rgba = np.empty(4 * len(data.vertices), np.float32)
    data.color_attributes[splat_mesh.COLOR_ATTRIBUTE].data.foreach_get("color", rgba)
    z = co.reshape(-1, 3)[:, 2]
    np.testing.assert_allclose(rgba.reshape(-1, 4)[z > 0.3, :3].mean(0), RED, atol=0.05)
    np.testing.assert_allclose(rgba.reshape(-1, 4)[z < -0.3, :3].mean(0), BLUE, atol=0.05)
    assert data.materials[0].name == splat_mesh.MATERIAL_NAME
