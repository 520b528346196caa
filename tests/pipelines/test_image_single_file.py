"""``image.generate`` from single-file ``.safetensors`` checkpoints (the A1111/ComfyUI habit).

The tiny random models of image_models.py are written as one file in the original LDM layout
(tests/single_file_ckpt.py, the inverse of diffusers' converter) with their config folder
beside it, and loaded through the registry like a user's download: by path, or by a name
added with ``nstudio models add``. The reference is the same weights loaded as a diffusers
folder, called directly with the same prompt, seed and steps: the images must be equal.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import image_models
import single_file_ckpt
from addon.wire.schema import PipelineError, parse_params
from pipelines.image import generate
from recording_job import RecordingJob
from server.models import ModelRegistry

SIZE = 32
PROMPT = "a red cube"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{"sd": folder, "sd-file": checkpoint, "sdxl": folder, "sdxl-file": checkpoint}."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    root = tmp_path_factory.mktemp("single-file")
    sd = image_models.build_sd(root / "sd")
    sdxl = single_file_ckpt.build_sdxl_distinct(root / "sdxl")
    return {
        "sd": sd, "sdxl": sdxl,
        "sd-file": single_file_ckpt.write_single_file(
            sd, root / "checkpoints" / "tiny-sd.safetensors", StableDiffusionPipeline),
        "sdxl-file": single_file_ckpt.write_single_file(
            sdxl, root / "checkpoints" / "tiny-sdxl.safetensors", StableDiffusionXLPipeline),
    }


def _direct(folder, pipeline, seed=7, num_images=1):
    """The reference: a plain diffusers call of the pipeline loaded from the diffusers folder."""
    import diffusers
    import torch

    pipe = getattr(diffusers, pipeline).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=PROMPT, num_inference_steps=2, guidance_scale=7.0, height=SIZE,
               width=SIZE, output_type="np", num_images_per_prompt=num_images,
               generator=[torch.Generator().manual_seed(seed + i) for i in range(num_images)])
    return np.round(np.clip(out.images, 0, 1) * 255).astype(np.uint8)


def _run(registry, **values):
    params = parse_params(generate.Params, {"prompt": PROMPT, "steps": 2, "width": SIZE,
                                            "height": SIZE, "seed": 7, **values})
    generate.check({}, params)
    models = registry.acquire(generate.PIPELINE, params)
    try:
        return generate.run({}, params, RecordingJob(), models), models["pipe"].pipe
    finally:
        models.close()


def _variant(checkpoint: Path, name: str, edit) -> Path:
    """A copy of ``checkpoint`` (with its config folder) whose tensors ``edit`` changed."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(checkpoint))
    edit(tensors)
    target = checkpoint.with_name(f"{name}.safetensors")
    save_file(tensors, str(target))
    shutil.copytree(checkpoint.with_suffix(".config"), target.with_suffix(".config"))
    return target


def test_the_file_is_in_the_ldm_layout(tiny):
    from safetensors import safe_open

    with safe_open(str(tiny["sd-file"]), "pt") as handle:
        keys = set(handle.keys())
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    for key in ("model.diffusion_model.input_blocks.0.0.weight",       # conv_in
                "model.diffusion_model.input_blocks.2.0.op.weight",    # block 0's downsampler
                "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.output_blocks.1.2.conv.weight",  # upsampler after attention
                "model.diffusion_model.output_blocks.3.0.skip_connection.weight",
                "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.up.1.upsample.conv.weight",  # diffusers' up block 0
                "first_stage_model.encoder.mid.attn_1.q.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        assert key in keys, key
    with safe_open(str(tiny["sd-file"]), "pt") as handle:    # attention as 1x1 convolutions
        assert handle.get_slice("first_stage_model.decoder.mid.attn_1.k.weight").get_shape() == [
            16, 16, 1, 1]
    # Nothing but configs in the folder beside it: the weights can only come from the file.
    config = tiny["sd-file"].with_suffix(".config")
    assert (config / "model_index.json").is_file()
    assert not [p for p in config.rglob("*") if p.suffix in (".safetensors", ".bin")]


def test_sd_over_the_wire_by_name_and_path_equals_the_diffusers_folder(tiny, tmp_path):
    """`nstudio models add` names the file; the server generates from it (and from its path,
    without a second load) exactly what diffusers makes from the folder; a checkpoint missing
    a tensor is a clear error naming the file, and the server keeps serving."""
    from server_harness import serving

    models_dir = tmp_path / "models"
    # What `nstudio models add my-checkpoint FILE` runs (server/cli.py; the command itself is
    # tested by test_image_generate's wire test, so no second CLI process here).
    ModelRegistry(models_dir).add("my-checkpoint", tiny["sd-file"])
    broken = _variant(tiny["sd-file"], "broken",
                      lambda t: t.pop("model.diffusion_model.out.2.weight"))
    with serving(tmp_path, "--models-dir", str(models_dir)) as (server, client):
        params = {"prompt": PROMPT, "steps": 2, "width": SIZE, "height": SIZE, "seed": 7,
                  "num_images": 2}
        events = {}
        for ref in ("my-checkpoint", str(broken), str(tiny["sd-file"])):
            accepted = client.submit("image.generate", params=dict(params, model=ref))
            assert accepted["type"] == "accepted", accepted
            events[ref] = client.events(accepted["job"], timeout=120)
        expected = _direct(tiny["sd"], "StableDiffusionPipeline", num_images=2)
        for ref in ("my-checkpoint", str(tiny["sd-file"])):
            assert events[ref][-1]["type"] == "result", events[ref][-1]
            np.testing.assert_array_equal(events[ref][-1]["outputs"]["images"], expected)
        error = events[str(broken)][-1]
        assert error["type"] == "error" and error["code"] == "invalid_params", error
        assert str(broken) in error["message"]
        assert "lacks 1 tensor(s) of the unet (UNet2DConditionModel), e.g. conv_out.weight" in (
            error["message"])
        log = server.log()
        assert log.count("loading pipe from") == 2, log   # the good file once, the broken one


def test_sdxl_single_file_equals_the_diffusers_folder(tiny, tmp_path):
    import torch

    registry = ModelRegistry(tmp_path / "models", budget_bytes=1 << 30)
    out, pipe = _run(registry, model=str(tiny["sdxl-file"]))
    np.testing.assert_array_equal(out["images"],
                                  _direct(tiny["sdxl"], "StableDiffusionXLPipeline"))
    # Every tensor of every component came over unchanged (not only enough to match 32x32).
    from diffusers import StableDiffusionXLPipeline

    folder = StableDiffusionXLPipeline.from_pretrained(tiny["sdxl"])
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(pipe, name).state_dict(), getattr(folder, name).state_dict()
        assert mine.keys() == theirs.keys(), name
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), name


