"""`splat.to_mesh` on Gaussians trained from the demo scene, against Blender's own meshes.

The demo's path at a small size: the sample scene's subjects (torus, sphere, cone) captured in
Cycles from a hemisphere of views, `splat.reconstruct` on a real `nstudio serve`, the Gaussian
object meshed by the "Gaussians to Mesh" operator (`splat.to_mesh` on the same server), then
the mesh object compared with the subjects' evaluated meshes (world space, from bpy):

- Chamfer distance (mean of both directions, points sampled by area on both surfaces) <= 1 %
  of the subjects' extent. Only the part of space the capture observed is compared: a point
  counts when some captured view sees it, i.e. it projects into the view at or in front of the
  captured depth there (or onto an empty pixel). Surfaces no view saw (the undersides, the
  cone's base) cannot be reconstructed; anything the cameras saw, including wrong surfaces
  floating in front of the true ones, counts.
- Colours: each vertex's colour against the captured views' colour where they see it, and per
  object the chromaticity of the mean vertex colour against its material's texture colours (the
  white lights keep chromaticity, so lit texture and base colour agree there).
"""

from __future__ import annotations

import numpy as np
import pytest
from blender_support import tick_until
from scipy.spatial import cKDTree

from addon.blender import capture, session, splat_mesh, splat_train
from addon.core import camera, surface_points
from tools import demo, sample_scene

from .helpers import bpy

pytestmark = [pytest.mark.blender, pytest.mark.slow]

# Small but honest: 20 views of 128 px (8 Cycles samples), 200 training steps, 96 voxels. At
# 64 px the trained Gaussians themselves sit ~3 cm behind the true surfaces (centres 29 mm off,
# median; the capture's initial points are within 5 mm) and the Chamfer is ~1.5 %.
VIEWS, SIZE, STEPS, RESOLUTION = 20, 128, 200, 96


def _mesh_arrays(obj):
    """World vertices [V, 3], triangles [F, 3] and the "Color" attribute [V, 3] of a mesh object."""
    data = obj.data
    co = np.empty(3 * len(data.vertices), np.float32)
    data.vertices.foreach_get("co", co)
    data.calc_loop_triangles()
    tri = np.empty(3 * len(data.loop_triangles), np.int32)
    data.loop_triangles.foreach_get("vertices", tri)
    rgba = np.empty(4 * len(data.vertices), np.float32)
    data.color_attributes[splat_mesh.COLOR_ATTRIBUTE].data.foreach_get("color", rgba)
    mat = np.array(obj.matrix_world, np.float64)
    return co.reshape(-1, 3) @ mat[:3, :3].T + mat[:3, 3], tri.reshape(-1, 3), rgba.reshape(-1, 4)[:, :3]


def _observed(points, depths, cameras, tolerance):
    """Which points some captured view sees: inside the image, in front of the camera and not
    behind the captured surface there by more than `tolerance` metres (empty pixels: seen). [P]"""
    t, h, w = depths.shape
    pix, z = camera.project(points, cameras)
    col = np.floor(pix[..., 0]).astype(np.int64)
    row = np.floor(pix[..., 1]).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & (z > 0)
    d = depths[np.arange(t)[:, None], np.clip(row, 0, h - 1), np.clip(col, 0, w - 1)]
    return (inside & (z <= d + tolerance)).any(axis=0)


def _texture_colours(material):
    """The base colours a sample-scene material's texture mixes (checker colours or ramp stops). [K, 3]"""
    nodes = material.node_tree.nodes
    for node in nodes:
        if node.type == "TEX_CHECKER":
            return np.array([node.inputs["Color1"].default_value[:3], node.inputs["Color2"].default_value[:3]])
        if node.type == "VALTORGB":
            return np.array([e.color[:3] for e in node.color_ramp.elements])
    raise AssertionError(f"no texture colours in {material.name}")


def _chroma(rgb):
    rgb = np.asarray(rgb, np.float64)
    return rgb / np.maximum(rgb.sum(-1, keepdims=True), 1e-9)


