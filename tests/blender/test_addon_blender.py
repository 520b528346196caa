"""The add-on inside real Blender (bpy 5.0.1) against a real server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from blender_support import NSTUDIO, REPO, tick_until

import bpy
from addon.blender import session
from addon.core import client as client_mod
from addon.core import handlers
from addon.wire import protocol
from tools import demo

def _all_classes():
    import importlib

    from addon import blender as blender_layer

    return [cls for name in blender_layer.FEATURE_MODULES
            for cls in importlib.import_module(f"addon.blender.{name}").CLASSES]


def _our_types():
    """Names of the add-on's classes that Blender has registered."""
    return [cls.__name__ for cls in _all_classes() if cls.is_registered]


def _footprint() -> dict:
    """Everything the add-on adds to Blender outside its classes: by kind, sorted names."""
    from addon.blender import viewport_draw

    def ours(functions):
        return sorted(f"{f.__module__}.{f.__name__}" for f in functions
                      if getattr(f, "__module__", "").split(".")[0] == "addon")

    handler_lists = {name: getattr(bpy.app.handlers, name) for name in dir(bpy.app.handlers)
                     if isinstance(getattr(bpy.app.handlers, name), list)}
    return {
        "types": sorted(name for name in dir(bpy.types) if name.startswith("NSTUDIO")),
        "scene_properties": sorted(p.identifier for p in bpy.types.Scene.bl_rna.properties
                                   if p.identifier.startswith(("neural_studio", "nstudio"))),
        "app_handlers": {name: ours(funcs) for name, funcs in handler_lists.items() if ours(funcs)},
        "menus": {menu: ours(getattr(bpy.types, menu)._dyn_ui_initialize())
                  for menu in ("TOPBAR_MT_file_import", "TOPBAR_MT_file_export")
                  if ours(getattr(bpy.types, menu)._dyn_ui_initialize())},
        "timers": [f.__name__ for f in (session.timer_tick, viewport_draw._viewport_tick)
                   if bpy.app.timers.is_registered(f)],
        "result_handlers": list(handlers.registered_pipelines()),
    }


NOTHING = {"types": [], "scene_properties": [], "app_handlers": {}, "menus": {}, "timers": [], "result_handlers": []}


def _item(job_key):
    return next(i for i in bpy.context.scene.nstudio_jobs if job_key in (i.job_id, i.request_id))


def _connect(prefs, endpoint):
    prefs.endpoint = endpoint
    assert bpy.ops.nstudio.connect() == {"FINISHED"}
    tick_until(lambda: session.current().client.connected, 30, "the welcome")
    return session.current()


def test_register_and_unregister_leave_nothing_behind(addon_disabled):
    import addon_utils

    from addon import blender as blender_layer

    assert _our_types() == []
    assert _footprint() == NOTHING
    addon_utils.enable("addon", default_set=True, handle_error=None)
    try:
        assert _our_types() == [cls.__name__ for cls in _all_classes()]
        assert hasattr(bpy.types, "NSTUDIO_PT_status") and hasattr(bpy.ops.nstudio, "connect")
        assert hasattr(bpy.types.Scene, "nstudio_jobs")
        assert bpy.app.timers.is_registered(session.timer_tick)
        assert session.on_load_post in bpy.app.handlers.load_post
        assert handlers.get_handler("system.echo") is not None
        footprint = _footprint()
        assert footprint["scene_properties"] == ["nstudio_final_shot", "nstudio_generate", "nstudio_jobs",
                                                 "nstudio_motion_source", "nstudio_texture"]
        assert footprint["app_handlers"] == {
            "depsgraph_update_post": ["addon.blender.final_shot._sync_companions", "addon.blender.scene_gaussians._on_depsgraph_update"],
            "load_post": ["addon.blender.scene_gaussians._on_load_post", "addon.blender.session.on_load_post"],
            "render_pre": ["addon.blender.frame_guard._on_render_pre"],
            "render_write": ["addon.blender.frame_guard._on_render_write"],
        }
        assert footprint["menus"] == {"TOPBAR_MT_file_export": ["addon.blender.ops_gaussians.menu_export"],
                                      "TOPBAR_MT_file_import": ["addon.blender.ops_gaussians.menu_import"]}
        assert footprint["timers"] == ["timer_tick"]  # the viewport's starts with a viewport
        assert footprint["result_handlers"] == ["image.generate", "mesh.texture", "motion.from_params", "motion.recover",
                                                "splat.reconstruct",
                                                "splat.render", "splat.select", "splat.to_mesh", "system.echo"]
    finally:
        addon_utils.disable("addon", default_set=True, handle_error=None)
    assert _our_types() == []
    assert _footprint() == NOTHING  # no class, property, handler, menu entry or timer left behind
    assert blender_layer._registered == []


