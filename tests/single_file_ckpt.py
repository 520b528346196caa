"""Single-file checkpoints (the A1111/ComfyUI habit) written from a tiny diffusers folder.

A user's ``.safetensors`` checkpoint holds the whole model in the original LDM/CompVis key
layout (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*`` or SDXL's
``conditioner.embedders.0/1.*``). diffusers only converts that layout *to* its own; the tests
need the inverse to build such a file from the tiny random models of ``image_models.py``.
``to_ldm`` below is that inverse, written from the layouts themselves:

- UNet: ``conv_in`` is ``input_blocks.0.0``; down block ``b``'s layer ``l`` is input block
  ``1 + b*(L+1) + l`` (``.0`` the resnet, ``.1`` the transformer), its downsampler the
  ``(L+1)``-th slot (``.0.op``); the middle is ``middle_block.0/1/2`` (resnet, transformer,
  resnet); up block ``b``'s layer ``l`` (``L+1`` of them) is output block ``b*(L+1) + l``, its
  upsampler ``.1.conv`` or ``.2.conv`` after a transformer; ``L`` = ``layers_per_block``.
  Resnets name their layers ``in_layers.0/2``, ``out_layers.0/3``, ``emb_layers.1``,
  ``skip_connection``; transformers keep diffusers' names.
- VAE: ``{encoder.down,decoder.up}.i.block.j`` resnets (the decoder counts its blocks from
  the bottom, so diffusers' up block ``i`` is LDM's ``n-1-i``), ``mid.block_1/2`` and
  ``mid.attn_1`` whose q/k/v/proj_out are 1x1 convolutions (weights ``(C, C, 1, 1)``).
- CLIP-L text encoder: ``cond_stage_model.transformer.text_model.*`` with transformers' names.
- OpenCLIP (SDXL's second encoder): ``resblocks.N`` with a fused ``attn.in_proj_weight``
  (q, k, v stacked), ``ln_1/2``, ``mlp.c_fc/c_proj``, ``positional_embedding``,
  ``ln_final`` and ``text_projection`` stored transposed.

Each tensor is renamed (and reshaped) only; the values stay bit-identical, so a pipeline
loaded from the file must give exactly the images of the folder it came from.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

#: diffusers resnet layer -> LDM (UNet ``ResBlock``; the VAE keeps the names but the shortcut).
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                  "to_out.0": "proj_out"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0",
             "conv_out": "out.2"}


def _rename(key: str, table: dict) -> str:
    """``key`` with its leading module path replaced by the table's entry for it."""
    for old, new in table.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    raise KeyError(key)


def unet_to_ldm(state: dict, config) -> dict:
    """UNet2DConditionModel state dict -> LDM ``UNetModel`` keys (no ``model.diffusion_model.``
    prefix). ``config``: the UNet's config (``layers_per_block`` an int, as SD/SDXL have)."""
    per = int(config["layers_per_block"]) + 1     # LDM slots per block: layers + resampler
    up_attention = {int(m.group(1)) for k in state
                    if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {}
    for key, value in state.items():
        m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)"
                     r"\.(\d+)\.(.*)", key)
        mid = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
        if m:
            side, block, part, layer, rest = m.groups()
            block, layer = int(block), int(layer)
            if part in ("downsamplers", "upsamplers"):
                layer = per - 1            # the resampler takes the block's last slot
            if side == "down":
                slot = f"input_blocks.{1 + block * per + layer}"
                head = {"resnets": f"{slot}.0", "attentions": f"{slot}.1",
                        "downsamplers": f"{slot}.0.op"}[part]
                rest = rest.removeprefix("conv.") if part == "downsamplers" else rest
            else:
                slot = f"output_blocks.{block * per + layer}"
                up = f"{slot}.{2 if block in up_attention else 1}"
                head = {"resnets": f"{slot}.0", "attentions": f"{slot}.1", "upsamplers": up}[part]
        elif mid:
            part, layer, rest = mid.groups()
            head = f"middle_block.{2 * int(layer) if part == 'resnets' else 1}"
        else:
            out[_rename(key, _UNET_TOP)] = value
            continue
        if part == "resnets":
            rest = _rename(rest, _UNET_RESNET)
        out[f"{head}.{rest}"] = value
    return out


