"""Tiny random-weight diffusion models built with the real diffusers/transformers classes.

Each builder saves a complete diffusers pipeline folder (``save_pretrained``: model_index.json,
one folder per component) that the registry then loads like a user's download. Weights are
random with a fixed seed; sizes are the smallest the classes accept, so a 32x32 image in two
steps takes well under a second on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

TEXT_DIM = 32
MAX_TOKENS = 16


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's byte-to-unicode table: 256 printable characters, one per byte."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer with a byte-level vocabulary and no merges, saved and reloaded
    (transformers 5 builds tokenizers from a folder, not from vocab_file=)."""
    from transformers import CLIPTokenizer

    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (raw / "vocab.json").write_text(json.dumps(vocab))
    (raw / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(raw, model_max_length=MAX_TOKENS)


def t5_tokenizer():
    """A T5 (unigram) tokenizer over single characters."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(ord("a"), ord("z") + 1)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=MAX_TOKENS)


def _clip_text(vocab: int, projection: bool = False, dim: int = TEXT_DIM):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=37,
                            num_hidden_layers=2, num_attention_heads=4, projection_dim=dim,
                            max_position_embeddings=MAX_TOKENS, bos_token_id=vocab - 2,
                            eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5(vocab: int, dim: int = TEXT_DIM):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=dim, d_kv=8, d_ff=37,
                                   num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                   decoder_start_token_id=0)).eval()


def _vae(latent_channels: int = 4, levels: int = 2, **extra):
    """A tiny AutoencoderKL; its factor is 2 ** (levels - 1): 2 by default, 8 (the real
    models' factor) with ``levels=4``."""
    from diffusers import AutoencoderKL

    channels = (8, 16, 16, 16)[:levels]
    return AutoencoderKL(block_out_channels=channels, in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=32,
                         **extra)


def _sd_pipeline(cls, folder: Path, seed: int, in_channels: int, vae_levels: int = 2):
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(folder / "_tok")
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=in_channels,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_DIM,
        norm_num_groups=4, attention_head_dim=4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False)
    return cls(vae=_vae(levels=vae_levels), text_encoder=_clip_text(len(tokenizer)),
               tokenizer=tokenizer, unet=unet,
               scheduler=scheduler, safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)


def build_sd(folder: Path, seed: int = 0, vae_levels: int = 2) -> Path:
    """Stable Diffusion 1.x layout: UNet2DConditionModel, AutoencoderKL, CLIP text, DDIM.

    ``vae_levels=4`` gives the real models' VAE factor, 8 (a 512x512 image is 64x64 latents),
    where large images are wanted at the real models' proportions (the benchmarks)."""
    from diffusers import StableDiffusionPipeline

    _sd_pipeline(StableDiffusionPipeline, folder, seed, in_channels=4,
                 vae_levels=vae_levels).save_pretrained(folder / "sd")
    return folder / "sd"


def build_sd_inpaint(folder: Path, seed: int = 0) -> Path:
    """A Stable Diffusion inpainting folder: the same parts with a 9-channel UNet (latents,
    mask, masked-image latents)."""
    from diffusers import StableDiffusionInpaintPipeline

    _sd_pipeline(StableDiffusionInpaintPipeline, folder, seed, in_channels=9).save_pretrained(
        folder / "inpaint")
    return folder / "inpaint"


def build_sdxl(folder: Path, seed: int = 0, text_dim_2: int = TEXT_DIM) -> Path:
    """SDXL layout: two CLIP text encoders (the second with projection, ``text_dim_2`` wide),
    added time ids."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(folder / "_tok")
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_DIM + text_dim_2,
        norm_num_groups=4, attention_head_dim=4, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=text_dim_2 + 6 * 8,
        transformer_layers_per_block=1, use_linear_projection=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", timestep_spacing="leading",
                                       steps_offset=1)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_clip_text(len(tokenizer)), tokenizer=tokenizer,
        text_encoder_2=_clip_text(len(tokenizer), projection=True, dim=text_dim_2),
        tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(folder / "sdxl")
    return folder / "sdxl"


def build_sd3(folder: Path, seed: int = 0, layers: int = 1) -> Path:
    """SD3 layout: an MMDiT transformer, two CLIP encoders with projection and T5.

    ``layers``: joint blocks. SD3 adds ControlNet residuals to every block but the last (whose
    context is not carried on), so a model for ControlNet tests needs 2."""
    import torch
    from diffusers import (FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(folder / "_tok")
    t5_tok = t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=16, num_layers=layers, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=TEXT_DIM, caption_projection_dim=32,
        pooled_projection_dim=2 * TEXT_DIM, out_channels=16, pos_embed_max_size=32)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        # 16 latent channels as the real SD3 VAE (its inpaint pipeline insists).
        vae=_vae(latent_channels=16, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=_clip_text(len(tokenizer), projection=True), tokenizer=tokenizer,
        text_encoder_2=_clip_text(len(tokenizer), projection=True), tokenizer_2=tokenizer,
        text_encoder_3=_t5(len(t5_tok)), tokenizer_3=t5_tok)
    pipe.save_pretrained(folder / "sd3")
    return folder / "sd3"


def build_flux(folder: Path, seed: int = 0) -> Path:
    """FLUX.1 layout: a double/single-stream transformer over packed 2x2 latents, CLIP + T5."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(folder / "_tok")
    t5_tok = t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
        axes_dims_rope=(2, 2, 4))
    pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                        vae=_vae(latent_channels=4, shift_factor=0.1159, scaling_factor=0.3611),
                        text_encoder=_clip_text(len(tokenizer)), tokenizer=tokenizer,
                        text_encoder_2=_t5(len(t5_tok)), tokenizer_2=t5_tok)
    pipe.save_pretrained(folder / "flux")
    return folder / "flux"


