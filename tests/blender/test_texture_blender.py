"""mesh.texture against Blender itself: Cycles renders of a textured mesh baked back onto its
UVs, the mesh rasterizer against Blender's Z pass, and the Texture operator end to end over a
real loopback server."""

from __future__ import annotations

import bpy
import numpy as np
import pytest
import torch

from blender_support import tick_until

S = 128  # texture side


def _psnr(a, b, mask):
    mse = ((a.astype(np.float64) - b.astype(np.float64))[mask] ** 2).mean()
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def _pattern(size):
    """A smooth sRGB texture (row 0 on top) that is continuous on the sphere once its UVs are
    squeezed into the left half: periodic in x with period 0.5 (the seam) and constant along
    the top and bottom rows (the poles), where one surface point has many UVs."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    pole = np.sin(np.pi * yy)
    rgb = np.stack([0.45 + 0.25 * np.sin(2 * np.pi * 4 * xx) * pole, 0.55 + 0.3 * np.cos(2 * np.pi * 2 * yy),
                    0.5 + 0.3 * np.sin(2 * np.pi * (2 * xx + yy)) * pole], -1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def _emission_material(name, image=None, colour=None):
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:
        mat.use_nodes = True
    nt = mat.node_tree
    for n in list(nt.nodes):
        nt.nodes.remove(n)
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    em = nt.nodes.new("ShaderNodeEmission")
    nt.links.new(em.outputs["Emission"], out.inputs["Surface"])
    if image is not None:
        tx = nt.nodes.new("ShaderNodeTexImage")
        tx.image = image
        nt.links.new(tx.outputs["Color"], em.inputs["Color"])
    else:
        em.inputs["Color"].default_value = (*colour, 1.0)
    return mat


def _image(name, srgb8):
    size = srgb8.shape[0]
    img = bpy.data.images.new(name, size, size)
    px = np.concatenate([srgb8[::-1].astype(np.float32) / 255, np.ones((size, size, 1), np.float32)], -1)
    img.pixels.foreach_set(px.ravel())
    return img


@pytest.fixture(scope="module")
def rendered():
    """A sphere with an image texture (left half of the UVs) and a pure red box in front of it
    (right half), one object; 8 Cycles views of it, its Mesh map and the texture."""
    from addon.blender import capture
    from addon.blender import texture as blender_texture

    bpy.ops.wm.read_homefile(app_template="")
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    original = _pattern(S)
    bpy.ops.mesh.primitive_uv_sphere_add(segments=48, ring_count=24, radius=1.0)
    sphere = bpy.context.active_object
    sphere.data.materials.append(_emission_material("tex", image=_image("orig", original)))
    bpy.ops.mesh.primitive_cube_add(size=0.6, location=(0.0, -1.9, 0.2))
    cube = bpy.context.active_object
    cube.data.materials.append(_emission_material("red", colour=(1.0, 0.0, 0.0)))
    bpy.ops.object.select_all(action="DESELECT")
    cube.select_set(True)
    sphere.select_set(True)
    bpy.context.view_layer.objects.active = sphere
    bpy.ops.object.join()
    obj = bpy.context.active_object
    # UVs: the sphere's squeezed into the left half, the box's into the right half.
    me = obj.data
    mat_idx = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("material_index", mat_idx)
    starts = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("loop_start", starts)
    totals = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("loop_total", totals)
    loop_mat = np.repeat(mat_idx, totals)
    uv = np.empty(len(me.loops) * 2, np.float32)
    me.uv_layers.active.data.foreach_get("uv", uv)
    uv = uv.reshape(-1, 2)
    uv = np.where(loop_mat[:, None] == 0, uv * [0.5, 1.0], 0.5 + 0.5 * uv).astype(np.float32)
    me.uv_layers.active.data.foreach_set("uv", uv.ravel())
    me.update()  # Blender 4.x keeps evaluating the old UVs until the mesh is tagged
    # The image texture now spans the sphere's squeezed UVs: the expected texture is the image.
    scene = bpy.context.scene
    scene.cycles.filter_width = 0.01  # samples at pixel centres: no anti-aliasing blur
    cap = capture.capture([obj], capture.CaptureOptions(layout="sphere", count=8, width=192, height=192,
                                                        samples=4, points=0, engine="CYCLES"))
    mesh = blender_texture.mesh_wire(obj)
    on_sphere_faces = mat_idx  # per polygon; per triangle below via the loop triangles
    me.calc_loop_triangles()
    tri_poly = np.empty(len(me.loop_triangles), np.int32)
    me.loop_triangles.foreach_get("polygon_index", tri_poly)
    yield {"capture": cap, "mesh": mesh, "original": original, "box_tri": on_sphere_faces[tri_poly] == 1}
    bpy.ops.wm.read_homefile(app_template="")


def test_rasterizer_matches_blenders_z_pass(rendered):
    from nskernels.camera import Cameras
    from nskernels.mesh_raster import rasterize_mesh

    cap, mesh = rendered["capture"], rendered["mesh"]
    cams = Cameras.from_wire(cap["cameras"])
    V, F = torch.tensor(mesh["vertices"]), torch.tensor(mesh["faces"]).long()
    for i in range(len(cams)):
        ours = rasterize_mesh(V, F, cams[i]).depth.numpy()
        blender = cap["depths"][i]
        cover_o, cover_b = np.isfinite(ours), np.isfinite(blender)
        # Coverage: the same pixel centres (a centre exactly on the silhouette may go either way).
        assert (cover_o != cover_b).sum() <= 0.002 * cover_b.sum()
        both = cover_o & cover_b
        diff = np.abs(ours[both] - blender[both])
        # Depth: the same surface point at the pixel centre. The depth change per pixel is at
        # least ~1e-3 m here, so 2e-4 m of disagreement is well below a fifth of a pixel.
        assert np.median(diff) < 1e-5 and np.quantile(diff, 0.999) < 2e-4, (i, diff.max())
        gy, gx = np.gradient(np.where(both, blender, np.nan))
        slope = np.hypot(gx, gy)[both]
        ok = np.isfinite(slope) & (slope > 0)
        assert np.quantile(diff[ok] / slope[ok], 0.999) < 0.2  # sub-pixel, in pixels


def test_bake_reproduces_the_texture_and_never_the_occluder(rendered):
    from mesh_scenes import RecordingJob

    from pipelines.mesh import texture
    from nskernels.mesh_raster import rasterize_uv

    cap, mesh, original = rendered["capture"], rendered["mesh"], rendered["original"]
    job = RecordingJob()
    out = texture.run({"mesh": mesh, "cameras": cap["cameras"], "images": cap["images"]},
                      texture.Params(texture_size=S), job)
    tex = out["texture"]
    seen = tex[..., 3] == 255
    box = rendered["box_tri"]
    V, F, U = (torch.tensor(mesh[k]) for k in ("vertices", "faces", "uvs"))
    on_sphere = (rasterize_uv(V, F[~torch.tensor(box)].long(), U[~torch.tensor(box)], S).triangle >= 0).numpy()
    on_box = (rasterize_uv(V, F[torch.tensor(box)].long(), U[torch.tensor(box)], S).triangle >= 0).numpy()
    assert (seen & on_sphere).sum() > 0.8 * on_sphere.sum()
    assert _psnr(tex[..., :3], original, seen & on_sphere) >= 30.0
    # No seen sphere texel takes the box's red: all stay close to the original.
    err = np.abs(tex[..., :3].astype(int) - original.astype(int)).max(-1)
    assert err[seen & on_sphere].max() <= 25
    # The box was baked red.
    red = tex[seen & on_box]
    assert len(red) > 100 and (red[:, 0] > 245).all() and (red[:, 1:3] < 10).all()


def test_texture_operator_end_to_end(enabled_addon, shared_server):
    """Texture panel flow: a mesh without UVs, the colours of a render of another object."""
    from addon.blender import session
    from addon.blender import texture as blender_texture

    enabled_addon.endpoint = shared_server.endpoint
    assert bpy.ops.nstudio.connect() == {"FINISHED"}
    tick_until(lambda: session.current().client.connected, 30, "the welcome", server=shared_server)
    assert session.current().client.welcome["pipelines"]["mesh.texture"]["available"] is True

    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    bpy.ops.mesh.primitive_uv_sphere_add(segments=32, ring_count=16, radius=1.0)
    source = bpy.context.active_object
    source.data.materials.append(_emission_material("src", image=_image("src", _pattern(64))))
    bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=3, radius=1.0)
    target = bpy.context.active_object
    target.data.uv_layers.remove(target.data.uv_layers[0])  # no UV map: Smart UV Project makes one
    source.hide_render = False
    mat = bpy.data.materials.new("user")
    if mat.node_tree is None:
        mat.use_nodes = True
    user_node = mat.node_tree.nodes.new("ShaderNodeValue")
    user_node.name = "user's node"
    target.data.materials.append(mat)

    settings = bpy.context.scene.nstudio_texture
    settings.source, settings.source_object = "RENDER", source
    settings.cameras, settings.count, settings.elevation, settings.resolution = "RING", 4, 15.0, 96
    settings.texture_size = 128
    bpy.context.scene.render.engine = "CYCLES"  # the views are rendered with the scene's engine
    bpy.context.scene.cycles.samples = 4
    bpy.ops.object.select_all(action="DESELECT")
    target.select_set(True)
    bpy.context.view_layer.objects.active = target
    assert bpy.ops.nstudio.texture_mesh() == {"FINISHED"}
    assert len(target.data.uv_layers) == 1
    image_name = f"{target.name}_nstudio_texture"
    tick_until(lambda: bpy.data.images.get(image_name), 120, "the texture applied", server=shared_server)
    image = bpy.data.images[image_name]
    assert tuple(image.size) == (128, 128)
    assert 0.2 < image[blender_texture.PROP_SEEN] <= 1.0
    nodes = target.active_material.node_tree.nodes
    assert "user's node" in nodes  # the user's nodes are kept
    from addon.blender import image_nodes

    tex_node = nodes[image_nodes.NODE_NAME]
    assert tex_node.image == image
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Base Color"].links[0].from_node == tex_node
    px = np.empty(128 * 128 * 4, np.float32)
    image.pixels.foreach_get(px)
    rgb = px.reshape(-1, 4)[:, :3]
    assert rgb.std(axis=0).min() > 0.02  # the pattern came through, not a flat colour


def test_photos_come_from_the_cameras_background_images(enabled_addon):
    """PHOTOS source: each selected camera's background image is its view, its own lens."""
    from mathutils import Matrix

    from addon.blender import texture as blender_texture
    from addon.core import capture_layout

    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    bpy.ops.mesh.primitive_uv_sphere_add(segments=16, ring_count=8, radius=1.0)
    mesh_obj = bpy.context.active_object
    cams = capture_layout.capture_cameras([-1] * 3, [1] * 3, layout="ring", count=2, width=40,
                                        height=24, lens_mm=35.0)
    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    camera_objs = []
    for i in range(2):
        data = bpy.data.cameras.new(f"cam{i}")
        data.lens, data.sensor_width, data.sensor_fit = 35.0, 36.0, "AUTO"
        obj = bpy.data.objects.new(f"cam{i}", data)
        obj.matrix_world = Matrix(cams["world_from_camera"][i].astype(np.float64).tolist())
        bpy.context.scene.collection.objects.link(obj)
        img = bpy.data.images.new(f"photo{i}", 40, 24)
        rgba = np.concatenate([photos[i][::-1] / 255.0, np.ones((24, 40, 1))], -1).astype(np.float32)
        img.pixels.foreach_set(rgba.ravel())
        bg = data.background_images.new()
        bg.image = img
        camera_objs.append(obj)
    got_cams, images = blender_texture.photo_views(camera_objs)
    np.testing.assert_array_equal(images, photos)
    np.testing.assert_allclose(got_cams["world_from_camera"], cams["world_from_camera"], atol=1e-5)
    np.testing.assert_allclose(np.broadcast_to(got_cams["fx"], (2,)), float(cams["fx"]), rtol=1e-5)
    assert (got_cams["width"], got_cams["height"]) == (40, 24)

    settings = bpy.context.scene.nstudio_texture
    settings.source = "PHOTOS"
    for o in camera_objs:
        o.select_set(True)
    bpy.context.view_layer.objects.active = mesh_obj
    params, inputs, target = blender_texture.gather(bpy.context, settings)
    assert target == mesh_obj and inputs["images"].shape == (2, 24, 40, 3)
    # A camera without a photo is named.
    camera_objs[1].data.background_images.clear()
    with pytest.raises(ValueError, match="cam1"):
        blender_texture.photo_views(camera_objs)
