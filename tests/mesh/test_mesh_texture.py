"""mesh.texture through run() with a real Job: projection round trips, occlusion, bad input.

Views are rendered in-process by our mesh rasterizer with a bilinear texture lookup (the
Blender-rendered round trip is in tests/blender/test_texture_blender.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import mesh_scenes
from addon.core import capture_layout
from addon.wire.schema import PipelineError, check_inputs, parse_params
from pipelines.base import Cancelled
from pipelines.mesh import texture

S = 128


def _psnr(a, b, mask):
    mse = ((a.astype(np.float64) - b.astype(np.float64))[mask] ** 2).mean()
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def sphere_scene():
    V, F, uvs = mesh_scenes.uv_sphere(24, 48)
    original = mesh_scenes.pattern(S)
    cams = capture_layout.capture_cameras([-1] * 3, [1] * 3, layout="sphere", count=8, width=160,
                                        height=160, lens_mm=40.0)
    images = mesh_scenes.render_textured(V, F, uvs, original, cams)
    return {"mesh": {"vertices": V, "faces": F, "uvs": uvs}, "cameras": cams, "images": images,
            "original": original}


def test_projection_reproduces_the_texture_and_streams_per_view(sphere_scene, make_job):
    job = make_job()
    inputs = {k: sphere_scene[k] for k in ("mesh", "cameras", "images")}
    check_inputs(texture.INPUTS, inputs)
    out = texture.run(inputs, texture.Params(texture_size=S), job)
    check_inputs(texture.OUTPUTS, out)
    tex = out["texture"]
    seen = tex[..., 3] == 255
    assert set(np.unique(tex[..., 3])) <= {0, 255}
    assert seen.mean() > 0.85  # 8 views around a sphere see nearly all of it (not the poles' caps)
    assert _psnr(tex[..., :3], sphere_scene["original"], seen) >= 30.0
    # Progress: the UV layout, then one report per view, each with that view as preview.
    project = [p for p in job.progress_log if p[0] == "project"]
    assert [(p[1], p[2]) for p in project] == [(i + 1, 8) for i in range(8)]
    for i, p in enumerate(project):
        np.testing.assert_array_equal(p[4], out["images"][i])
    assert out["images"].shape == (8, 160, 160, 3) and out["images"].dtype == np.uint8
    assert job.checks >= 9


def test_sRGB_uint8_views_bake_like_linear_float_views(sphere_scene, make_job):
    lin = sphere_scene["images"]
    u8 = texture.linear_to_srgb8(lin[..., :3])
    rgba = np.concatenate([u8, (lin[..., 3:] * 255).astype(np.uint8)], -1)
    a = texture.run({**{k: sphere_scene[k] for k in ("mesh", "cameras")}, "images": rgba},
                    texture.Params(texture_size=S), make_job())["texture"]
    seen = a[..., 3] == 255
    assert _psnr(a[..., :3], sphere_scene["original"], seen) >= 30.0


def test_occluded_texels_never_take_the_occluders_colour(make_job):
    # One mesh of two objects: a textured sphere (left half of the UV square) behind a pure red
    # box (right half), seen by three cameras from the box's side. The sphere's texels the box
    # hides in every view stay unseen, and no seen sphere texel turns red.
    import torch

    from nskernels.camera import Cameras
    from nskernels.mesh_raster import rasterize_mesh, rasterize_uv

    V, F, uvs = mesh_scenes.uv_sphere(24, 48)
    BV, BF, BU = mesh_scenes.box((-0.4, -2.2, -0.4), (0.4, -1.6, 0.4))
    uvs = uvs * np.float32([0.5, 1.0])
    BU = 0.5 + BU * np.float32(0.5)
    allV = np.concatenate([V, BV])
    allF = np.concatenate([F, BF + len(V)]).astype(np.int32)
    allU = np.concatenate([uvs, BU])
    original = mesh_scenes.pattern(S)
    colours = np.full((len(allF), 3), np.nan, np.float32)
    colours[len(F):] = (1.0, 0.0, 0.0)
    mats = []
    for x in (-0.4, 0.0, 0.4):
        eye = np.array([x, -4.5, 0.1])
        back = eye / np.linalg.norm(eye)
        right = np.cross([0, 0, 1.0], back)
        right /= np.linalg.norm(right)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, eye
        mats.append(m)
    cams = {"world_from_camera": np.array(mats, np.float32), "fx": 150.0, "fy": 150.0, "cx": 64.0,
            "cy": 64.0, "width": 128, "height": 128, "near": 0.1, "far": 100.0}
    images = mesh_scenes.render_textured(allV, allF, allU, original, cams, colours)
    assert (images[..., 0] > 0.9).mean() > 0.03  # the box is in view, red
    out = texture.run({"mesh": {"vertices": allV, "faces": allF, "uvs": allU}, "cameras": cams,
                       "images": images}, texture.Params(texture_size=S), make_job())
    tex = out["texture"]
    seen = tex[..., 3] == 255

    # The sphere's texels: the left half of the UV square.
    uvf = rasterize_uv(torch.tensor(V), torch.tensor(F), torch.tensor(uvs), S)
    on_sphere = (uvf.triangle >= 0).numpy()
    assert (seen & on_sphere).sum() > 1000
    err = np.abs(tex[..., :3].astype(int) - original.astype(int)).max(-1)
    assert err[seen & on_sphere].max() <= 20, "a seen sphere texel took colour from something else"
    # The box's texels were seen and are red (sRGB 255, 0, 0).
    box_uv = rasterize_uv(torch.tensor(BV), torch.tensor(BF), torch.tensor(BU), S)
    on_box = (box_uv.triangle >= 0).numpy() & seen
    assert on_box.sum() > 50 and (tex[on_box][:, 0] > 250).all() and (tex[on_box][:, 1] < 5).all()
    # Ground truth of what the box hides: sphere texels behind the box in all three views.
    P = uvf.position.numpy()[on_sphere]
    hidden = np.ones(len(P), bool)
    camset = Cameras.from_wire(cams)
    for i in range(3):
        box_depth = rasterize_mesh(torch.tensor(BV), torch.tensor(BF), camset[i]).depth.numpy()
        cv = camset.camera_from_world()[i].numpy()
        pc = P @ cv[:3, :3].T + cv[:3, 3]
        x = (150.0 * pc[:, 0] / pc[:, 2] + 64).astype(int).clip(0, 127)
        y = (150.0 * pc[:, 1] / pc[:, 2] + 64).astype(int).clip(0, 127)
        hidden &= box_depth[y, x] < pc[:, 2]
    assert hidden.sum() > 50
    assert not seen[on_sphere][hidden].any()


def _inputs(mesh=None, cams=None, images=None):
    V, F, uvs = mesh_scenes.uv_sphere(8, 16)
    cams = cams or capture_layout.capture_cameras([-1] * 3, [1] * 3, layout="ring", count=2, width=32,
                                                height=32, lens_mm=40.0)
    mesh = mesh or {"vertices": V, "faces": F, "uvs": uvs}
    images = images if images is not None else np.full((2, 32, 32, 3), 200, np.uint8)
    return {"mesh": mesh, "cameras": cams, "images": images}


def test_faces_without_uvs_are_refused_by_schema_and_check():
    inputs = _inputs()
    del inputs["mesh"]["uvs"]
    with pytest.raises(PipelineError, match="uvs") as err:
        check_inputs(texture.INPUTS, inputs)
    assert err.value.code == "invalid_input"
    with pytest.raises(PipelineError, match="uvs"):
        texture._check(inputs, texture.Params())


@pytest.mark.parametrize("change, field", [
    (lambda m: m.update(faces=np.array([[0, 1, 999]], np.int32), uvs=np.zeros((1, 3, 2), np.float32)), "faces"),
    (lambda m: m["vertices"].__setitem__((0, 0), np.nan), "vertices"),
    (lambda m: m.update(uvs=np.full_like(m["uvs"], np.inf)), "uvs"),
])
def test_bad_mesh_values_name_the_field(change, field, make_job):
    inputs = _inputs()
    inputs["mesh"] = {k: np.array(v) for k, v in inputs["mesh"].items()}
    change(inputs["mesh"])
    with pytest.raises(PipelineError) as err:
        texture.run(inputs, texture.Params(texture_size=32), make_job())
    assert err.value.code == "invalid_input" and field in err.value.field


def test_images_of_the_wrong_size_are_refused():
    inputs = _inputs(images=np.zeros((2, 16, 32, 3), np.uint8))
    with pytest.raises(PipelineError, match="32x32"):
        texture._check(inputs, texture.Params())


def test_degenerate_triangles_are_skipped(make_job):
    inputs = _inputs()
    mesh = inputs["mesh"]
    F = mesh["faces"]
    # Append triangles with repeated vertices and collapsed UVs: they cover nothing anywhere.
    junk = np.array([[0, 0, 1], [5, 5, 5]], np.int32)
    junk_uv = np.array([[[0.5, 0.5]] * 3, [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]], np.float32)
    bad = {"vertices": mesh["vertices"], "faces": np.concatenate([F, junk]),
           "uvs": np.concatenate([mesh["uvs"], junk_uv])}
    a = texture.run(inputs, texture.Params(texture_size=32), make_job())["texture"]
    b = texture.run({**inputs, "mesh": bad}, texture.Params(texture_size=32), make_job())["texture"]
    np.testing.assert_array_equal(a, b)


def test_all_degenerate_uvs_are_an_error(make_job):
    inputs = _inputs()
    inputs["mesh"] = {**inputs["mesh"], "uvs": np.zeros_like(inputs["mesh"]["uvs"])}
    with pytest.raises(PipelineError, match="covers no texel"):
        texture.run(inputs, texture.Params(texture_size=32), make_job())


def test_views_missing_the_mesh(make_job):
    inputs = _inputs()
    cams = dict(inputs["cameras"])
    away = np.array(cams["world_from_camera"])
    away[1, :3, 3] = away[1, :3, 3] * 10  # far behind... then turn it around to look away
    away[1, :3, :3] = away[1, :3, :3] @ np.diag([-1.0, 1.0, -1.0])
    cams["world_from_camera"] = away.astype(np.float32)
    job = make_job()
    out = texture.run({**inputs, "cameras": cams}, texture.Params(texture_size=32), job)
    assert out["texture"][..., 3].any()
    assert "not in this view" in job.progress_log[-1][3]
    # Every view looking away: a clear error, not an empty texture.
    both = dict(cams)
    both["world_from_camera"] = np.stack([away[1], away[1]]).astype(np.float32)
    with pytest.raises(PipelineError, match="no view sees the mesh"):
        texture.run({**inputs, "cameras": both}, texture.Params(texture_size=32), make_job())


def test_cancel_between_views(make_job):
    job = make_job(cancel_after=2)
    with pytest.raises(Cancelled):
        texture.run(_inputs(), texture.Params(texture_size=32), job)


def test_params_schema():
    p = parse_params(texture.Params, {"texture_size": 256})
    assert p.texture_size == 256
    with pytest.raises(PipelineError):
        parse_params(texture.Params, {"texture_size": 4})
    with pytest.raises(PipelineError, match="prompt"):
        texture._check({k: v for k, v in _inputs().items() if k != "images"}, texture.Params())