def build_controlnet(folder: Path, family: str = "sd", seed: int = 1, width: int = 1,
                     name: str = "", **extra) -> Path:
    """A ControlNet for one of the tiny models above, saved in ``folder/controlnet-<family>``
    (or ``folder/<name>``).

    ``sd``/``sdxl``: a ControlNetModel for the tiny UNets; its conditioning embedding brings
    the pixel-sized control image down by the tiny VAE's factor, 2 (one stride-2 step).
    ``sd3``/``flux``: an SD3ControlNetModel / FluxControlNetModel (InstantX layout: the
    pipeline VAE-encodes the control image) with the tiny transformer's sizes; ``width`` > 1
    multiplies its attention heads, making a ControlNet that does not fit that transformer;
    ``extra`` goes to their constructor (``num_mode=2``: a FLUX ControlNet-Union).
    """
    import torch

    torch.manual_seed(seed)
    if family in ("sd", "sdxl"):
        net = _unet_controlnet(family)
    elif family == "sd3":
        from diffusers import SD3ControlNetModel

        net = SD3ControlNetModel(
            sample_size=16, patch_size=1, in_channels=16, num_layers=1, attention_head_dim=8,
            num_attention_heads=4 * width, joint_attention_dim=TEXT_DIM,
            caption_projection_dim=32 * width, pooled_projection_dim=2 * TEXT_DIM,
            out_channels=16, pos_embed_max_size=32, **extra)
    elif family == "flux":
        from diffusers import FluxControlNetModel

        net = FluxControlNetModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
            attention_head_dim=8, num_attention_heads=2 * width, joint_attention_dim=TEXT_DIM,
            pooled_projection_dim=TEXT_DIM, axes_dims_rope=(2, 2, 4), **extra)
    else:
        raise ValueError(f"no tiny ControlNet for family {family!r}")
    # Zero convolutions/linears (and the condition embedding's output) start at zero (the
    # paper's trick): give them weights so the control image matters in the test.
    with torch.no_grad():
        for param in net.parameters():
            if not param.any():
                param.normal_(0, 0.3)
    path = folder / (name or f"controlnet-{family}")
    net.save_pretrained(path)
    return path


def _unet_controlnet(family: str):
    from diffusers import ControlNetModel

    cross = {"sd": TEXT_DIM, "sdxl": 2 * TEXT_DIM}[family]
    extra = {}
    if family == "sdxl":
        extra = dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=TEXT_DIM + 6 * 8,
                     use_linear_projection=True)
    return ControlNetModel(block_out_channels=(8, 16), layers_per_block=1, in_channels=4,
                           down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                           cross_attention_dim=cross, norm_num_groups=4, attention_head_dim=4,
                           conditioning_embedding_out_channels=(8, 16), **extra)


def build_lora(folder: Path, sd_folder: Path, seed: int = 2) -> Path:
    """A rank-4 LoRA on the tiny SD UNet's attention projections, saved as diffusers does
    (pytorch_lora_weights.safetensors), with non-zero B so that it changes the output."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    path = folder / "lora"
    StableDiffusionPipeline.save_lora_weights(
        path, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True)
    return path
