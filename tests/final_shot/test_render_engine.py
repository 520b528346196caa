"""The NSTUDIO_SPLATS engine through bpy.ops.render.render against nskernels.rasterize called directly."""

from __future__ import annotations

import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
torch = pytest.importorskip("torch")

import final_shot_helpers as h  # noqa: E402


def _tiny_gaussians(n=40, seed=3):
    rng = np.random.default_rng(seed)
    return {
        "means": rng.uniform(-1.0, 1.0, size=(n, 3)).astype(np.float32),
        "quats": rng.normal(size=(n, 4)).astype(np.float32),
        "scales": rng.uniform(-2.5, -1.5, size=(n, 3)).astype(np.float32),
        "opacities": rng.uniform(0.0, 3.0, size=n).astype(np.float32),
        "sh0": h.sh0_for(rng.uniform(0.1, 0.9, size=(n, 3))),
        "shN": np.zeros((n, 0, 3), np.float32),
    }


def _expected(local, obj, cam_obj, scene):
    """Render with kernels directly: world Gaussians built here with mathutils, camera via nskernels.camera."""
    from mathutils import Quaternion, Vector

    from addon.core import camera as camera_model
    from nskernels.camera import Cameras
    from nskernels.rasterize import rasterize

    mw = obj.matrix_world.copy()
    loc, rot, scale = mw.decompose()
    assert max(scale) - min(scale) < 1e-6  # the test uses a uniform scale
    means = np.array([mw @ Vector(p) for p in local["means"]], np.float32)
    quats = np.array([list(rot @ Quaternion(q)) for q in local["quats"]], np.float32)
    scales = local["scales"] + np.float32(math.log(scale[0]))
    cam = cam_obj.data
    fx, fy, cx, cy = camera_model.intrinsics_from_blender(cam.lens, cam.sensor_width, cam.sensor_height,
                                                          cam.sensor_fit, cam.shift_x, cam.shift_y, h.WIDTH, h.HEIGHT)
    cams = Cameras(world_from_camera=torch.tensor(np.array(cam_obj.matrix_world), dtype=torch.float32)[None],
                   fx=torch.tensor([fx]), fy=torch.tensor([fy]), cx=torch.tensor([cx]), cy=torch.tensor([cy]),
                   width=h.WIDTH, height=h.HEIGHT, near=cam.clip_start, far=cam.clip_end)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in dict(local, means=means, quats=quats, scales=scales).items()}
    out = rasterize(t["means"], t["quats"], t["scales"], t["opacities"], t["sh0"], t["shN"], cams, backend="torch")
    return out.rgb[0].numpy(), out.alpha[0].numpy(), out.depth[0].numpy()


def test_engine_render_matches_direct_rasterize(blender_addon, server, tmp_path):
    from addon.blender.importers.gaussians import create_gaussian_object

    scene = bpy.context.scene
    h.set_resolution(scene)
    cam_obj = h.add_camera(scene)
    local = _tiny_gaussians()
    obj = create_gaussian_object("Splats", local, collection=scene.collection)
    obj.location = (0.2, 0.5, -0.1)
    obj.rotation_euler = (0.3, -0.4, 0.9)
    obj.scale = (1.3, 1.3, 1.3)
    bpy.context.view_layer.update()

    scene.render.engine = "NSTUDIO_SPLATS"
    scene.nstudio_final_shot.endpoint = server.endpoint
    scene.render.use_compositing = False
    scene.render.film_transparent = True
    h.render_exr(scene, tmp_path / "splats.exr")
    got = h.read_exr(tmp_path / "splats.exr")

    rgb, alpha, _ = _expected(local, obj, cam_obj, scene)
    assert alpha.max() > 0.5  # the set is in view
    np.testing.assert_allclose(got[..., 3], alpha, atol=1e-4)
    # The EXR holds the render result as it is: premultiplied linear colour.
    np.testing.assert_allclose(got[..., :3], rgb, atol=1e-4)


