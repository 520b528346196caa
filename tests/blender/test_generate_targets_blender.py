"""Generate over the wire in real bpy with a real server and tiny random-weight models:
scene ControlNet sources (a landed image equal to a direct diffusers ControlNet call), results
as camera and world backgrounds, and img2img over a rendered animation frame by frame."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon.blender import generate, generate_animation  # noqa: E402
from addon.blender import generate_sources as sources  # noqa: E402
from addon.core import generate_animation as anim  # noqa: E402

W, H = 32, 24


def _tiny_scene(tmp_path):
    """Camera, a cube and a ground plane; Cycles at one sample, 32 x 24 pixels, frames 1..2."""
    scene = bpy.context.scene
    for obj in list(scene.objects):
        bpy.data.objects.remove(obj)
    camera = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(camera)
    camera.location = (0.0, -8.0, 3.0)
    camera.rotation_euler = (math.radians(70.0), 0.0, 0.0)
    scene.camera = camera
    bpy.ops.mesh.primitive_plane_add(size=40.0)
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(0.0, 0.0, 1.0))
    cube = bpy.context.active_object
    cube.keyframe_insert("location", frame=1)
    cube.location.x = 1.5
    cube.keyframe_insert("location", frame=2)
    scene.render.engine = "CYCLES"
    scene.cycles.samples, scene.cycles.use_denoising, scene.cycles.device = 1, False, "CPU"
    scene.render.resolution_x, scene.render.resolution_y = W, H
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(tmp_path / "render" / "frame_")
    scene.frame_start, scene.frame_end, scene.frame_step = 1, 2, 1
    scene.frame_set(1)
    return scene, cube


def test_a_result_becomes_camera_and_world_background(blender_addon, tmp_path):
    scene, _cube = _tiny_scene(tmp_path)
    generate.land_image("Generated 9", np.zeros((H, W, 3), np.uint8), 9)
    assert bpy.ops.nstudio.generate_use_as(image="Generated 9", target="CAMERA") == {"FINISHED"}
    camera = scene.camera.data
    assert camera.show_background_images
    assert [bg.image.name for bg in camera.background_images] == ["Generated 9"]
    generate.land_image("Generated 10", np.zeros((H, W, 3), np.uint8), 10)
    generate.use_as_camera_background(scene.camera, bpy.data.images["Generated 10"])
    assert [bg.image.name for bg in camera.background_images] == ["Generated 10"]   # replaced

    assert bpy.ops.nstudio.generate_use_as(image="Generated 9", target="WORLD") == {"FINISHED"}
    nodes = scene.world.node_tree.nodes
    env = [n for n in nodes if n.type == "TEX_ENVIRONMENT"]
    assert len(env) == 1 and env[0].image.name == "Generated 9"
    background = next(n for n in nodes if n.type == "BACKGROUND")
    assert background.inputs["Color"].links[0].from_node == env[0]
    generate.use_as_world_background(scene, bpy.data.images["Generated 10"])
    assert [n.image.name for n in nodes if n.type == "TEX_ENVIRONMENT"] == ["Generated 10"]
    scene.world = None
    assert generate.use_as_world_background(scene, bpy.data.images["Generated 9"]) is scene.world
    bpy.data.objects.remove(scene.camera)
    with pytest.raises(RuntimeError, match="no camera"):
        bpy.ops.nstudio.generate_use_as(image="Generated 9", target="CAMERA")


def test_controlnet_settings_are_checked_before_rendering(blender_addon, tmp_path):
    scene, _cube = _tiny_scene(tmp_path)
    settings = scene.nstudio_generate
    assert bpy.ops.nstudio.generate_controlnet_add(kind="DEPTH") == {"FINISHED"}
    with pytest.raises(ValueError, match="ControlNet 1: choose a ControlNet model"):
        generate.scene_inputs(scene, settings)
    settings.controlnets[0].model = "depth"
    assert bpy.ops.nstudio.generate_controlnet_add(kind="OPENPOSE") == {"FINISHED"}
    settings.controlnets[1].model = "pose"
    with pytest.raises(ValueError, match="ControlNet 2: choose an armature"):
        generate.scene_inputs(scene, settings)
    settings.controlnets[1].enabled = False
    settings.use_render_size = True
    inputs = generate.scene_inputs(scene, settings)
    assert [c.shape for c in inputs["control"]] == [(H, W, 3)]
    assert generate.controlnet_params(settings) == {
        "controlnets": [{"model": "depth", "scale": 1.0}]}
    assert bpy.ops.nstudio.generate_controlnet_remove(index=1) == {"FINISHED"}
    assert len(settings.controlnets) == 1


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    """Tiny SD + ControlNet in a model registry, and a loopback server that has them."""
    from blender_support import LoopbackServer

    from server.models import ModelRegistry

    import image_models

    folder = tmp_path_factory.mktemp("gen-models")
    sd = image_models.build_sd(folder / "tiny")
    net = image_models.build_controlnet(folder / "tiny")
    registry = ModelRegistry(folder / "models", budget_bytes=1 << 30)
    registry.add("tiny-sd", sd)
    registry.add("tiny-cn", net)
    saved = os.environ.get("NSTUDIO_MODELS_DIR")
    os.environ["NSTUDIO_MODELS_DIR"] = str(folder / "models")
    server = LoopbackServer(folder).start()
    try:
        yield server, sd, net
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("NSTUDIO_MODELS_DIR", None)
        else:
            os.environ["NSTUDIO_MODELS_DIR"] = saved


def _connect(enabled_addon, server):
    from blender_support import tick_until

    from addon.blender import session

    enabled_addon.endpoint = server.endpoint
    assert bpy.ops.nstudio.connect() == {"FINISHED"}
    tick_until(lambda: session.current().client.connected, 30, "the welcome", server)


def test_a_depth_controlnet_from_the_scene_over_the_wire(enabled_addon, tiny_server, tmp_path):
    """Depth source + tiny ControlNet -> server -> landed image == a direct diffusers
    StableDiffusionControlNetPipeline call with the same depth image."""
    from blender_support import tick_until

    server, sd, net = tiny_server
    scene, _cube = _tiny_scene(tmp_path)
    _connect(enabled_addon, server)
    settings = scene.nstudio_generate
    settings.model, settings.prompt, settings.steps, settings.seed = "tiny-sd", "a cube", 2, 4
    bpy.ops.nstudio.generate_controlnet_add(kind="DEPTH")
    settings.controlnets[0].model, settings.controlnets[0].scale = "tiny-cn", 0.8
    assert bpy.ops.nstudio.generate() == {"FINISHED"}
    image = tick_until(lambda: bpy.data.images.get("Generated 4"), 120, "the generated image",
                       server)
    assert tuple(image.size) == (W, H)
    landed = generate.image_to_srgb8(image)
    control = sources.depth_source(scene, size=(W, H))   # the same render, again

    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        sd, controlnet=ControlNetModel.from_pretrained(net))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt="a cube", image=Image.fromarray(control), num_inference_steps=2,
               guidance_scale=7.0, height=H, width=W, output_type="np",
               generator=[torch.Generator().manual_seed(4)],
               controlnet_conditioning_scale=0.8).images[0]
    np.testing.assert_array_equal(landed, np.round(np.clip(out, 0, 1) * 255).astype(np.uint8))
    # The control mattered: without the ControlNet the image differs.
    plain = pipe(prompt="a cube", image=Image.fromarray(control), num_inference_steps=2,
                 guidance_scale=7.0, height=H, width=W, output_type="np",
                 generator=[torch.Generator().manual_seed(4)],
                 controlnet_conditioning_scale=0.0).images[0]
    assert not np.array_equal(landed, np.round(np.clip(plain, 0, 1) * 255).astype(np.uint8))


def test_img2img_over_a_rendered_animation(enabled_addon, tiny_server, tmp_path):
    """Two frames rendered, each img2img'd with the same seed, written as an image sequence
    equal to direct diffusers img2img calls; a third run is cancelled mid-way."""
    from blender_support import tick_until

    server, sd, _net = tiny_server
    scene, _cube = _tiny_scene(tmp_path)
    _connect(enabled_addon, server)
    settings = scene.nstudio_generate
    settings.model, settings.prompt, settings.steps, settings.seed = "tiny-sd", "a cube", 2, 11
    settings.strength = 0.6
    settings.animation_output = str(tmp_path / "out")
    assert bpy.ops.nstudio.generate_animation() == {"FINISHED"}
    run = generate_animation.current_run()
    tick_until(lambda: generate_animation.step() is False and run.finished, 180,
               "the animation", server)
    assert run.state == "done", run.message
    assert (settings.animation_done, settings.animation_total) == (2, 2)

    import torch
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(sd)
    pipe.set_progress_bar_config(disable=True)
    written = []
    for frame in (1, 2):
        rendered = bpy.data.images.load(scene.render.frame_path(frame=frame))
        source = generate.image_to_srgb8(rendered)
        result = bpy.data.images.load(anim.frame_path(str(tmp_path / "out"), frame))
        assert tuple(result.size) == (W, H)
        written.append(generate.image_to_srgb8(result))
        out = pipe(prompt=["a cube"], image=[Image.fromarray(source)], strength=0.6,
                   num_inference_steps=2, guidance_scale=7.0, output_type="np",
                   generator=[torch.Generator().manual_seed(11)]).images[0]
        np.testing.assert_array_equal(written[-1],
                                      np.round(np.clip(out, 0, 1) * 255).astype(np.uint8))
    assert not np.array_equal(written[0], written[1])   # the cube moved

    # Cancel: a new run over three frames, cancelled as soon as its first job is in flight.
    scene.frame_end = 3
    settings.animation_output = str(tmp_path / "cancelled")
    assert bpy.ops.nstudio.generate_animation() == {"FINISHED"}
    run = generate_animation.current_run()
    generate_animation.step()
    assert run.current == 1 and run.job_key
    record = generate_animation._RECORD
    assert bpy.ops.nstudio.generate_animation_cancel() == {"FINISHED"}
    assert run.state == "cancelled" and settings.animation_state.startswith("cancelled")
    assert generate_animation.step() is False
    tick_until(lambda: record.finished, 60, "the cancelled frame's job", server)
    assert not os.path.exists(anim.frame_path(str(tmp_path / "cancelled"), 2))
    assert not os.path.exists(anim.frame_path(str(tmp_path / "cancelled"), 3))