def test_every_operator_class_and_scene_property_of_ours_uses_the_nstudio_prefix(addon_disabled):
    """One prefix (`nstudio`) for what ends up in keymaps and scripts: found by diffing Blender itself."""
    import addon_utils

    def snapshot():
        ops = {f"{mod}.{op}" for mod in dir(bpy.ops) if not mod.startswith("_")
               for op in dir(getattr(bpy.ops, mod)) if not op.startswith("_")}
        scene_props = {p.identifier for p in bpy.types.Scene.bl_rna.properties}
        types = set(dir(bpy.types))
        return ops, scene_props, types

    ops0, props0, types0 = snapshot()
    addon_utils.enable("addon", default_set=True, handle_error=None)
    try:
        ops1, props1, types1 = snapshot()
        classes = _all_classes()
    finally:
        addon_utils.disable("addon", default_set=True, handle_error=None)
    new_ops, new_props, new_types = ops1 - ops0, props1 - props0, types1 - types0
    assert "nstudio.connect" in new_ops and "nstudio_jobs" in new_props  # the diff sees our additions
    assert sorted(op for op in new_ops if not op.startswith("nstudio.")) == []
    assert sorted(p for p in new_props if not p.startswith("nstudio_")) == []
    assert sorted(t for t in new_types if not t.startswith("NSTUDIO_")) == []
    for cls in classes:
        if issubclass(cls, bpy.types.Operator):
            assert cls.__name__.startswith("NSTUDIO_OT_") and cls.bl_idname.startswith("nstudio."), cls
        elif issubclass(cls, bpy.types.Panel):
            assert cls.__name__.startswith("NSTUDIO_PT_"), cls
        else:
            assert cls.__name__.startswith("NSTUDIO_"), cls


def test_a_feature_module_that_fails_to_register_leaves_nothing_behind(addon_disabled, monkeypatch):
    import addon
    from addon import blender as blender_layer
    from addon.blender import splat_render

    def broken():
        raise RuntimeError("broken feature")

    monkeypatch.setattr(splat_render, "register", broken)  # a late module: nearly everything else is registered
    with pytest.raises(RuntimeError, match="broken feature"):
        addon.register()
    assert _our_types() == []
    assert _footprint() == NOTHING
    assert blender_layer._registered == []


def test_a_missing_feature_module_is_an_explicit_error(addon_disabled, monkeypatch):
    import addon
    from addon import blender as blender_layer

    real = _all_classes()
    monkeypatch.setattr(blender_layer, "FEATURE_MODULES", ("preferences", "no_such_feature"))
    with pytest.raises(blender_layer.FeatureModuleError, match="'no_such_feature'.*missing"):
        addon.register()
    assert [cls.__name__ for cls in real if cls.is_registered] == []  # nothing registered before the check


def test_local_server_connects_shows_catalogue_and_log_and_stops_with_the_addon(enabled_addon, tmp_path):
    import addon_utils

    port = demo.free_loopback_port()
    prefs = enabled_addon
    prefs.start_local_server = True
    prefs.server_command = f"{NSTUDIO} serve --store {tmp_path / 'store'} --device cpu"
    live = _connect(prefs, f"tcp://127.0.0.1:{port}")
    process = live.server.process
    assert process.poll() is None
    welcome = live.client.welcome
    assert welcome["pipelines"]["system.echo"]["available"] is True
    assert {"splat.render", "splat.reconstruct"} <= set(welcome["pipelines"])

    assert bpy.ops.nstudio.show_server_log() == {"FINISHED"}
    text = bpy.data.texts[session.LOG_TEXT_NAME].as_string()
    assert f"serving on tcp://127.0.0.1:{port}" in text

    addon_utils.disable("addon", default_set=True, handle_error=None)
    assert process.wait(10) is not None  # lifetime tied to the add-on
    addon_utils.enable("addon", default_set=True, handle_error=None)  # for the fixture's teardown