@pytest.fixture(scope="module")
def scene_mesh(server, blender_addon):
    """Capture, train and mesh once for the module; returns numpy arrays only (each test then
    starts from a clean Blender file)."""
    live = demo.connect(server.endpoint, server, timeout_s=60.0)
    try:
        built = sample_scene.build_sample_scene(bpy.context.scene)
        subjects = built.subjects
        options = capture.CaptureOptions(layout="hemisphere", count=VIEWS, width=SIZE, height=SIZE, samples=8,
                                         points=4000)
        record, splats, captured = splat_train.start_reconstruction(
            bpy.context, subjects, options, steps=STEPS, sh_degree=0, test_every=0, max_gaussians=30_000,
            partial_every=0, preview_every=0, name="Scene Splats")
        tick_until(lambda: record.finished and not live.manager.busy, 900.0, "the reconstruction", server=server)
        assert record.state == "done", record.message

        bpy.context.view_layer.objects.active = splats
        assert bpy.ops.nstudio.splat_to_mesh(resolution=RESOLUTION) == {"FINISHED"}
        tick_until(lambda: "Scene Splats Mesh" in bpy.data.objects, 600.0, "the mesh object", server=server)
        verts, tris, colours = _mesh_arrays(bpy.data.objects["Scene Splats Mesh"])

        # Blender's own meshes (evaluated, world space), one sample set per subject.
        depsgraph = bpy.context.evaluated_depsgraph_get()
        truth, owner = [], []
        for k, obj in enumerate(subjects):
            v, f = capture.gather_triangles([obj], depsgraph)
            pts, _ = surface_points.sample_surface(v, f, 20_000, seed=k)
            truth.append(pts)
            owner.append(np.full(len(pts), k))
        return {"vertices": verts, "triangles": tris, "colours": colours, "truth": np.concatenate(truth),
                "owner": np.concatenate(owner), "captured": captured, "gaussians": len(splats.data.vertices),
                "names": [obj.name for obj in subjects],
                "textures": [_texture_colours(obj.active_material) for obj in subjects]}
    finally:
        session.disconnect()


def test_chamfer_to_blender_meshes_is_within_one_percent(scene_mesh):
    m = scene_mesh
    verts, tris, truth = m["vertices"], m["triangles"], m["truth"]
    assert len(tris) > 1000
    extent = float(np.max(truth.max(0) - truth.min(0)))
    samples, _ = surface_points.sample_surface(verts.astype(np.float64), tris, 60_000, seed=7)
    depths, cams = m["captured"]["depths"], m["captured"]["cameras"]
    tolerance = 0.01 * extent
    truth_seen = _observed(truth, depths, cams, tolerance)
    samples_seen = _observed(samples, depths, cams, tolerance)
    to_mesh_d = cKDTree(samples).query(truth[truth_seen])[0]
    to_truth_d = cKDTree(truth).query(samples[samples_seen])[0]
    chamfer = 0.5 * (to_mesh_d.mean() + to_truth_d.mean())
    print(f"\nChamfer {chamfer * 1000:.1f} mm = {chamfer / extent * 100:.3f} % of the extent {extent:.2f} m "
          f"(truth->mesh {to_mesh_d.mean() * 1000:.1f} mm over {truth_seen.mean():.0%} of the truth, "
          f"mesh->truth {to_truth_d.mean() * 1000:.1f} mm over {samples_seen.mean():.0%} of the mesh); "
          f"{m['gaussians']} Gaussians, {len(tris)} triangles")
    assert truth_seen.mean() > 0.6
    assert chamfer <= 0.01 * extent


def test_vertex_colours_match_the_capture_and_the_textures(scene_mesh):
    m = scene_mesh
    verts, colours, truth, owner = m["vertices"], m["colours"], m["truth"], m["owner"]
    captured = m["captured"]
    # per vertex against the captured views where they see it (checker edges mix colours in a pixel)
    seen_colour, seen = surface_points.colour_points(verts, captured["images"], captured["depths"],
                                                     captured["cameras"], 0.02)
    diff = np.abs(colours - seen_colour)[seen > 0].mean(1)
    print(f"\nvertex colour vs capture: median |d| {np.median(diff):.3f}, mean {diff.mean():.3f} "
          f"over {(seen > 0).mean():.0%} of the vertices")
    assert (seen > 0).mean() > 0.5 and np.median(diff) < 0.05 and diff.mean() < 0.08
    # per object: chromaticity of the mean vertex colour against the texture's colours
    nearest = owner[cKDTree(truth).query(verts)[1]]
    for k, name in enumerate(m["names"]):
        mine = _chroma(colours[nearest == k].mean(0))
        dist = [np.abs(mine - _chroma(tex.mean(0))).sum() for tex in m["textures"]]
        print(f"{name}: mesh chromaticity {np.round(mine, 3)}, texture {np.round(_chroma(m['textures'][k].mean(0)), 3)}")
        assert int(np.argmin(dist)) == k and dist[k] < 0.1, (name, dist)
