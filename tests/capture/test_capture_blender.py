"""addon.blender.capture with real bpy 5.0.1: generated views of a cube on a plane, the user's own cameras, steps."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon.core import camera as camera_model, capture_layout  # noqa: E402
from addon.blender.capture import CaptureOptions, capture, capture_steps  # noqa: E402

pytestmark = pytest.mark.blender

CUBE = (np.array([-0.5, -0.5, 0.0]), np.array([0.5, 0.5, 1.0]))
PLANE_HALF = 1.5


@pytest.fixture(autouse=True)
def clean_file():
    bpy.ops.wm.read_homefile(app_template="")
    yield
    bpy.ops.wm.read_homefile(app_template="")


def _build_scene():
    for obj in list(bpy.data.objects):
        if obj.type == "MESH":
            bpy.data.objects.remove(obj)
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.0, 0.0, 0.5))
    cube = bpy.context.active_object
    bpy.ops.mesh.primitive_plane_add(size=2 * PLANE_HALF, location=(0.0, 0.0, 0.0))
    plane = bpy.context.active_object
    return cube, plane


def _ray_depth(eye, direction):
    """Distance to the first hit of the cube (slab test) or the plane z = 0, along a unit ray."""
    with np.errstate(divide="ignore"):
        t1 = (CUBE[0] - eye) / direction
        t2 = (CUBE[1] - eye) / direction
    t_near = np.max(np.minimum(t1, t2))
    t_far = np.min(np.maximum(t1, t2))
    hits = []
    if t_near <= t_far and t_far > 0:
        hits.append(t_near)
    if direction[2] < 0:
        t = -eye[2] / direction[2]
        p = eye + t * direction
        if abs(p[0]) <= PLANE_HALF and abs(p[1]) <= PLANE_HALF:
            hits.append(t)
    return min(hits)


@pytest.mark.parametrize("engine, samples", [("WORKBENCH", 1), ("CYCLES", 2)])
def test_capture_cube_on_plane(engine, samples):
    cube, plane = _build_scene()
    scene = bpy.context.scene
    before = (scene.render.engine, scene.render.resolution_x, scene.render.filepath, scene.camera,
              len(bpy.data.objects), len(bpy.data.cameras), scene.render.film_transparent)
    opts = CaptureOptions(count=4, width=33, height=33, engine=engine, samples=samples, points=2000, seed=1)
    out = capture([cube, plane], opts)

    images, depths, cams = out["images"], out["depths"], out["cameras"]
    assert images.shape == (4, 33, 33, 4) and images.dtype == np.float32
    assert depths.shape == (4, 33, 33) and depths.dtype == np.float32
    assert cams["world_from_camera"].shape == (4, 4, 4) and (cams["width"], cams["height"]) == (33, 33)
    assert out["points"].dtype == np.float32 and out["points"].shape[1] == 3
    assert out["colors"].shape == out["points"].shape

    # Empty background: alpha 0, no colour, no depth; covered pixels have finite depth.
    alpha = images[..., 3]
    empty = alpha == 0.0
    assert empty.sum() > 50, "the corners of the views should miss the plane"
    assert (images[empty][:, :3] == 0).all() and np.isinf(depths[empty]).all()
    # Depth is not antialiased (one sample per pixel), so only clearly covered pixels must have it.
    assert np.isfinite(depths[alpha > 0.9]).all()
    assert (alpha[:, 16, 16] > 0.99).all()

    # Centre pixel (33 px: its centre is the principal point) sees the cube at the known depth.
    m = cams["world_from_camera"].astype(np.float64)
    for i in range(4):
        eye, forward = m[i, :3, 3], -m[i, :3, 2]
        expected = _ray_depth(eye, forward)  # on the optical axis, ray distance = depth along -Z
        assert abs(depths[i, 16, 16] - expected) < 0.01 * expected, (i, depths[i, 16, 16], expected)

    # Points lie on the surfaces and got colours from the renders (finite, non-negative).
    p = out["points"]
    on_plane = np.abs(p[:, 2]) < 1e-4
    on_cube = np.all((p >= CUBE[0] - 1e-4) & (p <= CUBE[1] + 1e-4), axis=1)
    assert (on_plane | on_cube).all() and on_cube.any() and on_plane.any()
    assert np.isfinite(out["colors"]).all() and (out["colors"] >= 0).all()
    # Points hidden under the cube (on the plane, inside its footprint) are never visible.
    # (0.2 m inside the footprint: more than the 2 % depth tolerance at these distances.)
    hidden = on_plane & (np.abs(p[:, 0]) < 0.3) & (np.abs(p[:, 1]) < 0.3)
    assert not hidden.any()

    # Everything capture changed is back; no temporary camera is left behind.
    after = (scene.render.engine, scene.render.resolution_x, scene.render.filepath, scene.camera,
             len(bpy.data.objects), len(bpy.data.cameras), scene.render.film_transparent)
    assert after == before


def test_capture_hides_other_objects_and_checks_options():
    cube, plane = _build_scene()
    out = capture([cube], CaptureOptions(count=2, width=17, height=17, engine="WORKBENCH", points=0))
    # Only the cube: its bounding sphere frames the view and the plane is hidden from the render.
    expected_centre = capture_layout.capture_cameras(CUBE[0], CUBE[1], count=2, width=17, height=17)
    np.testing.assert_allclose(out["cameras"]["world_from_camera"], expected_centre["world_from_camera"], atol=1e-5)
    assert len(out["points"]) == 0
    assert plane.hide_render is False
    with pytest.raises(ValueError, match="engine"):
        capture([cube], CaptureOptions(engine="POVRAY"))


def _user_camera(name, location, target, **settings):
    from mathutils import Vector

    data = bpy.data.cameras.new(name)
    for key, value in settings.items():
        setattr(data, key, value)
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    obj.location = location
    obj.rotation_euler = (Vector(target) - Vector(location)).to_track_quat("-Z", "Y").to_euler()
    return obj


def _scene_state(scene):
    return (scene.render.engine, scene.render.resolution_x, scene.render.resolution_y, scene.render.filepath,
            scene.camera, len(bpy.data.objects), len(bpy.data.cameras), scene.render.film_transparent,
            [m.camera for m in scene.timeline_markers])


def test_capture_from_user_cameras_matches_blender_projection():
    from bpy_extras.object_utils import world_to_camera_view



    for obj in list(bpy.data.objects):
        if obj.type == "MESH":
            bpy.data.objects.remove(obj)
    centre = (0.3, -0.2, 0.4)
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.25, location=centre)
    ball = bpy.context.active_object
    scene = bpy.context.scene
    # Different lenses, sensor fits and shifts; one camera object scaled (Blender renders it unscaled).
    a = _user_camera("A", (4.0, -3.0, 2.0), (0.0, 0.0, 0.3), lens=35.0, shift_x=0.1, shift_y=-0.05)
    a.scale = (2.0, 2.0, 2.0)
    b = _user_camera("B", (-3.0, -4.0, 3.0), (0.5, 0.0, 0.5), lens=60.0, sensor_fit="VERTICAL",
                     sensor_height=20.0, shift_y=0.08)
    # A marker bound to the scene camera would make the renderer switch to it: capture must not.
    scene.timeline_markers.new("bound", frame=scene.frame_current).camera = scene.camera
    bpy.context.view_layer.update()
    before = _scene_state(scene)

    calls = []
    width, height = 48, 36
    out = capture([ball], CaptureOptions(width=width, height=height, engine="WORKBENCH", points=300),
                  cameras=[a, b], on_view=lambda i, total: calls.append((i, total)))
    assert calls == [(1, 2), (2, 2)]
    assert _scene_state(scene) == before

    cams = out["cameras"]
    assert out["images"].shape == (2, height, width, 4) and (cams["width"], cams["height"]) == (width, height)
    for i, cam in enumerate((a, b)):
        d = cam.data
        want = camera_model.intrinsics_from_blender(d.lens, d.sensor_width, d.sensor_height, d.sensor_fit,
                                                    d.shift_x, d.shift_y, width, height)
        np.testing.assert_allclose([cams[k][i] for k in ("fx", "fy", "cx", "cy")], want, rtol=1e-12)
        np.testing.assert_allclose(cams["world_from_camera"][i],
                                   np.array(cam.matrix_world.normalized(), dtype=np.float64), atol=1e-6)
    assert cams["fx"][0] != cams["fx"][1]
    assert cams["near"] == pytest.approx(min(a.data.clip_start, b.data.clip_start))

    # Blender's own projection of the ball's centre, at the capture resolution.
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
    pixels, _ = camera_model.project(np.array([centre]), cams)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    for i, cam in enumerate((a, b)):
        ndc = world_to_camera_view(scene, cam, ball.location)
        expected = np.array([ndc.x * width, (1.0 - ndc.y) * height])  # rows grow downwards
        # The wire cameras project exactly as Blender does.
        np.testing.assert_allclose(pixels[i, 0], expected, atol=1e-3)
        # The render was made from that camera: the ball's silhouette is centred on that pixel.
        # (Perspective shifts a small sphere's silhouette centroid by (r/d)^2 of its offset from
        # the principal point, well under 0.05 px here; antialiasing adds about 0.15 px.)
        alpha = out["images"][i, ..., 3]
        assert alpha[0].max() == alpha[-1].max() == alpha[:, 0].max() == alpha[:, -1].max() == 0.0
        centroid = np.array([(alpha * xs).sum(), (alpha * ys).sum()]) / alpha.sum()
        np.testing.assert_allclose(centroid, expected, atol=0.4)
    # Points were coloured from these views: they sit on the ball.
    assert len(out["points"]) > 100
    np.testing.assert_allclose(np.linalg.norm(out["points"] - np.array(centre), axis=1), 0.25, atol=0.01)

    ortho = _user_camera("O", (0.0, -5.0, 1.0), centre, type="ORTHO")
    with pytest.raises(ValueError, match="'O' is ORTHO; only perspective"):
        capture([ball], CaptureOptions(width=8, height=8, engine="WORKBENCH"), cameras=[a, ortho])
    with pytest.raises(ValueError, match="is not a camera object"):
        capture([ball], CaptureOptions(width=8, height=8, engine="WORKBENCH"), cameras=[ball])


def test_capture_steps_render_one_view_per_step_and_close_restores():
    cube, plane = _build_scene()
    scene = bpy.context.scene
    before = _scene_state(scene)
    with pytest.raises(ValueError, match="engine"):
        capture_steps([cube], CaptureOptions(engine="POVRAY"))  # checked by the call, before any step
    steps = capture_steps([cube], CaptureOptions(count=3, width=16, height=16, engine="WORKBENCH", points=0))
    assert _scene_state(scene) == before  # nothing changes until the first step
    assert next(steps) == (1, 3)
    assert scene.render.resolution_x == 16 and len(bpy.data.cameras) == before[6] + 1 and plane.hide_render
    steps.close()  # cancel: the scene is as before, the temporary camera gone
    assert _scene_state(scene) == before and not plane.hide_render