def vae_to_ldm(state: dict, config) -> dict:
    """AutoencoderKL state dict -> LDM ``AutoencoderKL`` keys (no ``first_stage_model.``)."""
    n_up = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.",
                     r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.",
                     lambda m: f"decoder.up.{n_up - 1 - int(m.group(1))}."
                               f"{'block' if m.group(2) == 'resnets' else 'upsample'}.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.",
                     lambda m: f"mid.block_{int(m.group(1)) + 1}.", new)
        attention = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$",
                             new)
        if attention:
            coder, layer, kind = attention.groups()
            new = f"{coder}.mid.attn_1.{_VAE_ATTENTION[layer]}.{kind}"
            if kind == "weight" and layer != "group_norm":
                value = value.reshape(*value.shape, 1, 1)   # linear -> the original 1x1 conv
        out[new] = value
    return out


def clip_to_ldm(state: dict) -> dict:
    """transformers CLIPTextModel(WithProjection) -> ``text_model.*`` keys as the LDM checkpoint
    stores them under ``cond_stage_model.transformer.`` (CLIPTextModel is flat in
    transformers >= 5.6; the key names gain their ``text_model.`` back)."""
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}


def open_clip_to_ldm(state: dict) -> dict:
    """CLIPTextModelWithProjection -> OpenCLIP keys (SDXL's ``conditioner.embedders.1.model.``)."""
    import torch

    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {"token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           "text_projection": state.pop("text_projection.weight").T.contiguous()}
    layers = sorted({int(m.group(1)) for k in state
                     if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    for n in layers:
        src, dst = f"encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"])
    names = {"final_layer_norm": "ln_final", "self_attn.out_proj": "attn.out_proj",
             "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
             "mlp.fc2": "mlp.c_proj"}
    for key, value in state.items():
        m = re.match(r"encoder\.layers\.(\d+)\.(.*)", key)
        if m:
            out[f"transformer.resblocks.{m.group(1)}.{_rename(m.group(2), names)}"] = value
        elif not key.endswith("position_ids"):
            out[_rename(key, names)] = value
    return out


def to_ldm(pipe) -> dict:
    """A whole SD 1.x/2.x (CLIP-L) or SDXL pipeline as one LDM-layout state dict."""
    out = {f"model.diffusion_model.{k}": v
           for k, v in unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config).items()}
    out.update({f"first_stage_model.{k}": v
                for k, v in vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items()})
    if getattr(pipe, "text_encoder_2", None) is None:
        out.update({f"cond_stage_model.transformer.{k}": v
                    for k, v in clip_to_ldm(pipe.text_encoder.state_dict()).items()})
    else:
        out.update({f"conditioner.embedders.0.transformer.{k}": v
                    for k, v in clip_to_ldm(pipe.text_encoder.state_dict()).items()})
        out.update({f"conditioner.embedders.1.model.{k}": v
                    for k, v in open_clip_to_ldm(pipe.text_encoder_2.state_dict()).items()})
    return {k: v.contiguous() for k, v in out.items()}


def config_folder(folder: Path, target: Path) -> Path:
    """``folder`` (a diffusers pipeline) without its weight files: the configs, tokenizers and
    scheduler a single-file checkpoint is loaded with (as a user copies from the base model)."""
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return target


def write_single_file(folder: Path, checkpoint: Path, pipeline_class) -> Path:
    """The diffusers pipeline ``folder`` saved as one LDM-layout ``checkpoint`` (.safetensors),
    with its config folder beside it (``<stem>.config/``, where image.generate looks)."""
    from safetensors.torch import save_file

    pipe = pipeline_class.from_pretrained(folder)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_ldm(pipe), str(checkpoint))
    config_folder(folder, checkpoint.with_suffix(".config"))
    return checkpoint


def build_sdxl_distinct(folder: Path, seed: int = 0) -> Path:
    """A tiny SDXL whose two text encoders differ in width (32 and 48), as CLIP-L (768) and
    OpenCLIP bigG (1280) do: diffusers tells the two apart in a single file by that width, so
    image_models.build_sdxl's default (both 32 wide) cannot round-trip through one."""
    import image_models as im

    return im.build_sdxl(folder, seed, text_dim_2=im.TEXT_DIM + 16)