def test_echo_round_trips_arrays_into_a_mesh(enabled_addon, shared_server):
    live = _connect(enabled_addon, shared_server.endpoint)
    rng = np.random.default_rng(3)
    points = rng.normal(size=(500, 3)).astype(np.float32)
    weight = rng.random(500).astype(np.float32)
    record = live.submit(bpy.context.scene, "system.echo", params={"steps": 4, "partial_every": 1},
                         inputs={"points": points, "weight": weight})
    tick_until(lambda: _item(record.request_id).applied, 30, "the echo result applied")
    item = _item(record.request_id)
    assert item.state == "done" and item.job_id == record.id
    mesh = bpy.data.objects[item.target].data
    got = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", got)
    assert np.array_equal(got.reshape(-1, 3), points)
    got_weight = np.empty(len(mesh.vertices), np.float32)
    mesh.attributes["weight"].data.foreach_get("value", got_weight)
    assert np.array_equal(got_weight, weight)


def test_echo_test_operator_round_trips_the_active_mesh(enabled_addon, shared_server):
    with pytest.raises(RuntimeError, match="not connected to a server"):
        bpy.ops.nstudio.echo_test()
    mesh = bpy.data.meshes.new("Source")
    vertices = np.random.default_rng(5).normal(size=(37, 3)).astype(np.float32)
    mesh.from_pydata(vertices.tolist(), [], [])
    obj = bpy.data.objects.new("Source", mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    _connect(enabled_addon, shared_server.endpoint)
    assert bpy.ops.nstudio.echo_test(steps=2) == {"FINISHED"}
    key = bpy.context.scene.nstudio_jobs[-1].request_id
    tick_until(lambda: _item(key).applied, 30, "the echo result applied")
    echoed = bpy.data.objects[_item(key).target].data
    got = np.empty(len(echoed.vertices) * 3, np.float32)
    echoed.vertices.foreach_get("co", got)  # read independently of the add-on's attribute path
    assert np.array_equal(got.reshape(-1, 3), vertices)
    height = np.empty(len(echoed.vertices), np.float32)
    echoed.attributes["height"].data.foreach_get("value", height)
    assert np.array_equal(height, vertices[:, 2])


def test_remove_job_and_disconnect_operators(enabled_addon, shared_server):
    live = _connect(enabled_addon, shared_server.endpoint)
    record = live.submit(bpy.context.scene, "system.echo", inputs={"points": np.zeros((3, 3), np.float32)})
    tick_until(lambda: _item(record.request_id).applied, 30, "the echo result applied")
    with pytest.raises(RuntimeError, match="unknown job 'no-such-job'"):
        bpy.ops.nstudio.remove_job(job_id="no-such-job")
    assert bpy.ops.nstudio.remove_job(job_id=record.id) == {"FINISHED"}
    assert len(bpy.context.scene.nstudio_jobs) == 0 and record.id not in live.manager.jobs
    assert bpy.ops.nstudio.disconnect() == {"FINISHED"}
    assert session.current() is None and live.client.state == client_mod.DISCONNECTED


def test_progress_updates_job_properties_and_preview(enabled_addon, shared_server):
    live = _connect(enabled_addon, shared_server.endpoint)
    record = live.submit(bpy.context.scene, "system.echo", params={"steps": 20, "step_seconds": 0.05},
                         inputs={"points": np.zeros((2, 3), np.float32)})
    seen_steps = set()

    def running_midway():
        item = _item(record.request_id)
        if item.state == "running":
            seen_steps.add(item.step)
        return item.state == "running" and 0 < item.step < item.total

    tick_until(running_midway, 30, "a progress event mid-job")
    item = _item(record.request_id)
    assert item.total == 20 and item.stage == "echo"

    # A preview, as a progress event carries it (the codec's real round trip).
    preview = np.zeros((4, 6, 3), np.uint8)
    preview[0, :, 0] = 255  # top row red
    frames = protocol.encode(protocol.make_header("progress", job=record.id, stage="echo", step=item.step,
                                                  total=20, message="preview", preview=preview))
    live.manager.handle(protocol.decode(frames))
    tick_until(lambda: _item(record.request_id).preview_image, 5, "the preview image")
    image = bpy.data.images[_item(record.request_id).preview_image]
    assert tuple(image.size) == (6, 4)
    pixels = np.empty(6 * 4 * 4, np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(4, 6, 4)
    assert np.allclose(pixels[3, :, 0], 1.0) and np.allclose(pixels[0, :, 0], 0.0)  # Blender rows bottom-up

    def done():
        running_midway()
        return _item(record.request_id).state == "done"

    tick_until(done, 30, "the job to finish")
    assert _item(record.request_id).step == 20
    assert len(seen_steps) >= 2  # the properties followed the progress events


def test_cancel_from_the_operator(enabled_addon, shared_server):
    live = _connect(enabled_addon, shared_server.endpoint)
    record = live.submit(bpy.context.scene, "system.echo", params={"steps": 400, "step_seconds": 0.05})
    tick_until(lambda: _item(record.request_id).state == "running", 30, "the job to run")
    assert bpy.ops.nstudio.cancel_job(job_id=record.id) == {"FINISHED"}
    tick_until(lambda: _item(record.id).state == "cancelled", 10, "the cancel")


def test_server_killed_and_restarted_mid_session_is_reconnected(enabled_addon, server):
    live = _connect(enabled_addon, server.endpoint)
    server.kill()
    tick_until(lambda: live.client.state != client_mod.CONNECTED, 15, "the dead server noticed")
    restarted = server.restarted()
    try:
        tick_until(lambda: live.client.connections == 2 and live.client.connected, 60, "the reconnect")
        points = np.ones((10, 3), np.float32)
        record = live.submit(bpy.context.scene, "system.echo", inputs={"points": points})
        tick_until(lambda: _item(record.request_id).applied, 30, "a job after the reconnect")
    finally:
        restarted.stop()


REOPEN_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import bpy, addon_utils
    bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
    addon_utils.enable("addon", default_set=True, handle_error=None)  # register after opening
    from addon.blender import session
    bpy.context.preferences.addons["addon"].preferences.endpoint = sys.argv[2]
    assert bpy.ops.nstudio.connect() == {"FINISHED"}
    item = bpy.context.scene.nstudio_jobs[0]
    deadline = time.monotonic() + 60
    while not item.applied and time.monotonic() < deadline:
        session.timer_tick()
        time.sleep(0.005)
    mesh = bpy.data.objects[item.target].data if item.target in bpy.data.objects else None
    co = np.empty(len(mesh.vertices) * 3, np.float32) if mesh else np.empty(0, np.float32)
    if mesh:
        mesh.vertices.foreach_get("co", co)
    np.save(sys.argv[3], co.reshape(-1, 3))
    print("RESULT " + json.dumps({"applied": item.applied, "state": item.state, "job": item.job_id,
                                  "message": item.message}))
    addon_utils.disable("addon", default_set=True, handle_error=None)
""")


def test_result_that_arrived_while_blender_was_closed_is_applied_on_reopen(enabled_addon, server, tmp_path):
    live = _connect(enabled_addon, server.endpoint)
    points = np.random.default_rng(5).normal(size=(300, 3)).astype(np.float32)
    record = live.submit(bpy.context.scene, "system.echo", params={"steps": 10, "step_seconds": 0.1},
                         inputs={"points": points})
    tick_until(lambda: _item(record.request_id).job_id, 30, "the job accepted")
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    session.disconnect()  # "Blender closes" before the job finishes

    out = tmp_path / "points.npy"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", REOPEN_SCRIPT, str(blend), server.endpoint, str(out)],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=180)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(lines[-1][len("RESULT "):])
    assert report == {"applied": True, "state": "done", "job": record.id, "message": "done"}
    assert np.array_equal(np.load(out), points)
