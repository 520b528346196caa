"""Viewport server render: view matrices -> camera against Blender's own camera maths, and the
asynchronous worker against a real `nstudio serve` (newest view wins, one job in flight, same image
as the synchronous render, unreachable server, clean stop)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_support  # noqa: E402
import final_shot_helpers as h  # noqa: E402

from addon.core import camera as camera_model, colour, render_client, viewport
from tools import demo# noqa: E402

# ------------------------------------------------------------------ view matrices -> camera

CASES = [
    dict(lens=35.0, fit="AUTO", shift=(0.0, 0.0), size=(64, 48), aspect=(1.0, 1.0)),
    dict(lens=50.0, fit="AUTO", shift=(0.1, -0.05), size=(48, 64), aspect=(1.0, 1.0)),
    dict(lens=24.0, fit="VERTICAL", shift=(-0.2, 0.15), size=(80, 40), aspect=(1.0, 1.0)),
    dict(lens=70.0, fit="HORIZONTAL", shift=(0.05, 0.1), size=(60, 70), aspect=(1.0, 2.0)),
    dict(lens=28.0, fit="AUTO", shift=(0.0, 0.2), size=(90, 50), aspect=(3.0, 2.0)),
]


def _blender_camera(case):
    """A camera object and the scene resolution of ``case`` (not axis-aligned, off the origin)."""
    scene = bpy.context.scene
    data = bpy.data.cameras.new("View Camera")
    data.lens, data.sensor_fit = case["lens"], case["fit"]
    data.sensor_width, data.sensor_height = 36.0, 24.0
    data.shift_x, data.shift_y = case["shift"]
    data.clip_start, data.clip_end = 0.1, 250.0
    cam = bpy.data.objects.new("View Camera", data)
    cam.location = (1.0, -5.0, 2.0)
    cam.rotation_euler = (1.2, 0.1, 0.4)
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y = case["size"]
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = case["aspect"]
    bpy.context.view_layer.update()
    return cam


def _as_viewport(cam) -> camera_model.ViewCamera:
    """Feed a camera's matrices to camera_from_view the way a camera view of the viewport does."""
    scene = bpy.context.scene
    w, h_ = scene.render.resolution_x, scene.render.resolution_y
    projection = cam.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=w, y=h_,
                                        scale_x=scene.render.pixel_aspect_x, scale_y=scene.render.pixel_aspect_y)
    return camera_model.camera_from_view(cam.matrix_world.inverted(), projection, w, h_)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['fit']}-{c['size'][0]}x{c['size'][1]}-{c['aspect']}")