@pytest.fixture(scope="module")
def curve_server(tmp_path_factory):
    """A real server with CURVE on (keys from ``nstudio keys``), answering; stopped after this module."""
    import blender_support

    folder = tmp_path_factory.mktemp("curve-server")
    server = blender_support.LoopbackServer(folder, curve_dir=blender_support.make_curve_keys(folder / "keys")).start()
    try:
        yield server
    finally:
        server.stop()


def test_scene_endpoint_to_a_curve_server_keeps_the_preferences_keys(blender_addon, curve_server, tmp_path):
    """F12 with the scene's own endpoint on a CURVE server: the preferences' keys still apply."""
    import blender_support
    from addon.blender import render_engine, render_settings
    from addon.blender.importers.gaussians import create_gaussian_object
    from addon.core import render_client

    scene = bpy.context.scene
    h.set_resolution(scene)
    h.add_camera(scene)
    local = _tiny_gaussians()
    create_gaussian_object("Splats", local, collection=scene.collection)
    scene.render.engine = "NSTUDIO_SPLATS"
    scene.render.use_compositing = False
    scene.render.film_transparent = True
    scene.nstudio_final_shot.endpoint = curve_server.endpoint
    prefs = blender_support.preferences()
    prefs.server_public_key = str(curve_server.curve_dir / "server.key")
    prefs.client_secret_key = str(curve_server.curve_dir / "client.key_secret")
    try:
        settings = render_settings.render_settings(scene)
        assert settings.endpoint == curve_server.endpoint
        assert settings.curve == curve_server.curve_keys()
        h.render_exr(scene, tmp_path / "curve.exr")
        got = h.read_exr(tmp_path / "curve.exr")
        want = render_client.render(local, render_engine.camera_for_frame(scene, scene.camera, h.WIDTH, h.HEIGHT),
                                    settings=settings)
    finally:
        blender_support.reset_preferences()
    assert want["alpha"][0].max() > 0.5  # the set is in view
    np.testing.assert_allclose(got[..., 3], want["alpha"][0], atol=1e-4)


def test_unreachable_server_is_reported(blender_addon, tmp_path):
    from addon.blender import render_engine, render_settings
    from addon.blender.importers.gaussians import create_gaussian_object

    scene = bpy.context.scene
    h.set_resolution(scene)
    h.add_camera(scene)
    create_gaussian_object("Splats", _tiny_gaussians(), collection=scene.collection)
    scene.render.engine = "NSTUDIO_SPLATS"
    scene.nstudio_final_shot.endpoint = "tcp://127.0.0.1:9"  # nothing listens on the discard port
    settings = render_settings.render_settings(scene)
    assert settings.endpoint == "tcp://127.0.0.1:9"
    from addon.core import render_client

    with pytest.raises(render_client.RenderError, match="no answer from the Neural Studio server"):
        render_client.render(_tiny_gaussians(), render_engine.camera_for_frame(scene, scene.camera, 8, 6),
                             settings=render_client.RenderSettings(endpoint=settings.endpoint, connect_timeout_s=0.5))



def test_unusable_preferences_endpoint_is_a_clear_render_error(blender_addon):
    import blender_support
    from addon.blender.importers.gaussians import create_gaussian_object

    scene = bpy.context.scene
    h.set_resolution(scene)
    h.add_camera(scene)
    create_gaussian_object("Splats", _tiny_gaussians(), collection=scene.collection)
    scene.render.engine = "NSTUDIO_SPLATS"
    blender_support.preferences().endpoint = "localhost:5557"  # no scheme: the scene's own endpoint is empty
    try:
        # In background mode an engine's error_set() comes out of the operator as a RuntimeError.
        with pytest.raises(RuntimeError, match="Neural Studio splat render: add-on preferences: endpoint must look "
                                               "like 'tcp://host:port'"):
            bpy.ops.render.render(scene=scene.name)
    finally:
        blender_support.reset_preferences()