def test_broken_checkpoints_get_clear_errors_naming_the_file(tiny, tmp_path):
    registry = ModelRegistry(tmp_path / "models", budget_bytes=1 << 30)
    sd = tiny["sd-file"]

    def renamed(tensors, old, new):
        tensors[new] = tensors.pop(old)

    cases = [
        # A key renamed (garbled): the VAE's attention query has no tensor.
        (_variant(sd, "garbled-vae", lambda t: renamed(
            t, "first_stage_model.decoder.mid.attn_1.q.weight",
            "first_stage_model.decoder.mid.attn_1.query.weight")),
         "lacks 1 tensor(s) of the vae (AutoencoderKL), e.g. "
         "decoder.mid_block.attentions.0.to_q.weight"),
        (_variant(sd, "no-final-norm", lambda t: t.pop(
            "cond_stage_model.transformer.text_model.final_layer_norm.weight")),
         "lacks 1 tensor(s) of the text_encoder (CLIPTextModel), e.g. final_layer_norm.weight"),
        # A whole component missing, and no weights in the config folder to fall back on.
        (_variant(sd, "no-text-encoder", lambda t: [
            t.pop(k) for k in list(t) if k.startswith("cond_stage_model.")]),
         "Failed to load CLIPTextModel. Weights for this component appear to be missing"),
        # A checkpoint that does not fit its config (another model's sizes).
        (_variant(sd, "wrong-shape", lambda t: t.__setitem__(
            "model.diffusion_model.out.2.weight",
            t["model.diffusion_model.out.2.weight"][:, :4].contiguous())),
         "conv_out.weight expected shape"),
    ]
    # An SDXL file beside an SD 1.x config folder.
    mismatched = tmp_path / "sdxl-with-sd-config.safetensors"
    shutil.copy(tiny["sdxl-file"], mismatched)
    shutil.copytree(sd.with_suffix(".config"), mismatched.with_suffix(".config"))
    cases.append((mismatched, "Stable Diffusion XL checkpoint but its config folder "
                              f"{mismatched.with_suffix('.config')} is a StableDiffusionPipeline"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    cases.append((garbage, "not a readable .safetensors file"))
    for path, message in cases:
        with pytest.raises(PipelineError) as error:
            _run(registry, model=str(path))
        assert error.value.code == "invalid_params", error.value
        assert error.value.detail == {"field": "params.model"}
        assert str(path) in error.value.message and message in error.value.message, (
            error.value.message)
    # The registry still serves the intact file afterwards.
    assert _run(registry, model=str(sd))[0]["images"].shape == (1, SIZE, SIZE, 3)


def test_the_inverse_conversion_holds_at_full_size():
    """The writer is not tuned to the tiny models: at SD 1.5's and SDXL's real layouts (empty
    tensors on the meta device, no memory) diffusers' own converters undo it exactly."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    with init_empty_weights():
        sd15 = UNet2DConditionModel(cross_attention_dim=768, layers_per_block=2)
        sdxl = UNet2DConditionModel(
            block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
            use_linear_projection=True)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4)
    cases = [(sd15, single_file_ckpt.unet_to_ldm, convert_ldm_unet_checkpoint,
              "model.diffusion_model."),
             (sdxl, single_file_ckpt.unet_to_ldm, convert_ldm_unet_checkpoint,
              "model.diffusion_model."),
             (vae, single_file_ckpt.vae_to_ldm, convert_ldm_vae_checkpoint, "first_stage_model.")]
    for model, to_ldm, from_ldm, prefix in cases:
        state = model.state_dict()
        ldm = {prefix + k: v for k, v in to_ldm(state, model.config).items()}
        back = from_ldm(ldm, model.config)
        assert back.keys() == state.keys()
        assert all(back[k].shape == state[k].shape for k in state)
    # SD 1.5's last output block, a key diffusers itself looks for to recognise SD 1.x files.
    assert "output_blocks.11.0.skip_connection.weight" in single_file_ckpt.unet_to_ldm(
        sd15.state_dict(), sd15.config)
