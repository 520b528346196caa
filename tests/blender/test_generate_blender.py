"""The Generate feature in real bpy: settings on the scene, a result landing as packed images,
one click to a material texture, and the img2img source taken from a real render."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon.blender import generate  # noqa: E402
from addon.core.jobs import JobRecord  # noqa: E402


def _drain(steps):
    return list(steps) if steps is not None else []


def test_settings_and_new_seed(blender_addon):
    settings = bpy.context.scene.nstudio_generate
    assert settings.steps == 30 and settings.source == "NONE" and settings.use_render_size
    settings.seed = 0
    assert bpy.ops.nstudio.generate_new_seed() == {"FINISHED"}
    assert settings.seed != 0   # 1 in 2**31 to fail
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 1000, 750
    scene.render.resolution_percentage = 50
    assert generate.output_size(scene, settings) == (504, 376)


def test_a_result_lands_as_packed_images_and_one_becomes_a_texture(blender_addon):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    job = JobRecord(request_id="r1", pipeline="image.generate", id="j1")
    steps = _drain(generate.on_generate_result(job, {"images": images,
                                                     "seeds": np.array([5, 6], np.int64)}))
    assert steps == ["Generated 5", "Generated 6", "done"] and job.target == "Generated 5"
    for seed, wire in zip((5, 6), images):
        image = bpy.data.images[f"Generated {seed}"]
        assert tuple(image.size) == (40, 24) and image.packed_file is not None
        assert image[generate.PROP_SEED] == seed
        # Back through the add-on's own reader: the same sRGB bytes, row 0 at the top.
        np.testing.assert_array_equal(generate.image_to_srgb8(image), wire)

    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    assert bpy.ops.nstudio.generate_use_as_texture(image="Generated 6") == {"FINISHED"}
    material = cube.active_material
    texture = next(n for n in material.node_tree.nodes if n.type == "TEX_IMAGE")
    assert texture.image.name == "Generated 6"
    shader = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert shader.inputs["Base Color"].links[0].from_node == texture
    # Once more: the same node is reused, not a second one added.
    generate.use_as_texture(cube, bpy.data.images["Generated 5"])
    assert [n.image.name for n in material.node_tree.nodes if n.type == "TEX_IMAGE"] == [
        "Generated 5"]
    with pytest.raises(RuntimeError, match="no image 'nope'"):
        bpy.ops.nstudio.generate_use_as_texture(image="nope")


def test_a_painted_mask_image_becomes_the_inpaint_mask(blender_addon):
    image = bpy.data.images.new("mask", 6, 4)
    pixels = np.zeros((4, 6, 4), np.float32)
    pixels[..., 3] = 1.0
    pixels[0, :3, :3] = 1.0          # Blender's bottom row, left half painted white
    image.pixels.foreach_set(pixels.reshape(-1))
    mask = generate.image_to_mask8(image)
    assert mask.shape == (4, 6) and mask.dtype == np.uint8
    assert mask[3].tolist() == [255, 255, 255, 0, 0, 0] and not mask[:3].any()
    settings = bpy.context.scene.nstudio_generate
    settings.loras = "detail:0.5"
    assert settings.as_dict()["loras"] == "detail:0.5"


def test_the_render_source_is_the_rendered_frame(blender_addon):
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False   # a uniform world needs no denoiser (it smears edges)
    scene.cycles.device = "CPU"
    scene.render.resolution_x, scene.render.resolution_y = 24, 16
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    if scene.world.node_tree is None:
        scene.world.use_nodes = True
    background = scene.world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (1.0, 0.0, 0.0, 1.0)   # pure red, linear
    background.inputs["Strength"].default_value = 1.0
    for obj in list(scene.objects):
        if obj.type != "CAMERA":
            bpy.data.objects.remove(obj)
    wire = generate.render_result_srgb8(scene)
    assert wire.shape == (16, 24, 3) and wire.dtype == np.uint8
    # The camera sees only the red world: sRGB red, nothing else.
    assert (wire[..., 0] >= 250).all() and (wire[..., 1:] <= 5).all()


def test_generate_over_the_wire_lands_the_servers_image(enabled_addon, tmp_path, monkeypatch):
    """Panel settings -> nstudio.generate -> a real server with a tiny model -> a Blender image
    equal to a direct diffusers call."""
    from blender_support import LoopbackServer, tick_until

    from addon.blender import session
    from server.models import ModelRegistry

    import image_models

    folder = image_models.build_sd(tmp_path / "tiny")
    ModelRegistry(tmp_path / "models", budget_bytes=1 << 30).add("tiny-sd", folder)
    monkeypatch.setenv("NSTUDIO_MODELS_DIR", str(tmp_path / "models"))
    server = LoopbackServer(tmp_path).start()
    try:
        enabled_addon.endpoint = server.endpoint
        assert bpy.ops.nstudio.connect() == {"FINISHED"}
        tick_until(lambda: session.current().client.connected, 30, "the welcome", server)
        settings = bpy.context.scene.nstudio_generate
        settings.model, settings.prompt, settings.steps, settings.seed = "tiny-sd", "a cube", 2, 3
        settings.use_render_size, settings.width, settings.height = False, 32, 24
        assert bpy.ops.nstudio.generate() == {"FINISHED"}
        image = tick_until(lambda: bpy.data.images.get("Generated 3"), 120,
                           "the generated image", server)
        assert tuple(image.size) == (32, 24) and image[generate.PROP_SEED] == 3
        landed = generate.image_to_srgb8(image)
    finally:
        server.stop()

    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt="a cube", num_inference_steps=2, guidance_scale=7.0, height=24, width=32,
               generator=[torch.Generator().manual_seed(3)], output_type="np").images[0]
    np.testing.assert_array_equal(landed, np.round(np.clip(out, 0, 1) * 255).astype(np.uint8))