def test_view_camera_matches_the_blender_camera(case):
    cam = _blender_camera(case)
    got = _as_viewport(cam)
    scene, data = bpy.context.scene, cam.data
    want = camera_model.intrinsics_from_blender(data.lens, data.sensor_width, data.sensor_height, data.sensor_fit,
                                                data.shift_x, data.shift_y, *case["size"], *case["aspect"])
    # mathutils matrices are float32: ~1e-6 relative error in the projection terms.
    np.testing.assert_allclose((got.fx, got.fy, got.cx, got.cy), want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got.world_from_camera, np.array(cam.matrix_world), atol=1e-5)
    assert (got.width, got.height) == case["size"]
    # near/far come from a difference of float32 terms: far = 250 to 1e-3 relative.
    np.testing.assert_allclose((got.near, got.far), (data.clip_start, data.clip_end), rtol=1e-3)
    assert scene.camera is cam


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['fit']}-{c['size'][0]}x{c['size'][1]}-{c['aspect']}")
def test_view_camera_projects_like_blender(case):
    """Pixel positions of world points: ViewCamera vs bpy_extras' world_to_camera_view."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    cam = _blender_camera(case)
    got = _as_viewport(cam)
    rng = np.random.default_rng(7)
    # Points in front of the camera: its -Z axis, 2..20 m away, spread across the view.
    mw = np.array(cam.matrix_world)
    local = np.column_stack([rng.uniform(-0.5, 0.5, 50), rng.uniform(-0.5, 0.5, 50), -np.ones(50)])
    local *= rng.uniform(2.0, 20.0, (50, 1))
    points = local @ mw[:3, :3].T + mw[:3, 3]
    w, h_ = case["size"]
    ndc = np.array([tuple(world_to_camera_view(bpy.context.scene, cam, Vector(p))) for p in points])
    want = np.column_stack([ndc[:, 0] * w, (1.0 - ndc[:, 1]) * h_])
    np.testing.assert_allclose(got.project(points), want, atol=2e-3)


def test_scaled_camera_scales_pixel_positions():
    cam = _blender_camera(CASES[1])
    full = _as_viewport(cam)
    half = full.scaled(0.5)
    assert (half.width, half.height) == (24, 32)
    points = np.array(cam.matrix_world)[:3, 3] + np.array([[0.3, 4.0, -1.0], [-1.0, 6.0, 0.5], [0.0, 3.0, 0.0]])
    np.testing.assert_allclose(half.project(points), full.project(points) * [24 / 48, 32 / 64], atol=1e-9)
    assert full.scaled(1.0) is full
    with pytest.raises(ValueError, match="scale factor"):
        full.scaled(0.0)


def test_orthographic_and_malformed_views_are_refused():
    cam = _blender_camera(CASES[0])
    cam.data.type = "ORTHO"
    bpy.context.view_layer.update()
    with pytest.raises(ValueError, match="orthographic"):
        _as_viewport(cam)
    with pytest.raises(ValueError, match="window_matrix must be a finite 4 x 4"):
        camera_model.camera_from_view(np.eye(4), np.full((4, 4), np.nan), 10, 10)
    with pytest.raises(ValueError, match="region size must be positive"):
        camera_model.camera_from_view(np.eye(4), np.eye(4), 0, 10)


# ------------------------------------------------------------------ the worker, real server

def _gaussians(n=40, seed=3, spread=1.0):
    rng = np.random.default_rng(seed)
    return {
        "means": rng.uniform(-spread, spread, size=(n, 3)).astype(np.float32),
        "quats": rng.normal(size=(n, 4)).astype(np.float32),
        "scales": rng.uniform(-2.5, -1.5, size=(n, 3)).astype(np.float32),
        "opacities": rng.uniform(0.0, 3.0, size=n).astype(np.float32),
        "sh0": h.sh0_for(rng.uniform(0.1, 0.9, size=(n, 3))),
        "shN": np.zeros((n, 0, 3), np.float32),
    }


def _camera(x=0.0, width=64, height=48, lens_px=60.0):
    """A camera 6 m down -Y looking at the origin (+Y), moved ``x`` metres sideways."""
    world_from_camera = np.array([[1, 0, 0, x], [0, 0, -1, -6.0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float64)
    return camera_model.ViewCamera(world_from_camera, lens_px, lens_px, width / 2, height / 2, width, height, 0.1, 100.0)


def _settings(endpoint, **kw):
    return render_client.RenderSettings(endpoint=endpoint, **kw)


def _sync(gaussians, camera, endpoint):
    """The synchronous render (F12's path) of the same view: (rgb, alpha), row 0 at the top."""
    out = render_client.render(gaussians, camera.cameras_map(), settings=_settings(endpoint))
    return out["rgb"][0], out["alpha"][0]


def _image(frame):
    """A ViewFrame's texture back to (rgb, alpha) with row 0 at the top."""
    top_down = frame.rgba[::-1]
    return top_down[..., :3], top_down[..., 3]


def _wait(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.01)


def test_worker_frame_equals_the_synchronous_render(server):
    g = _gaussians()
    cam = _camera(0.3)
    renderer = viewport.ViewportRenderer(_settings(server.endpoint))
    try:
        seq = renderer.submit(g, cam)
        frame = renderer.wait_frame(seq, 60)
        srgb_seq = renderer.submit(g, cam, srgb=True)
        srgb_frame = renderer.wait_frame(srgb_seq, 30)
    finally:
        assert renderer.stop(10)
    rgb, alpha = _sync(g, cam, server.endpoint)
    assert alpha.max() > 0.5  # the set is in view
    got_rgb, got_alpha = _image(frame)
    # Same server, same inputs, deterministic CPU rasterizer: identical up to float noise.
    np.testing.assert_allclose(got_alpha, alpha, atol=1e-6)
    np.testing.assert_allclose(got_rgb, rgb, atol=1e-6)
    assert frame.rgba.flags.c_contiguous and frame.rgba.dtype == np.float32
    np.testing.assert_allclose(_image(srgb_frame)[0], colour.srgb_to_linear_premultiplied(rgb, alpha),
                               atol=1e-6)
    assert [s.outcome for s in renderer.spans()] == ["frame", "frame"]
    assert renderer.status().state == "stopped" and not renderer.is_alive()


def test_newest_view_wins_with_one_job_in_flight(server):
    g = _gaussians()
    cams = [_camera(x) for x in np.linspace(-0.5, 0.5, 6)]
    renderer = viewport.ViewportRenderer(_settings(server.endpoint))
    try:
        seqs = [renderer.submit(g, c) for c in cams]
        frame = renderer.wait_frame(seqs[-1], 60)
        spans = renderer.spans()
    finally:
        assert renderer.stop(10)
    sent = [s.seq for s in spans]
    # The views submitted while one was in flight collapsed into the newest: fewer were sent
    # than submitted, in order, the last one always, and the rest counted as dropped.
    assert sent[-1] == seqs[-1] and frame.seq == seqs[-1]
    assert len(sent) < len(seqs) and sent == sorted(set(sent))
    assert renderer.dropped == len(seqs) - len(sent)
    # One job at a time: each request ended before the next one started, each its own job.
    assert all(a.ended <= b.started for a, b in zip(spans, spans[1:]))
    assert len({s.job for s in spans}) == len(spans) and all(s.job for s in spans)
    rgb, alpha = _sync(g, cams[-1], server.endpoint)
    np.testing.assert_allclose(_image(frame)[1], alpha, atol=1e-6)
    np.testing.assert_allclose(_image(frame)[0], rgb, atol=1e-6)


def test_unreachable_server_is_an_error_state_then_recovers(tmp_path):
    port = demo.free_loopback_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    renderer = viewport.ViewportRenderer(_settings(endpoint, connect_timeout_s=0.3), retry_s=0.2)
    server = None
    try:
        seq = renderer.submit(_gaussians(), _camera())
        _wait(lambda: renderer.status().state == "error", 10, "the error state")
        status = renderer.status()
        assert status.code == "unreachable"
        assert "no answer from the Neural Studio server" in status.message and endpoint in status.message
        assert renderer.latest() is None
        # The view is retried: a server that appears later renders it without a new submit.
        server = blender_support.LoopbackServer(tmp_path, port=port).start()
        frame = renderer.wait_frame(seq, 60)
        assert frame.seq == seq and frame.rgba[..., 3].max() > 0.5
        assert renderer.status().state == "idle"
    finally:
        assert renderer.stop(10)
        if server is not None:
            server.stop()
    assert not renderer.is_alive() and renderer.status().state == "stopped"
    with pytest.raises(RuntimeError, match="stopped"):
        renderer.submit(_gaussians(), _camera())


def test_stop_cancels_the_job_in_flight(server):
    # Large enough to take a while on the CPU server (a single frame is not cancellable midway).
    g = _gaussians(n=60_000, spread=2.0)
    renderer = viewport.ViewportRenderer(_settings(server.endpoint))
    renderer.submit(g, _camera(width=480, height=360, lens_px=400.0))
    _wait(lambda: renderer.current_job != "", 30, "the job to be accepted")
    began = time.monotonic()
    assert renderer.stop(10)
    assert time.monotonic() - began < 10
    assert not renderer.is_alive() and renderer.status().state == "stopped"
    assert [s.outcome for s in renderer.spans()] == ["cancelled"]
    assert renderer.latest() is None


# ------------------------------------------------------------------ the session's resolution plan

def test_resolution_plan_coarse_while_moving_full_when_still():
    plan = viewport.ResolutionPlan(coarse_scale=0.5, settle_s=0.2)
    assert plan.next_scale("a", 10.0) == 0.5
    assert plan.next_scale("a", 10.1) is None and not plan.due(10.1)
    assert plan.next_scale("b", 10.15) == 0.5  # moved again
    assert plan.due(10.36)
    assert plan.next_scale("b", 10.36) == 1.0
    assert plan.next_scale("b", 11.0) is None and not plan.due(11.0)
    plan.reset()
    assert plan.next_scale("b", 11.0) == 0.5
    full_only = viewport.ResolutionPlan(coarse_scale=1.0)
    assert full_only.next_scale("a", 0.0) == 1.0 and full_only.next_scale("a", 5.0) is None
    with pytest.raises(ValueError, match="coarse_scale"):
        viewport.ResolutionPlan(coarse_scale=0.0)


def test_session_coarse_then_full_frame_and_redraw_decisions(server):
    g = _gaussians()
    cam = _camera(-0.2)
    session = viewport.ViewportSession(_settings(server.endpoint), coarse_scale=0.5, settle_s=0.2)
    try:
        assert session.view(cam, 100.0) is None  # no scene yet: nothing to ask for
        session.set_scene(g)
        coarse_seq = session.view(cam, 100.0)
        coarse = session.renderer.wait_frame(coarse_seq, 60)
        assert (coarse.camera.width, coarse.camera.height) == (32, 24)
        assert session.wants_redraw(100.05)  # a frame nobody has drawn yet
        assert session.frame() is coarse
        assert not session.wants_redraw(100.05)
        assert session.wants_redraw(100.25)  # still for settle_s: time for the full frame
        full_seq = session.view(cam, 100.25)
        full = session.renderer.wait_frame(full_seq, 30)
        assert (full.camera.width, full.camera.height) == (64, 48)
        assert session.view(cam, 100.3) is None
        session.frame()
        assert not session.wants_redraw(100.3)
        assert "Gaussians, 64 x 48" in session.status_text()
        # New Gaussians: the same view is asked for again, coarse first.
        session.set_scene(_gaussians(seed=4))
        assert session.view(cam, 100.4) is not None
        assert session.renderer.pending is not None or session.renderer.in_flight is not None
    finally:
        assert session.close(10)
    rgb, alpha = _sync(g, cam, server.endpoint)
    np.testing.assert_allclose(_image(full)[1], alpha, atol=1e-6)
    np.testing.assert_allclose(_image(full)[0], rgb, atol=1e-6)
    session.set_scene(None, note="no Gaussian objects in this view layer")
    assert session.status_text() == "Neural Studio: no Gaussian objects in this view layer"
    assert session.frame() is None


# ------------------------------------------------------------------ Blender side

def test_scene_gaussians_is_stable_until_something_changes(blender_addon):
    from addon.blender import scene_gaussians
    from addon.blender.importers.gaussians import create_gaussian_object

    scene = bpy.context.scene
    obj = create_gaussian_object("Splats", _gaussians(), collection=scene.collection)
    bpy.context.view_layer.update()
    first, _ = scene_gaussians.scene_gaussians(bpy.context.evaluated_depsgraph_get())
    again, _ = scene_gaussians.scene_gaussians(bpy.context.evaluated_depsgraph_get())
    assert again is first  # the viewport sees "no change" for unrelated updates
    obj.location = (0.0, 0.0, 1.0)
    bpy.context.view_layer.update()
    moved, _ = scene_gaussians.scene_gaussians(bpy.context.evaluated_depsgraph_get())
    assert moved is not first
    np.testing.assert_allclose(moved["means"], first["means"] + [0.0, 0.0, 1.0], atol=1e-6)


def test_unregister_stops_viewport_workers_and_the_redraw_timer(blender_addon, server):
    from addon.blender import render_engine, viewport_draw

    session = viewport_draw.new_viewport_session(_settings(server.endpoint))
    viewport_draw._ensure_viewport_timer()
    session.set_scene(_gaussians())
    seq = session.view(_camera(), time.monotonic())
    session.renderer.wait_frame(seq, 60)
    assert session.renderer.is_alive()
    assert bpy.app.timers.is_registered(viewport_draw._viewport_tick)
    with blender_support.addon_disabled():
        assert not session.renderer.is_alive()
        assert session.renderer.status().state == "stopped"
        assert not bpy.app.timers.is_registered(viewport_draw._viewport_tick)
    # Enabled again: no timer until a viewport uses the engine; with none, the tick ends itself.
    assert not bpy.app.timers.is_registered(viewport_draw._viewport_tick)
    assert viewport_draw._viewport_tick() is None
    assert bpy.types.RenderEngine.bl_rna_get_subclass_py(render_engine.ENGINE_ID).bl_use_eevee_viewport is False
    assert math.isfinite(session.renderer.latest().seconds)
