"""Tiny seeded models of the 2026 families (Wan, Qwen-Image, ...) that ComfyUI detects, for tests and benches.

Same rules as `tiny_models` (ComfyUI's own classes, fixed seeds, written once into the cache, never committed);
the smallest sizes detection accepts are in HOST.md ("Tiny 2026 families"). Text encoders: these families' real
encoders are multi-billion-parameter LLMs that ComfyUI always builds full size, so every tiny model here reads its
text width from the file and is fed the tiny CLIP-L (`CLIPLoader` type `stable_diffusion`, 768 wide, or `sd3`,
CLIP-L padded to 4096, where the width is fixed at 4096).

    python -m lora_train.dev.tiny_families /path/to/models [family ...]
"""

from __future__ import annotations

import argparse
import inspect
import logging
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from lora_train.dev.tiny_models import (
    CLIP_L_NAME,
    SEED,
    TAESD16_NAME,
    TINY_SD3_MMDIT,
    TinyModel,
    _generator,
    _init_,
    write_parts,
    write_tiny,
)

log = logging.getLogger(__name__)

WAN21_VAE_NAME = "tiny_wan21_vae.safetensors"
WAN22_VAE_NAME = "tiny_taew22_vae.safetensors"

# Wan: heads = dim / 128 and the text width is fixed at 4096 (UMT5-XXL): one 128-wide block.
TINY_WAN = {"dim": 128, "ffn_dim": 256, "num_layers": 1, "text_dim": 4096, "freq_dim": 256}

NEW_FAMILIES = (
    "lumina2",
    "zimage",
    "sd35_large",
    "sd35_medium",
    "chroma",
    "flux2",
    "qwen_image",
    "hunyuan_video",
    "wan21_t2v",
    "wan22_5b",
    "wan22_i2v",
    "wan21_i2v",
)
HUNYUAN_VAE_NAME = "tiny_taehv_hunyuan.safetensors"
# Lumina 2 / Z-Image (NextDiT): the width fixes the rest (2304: Lumina 2, 3840: Z-Image); one layer beside the two
# noise and two context refiner blocks; the caption width is read from the file (CLIP-L, 768).
TINY_LUMINA2 = {
    "patch_size": 2, "in_channels": 16, "dim": 2304, "n_layers": 1, "n_heads": 24, "n_kv_heads": 8,
    "axes_dims": [32, 32, 32], "axes_lens": [300, 512, 512], "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0,
    "qk_norm": True, "cap_feat_dim": 768,
}  # fmt: skip
TINY_ZIMAGE = {
    **TINY_LUMINA2, "dim": 3840, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True,
    "time_scale": 1000.0,
}  # fmt: skip
# HunyuanVideo: width read from img_in, heads = width / 128, text width from txt_in (CLIP-L, 768): ~2 M parameters.
TINY_HUNYUAN_VIDEO = {
    "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 768, "hidden_size": 128,
    "mlp_ratio": 4.0, "num_heads": 1, "depth": 1, "depth_single_blocks": 1, "axes_dim": [16, 56, 56], "theta": 256,
    "patch_size": [1, 2, 2], "qkv_bias": True, "guidance_embed": True, "byt5": False, "meanflow": False,
    "use_cond_type_embedding": False, "vision_in_dim": None, "meanflow_sum": False,
}  # fmt: skip
# Qwen-Image: width 3072 (24 heads of 128) and text width 3584 (Qwen2.5-VL 7B) are fixed: one block, ~380 M
# parameters; its text conditioning is precomputed (no CLIP loader yields 3584-wide text), see `QWEN_TEXT_WIDTH`.
QWEN_TEXT_WIDTH = 3584
FLUX2_VAE_NAME = "tiny_flux2_vae.safetensors"

# Chroma: Flux's blocks at the fixed width 3072 (its distilled guidance layer's output), one double block; the
# text width is read from txt_in, so CLIP-L (768) feeds it. ~500 M parameters, stored bf16.
TINY_CHROMA = {
    "in_channels": 64, "out_channels": 64, "context_in_dim": 768, "hidden_size": 3072, "mlp_ratio": 4.0,
    "num_heads": 24, "depth": 1, "depth_single_blocks": 0, "axes_dim": [16, 56, 56], "theta": 10000,
    "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5,
    "txt_ids_dims": [], "vec_in_dim": None,
}  # fmt: skip
# Flux 2: ComfyUI 0.33 reads the width from img_in and derives heads = width / 128: one 128-wide head, one double
# and one single block (~1 M parameters). 0.3.75 pins 48 heads (a 2.2 B model): Flux 2 is tested on 0.33 only.
TINY_FLUX2 = {
    "in_channels": 128, "out_channels": 128, "vec_in_dim": None, "context_in_dim": 768, "hidden_size": 128,
    "mlp_ratio": 3.0, "num_heads": 1, "depth": 1, "depth_single_blocks": 1, "axes_dim": [32, 32, 32, 32],
    "theta": 2000, "patch_size": 1, "qkv_bias": False, "guidance_embed": True, "txt_ids_dims": [3],
    "global_modulation": True, "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index",
    "ref_index_scale": 10.0,
}  # fmt: skip

_SD3_SPLIT = {"text_encoders": CLIP_L_NAME, "vae": TAESD16_NAME}

_FLUX_SPLIT = {"text_encoders": CLIP_L_NAME, "vae": TAESD16_NAME}
_MODELS = {
    "lumina2": TinyModel(
        "lumina2", "Lumina2", {"diffusion_models": "tiny_lumina2.safetensors", **_FLUX_SPLIT}, "stable_diffusion"
    ),
    "zimage": TinyModel(
        "zimage", "ZImage", {"diffusion_models": "tiny_zimage.safetensors", **_FLUX_SPLIT}, "stable_diffusion"
    ),
    # HunyuanVideo's VAE is a TAEHV stored in fp16 (ComfyUI tells HunyuanVideo's from Wan's taew by that dtype).
    "hunyuan_video": TinyModel(
        "hunyuan_video",
        "HunyuanVideo",
        {"diffusion_models": "tiny_hunyuan_video.safetensors", "text_encoders": CLIP_L_NAME, "vae": HUNYUAN_VAE_NAME},
        "stable_diffusion",
    ),
    # Qwen-Image takes the Wan 2.1 VAE; no text-encoder file (conditioning is precomputed).
    "qwen_image": TinyModel(
        "qwen_image", "QwenImage", {"diffusion_models": "tiny_qwen_image.safetensors", "vae": WAN21_VAE_NAME}
    ),
    "chroma": TinyModel(
        "chroma", "Chroma", {"diffusion_models": "tiny_chroma.safetensors", **_FLUX_SPLIT}, "stable_diffusion"
    ),
    # Flux 2's VAE: the encoder's width is fixed (84 M parameters), the decoder's is read from the file (narrow).
    "flux2": TinyModel(
        "flux2",
        "Flux2",
        {"diffusion_models": "tiny_flux2.safetensors", "text_encoders": CLIP_L_NAME, "vae": FLUX2_VAE_NAME},
        "stable_diffusion",
    ),
    # SD3.5: ComfyUI detects both as SD3; Large by its RMS q/k norms, Medium also by its second self-attention
    # (MMDiT-X) in the first blocks. Fed like the tiny SD3 (CLIP-L through CLIPLoader type `sd3`).
    "sd35_large": TinyModel(
        "sd35_large", "SD3", {"diffusion_models": "tiny_sd35_large.safetensors", **_SD3_SPLIT}, "sd3"
    ),
    "sd35_medium": TinyModel(
        "sd35_medium", "SD3", {"diffusion_models": "tiny_sd35_medium.safetensors", **_SD3_SPLIT}, "sd3"
    ),
    # Wan 2.1 T2V (1.3B/14B class): 16 latent channels, the Wan 2.1 VAE (its width is read from the file).
    "wan21_t2v": TinyModel(
        "wan21_t2v",
        "WAN21_T2V",
        {"diffusion_models": "tiny_wan21_t2v.safetensors", "text_encoders": CLIP_L_NAME, "vae": WAN21_VAE_NAME},
        "sd3",
    ),
    # Wan 2.2 A14B I2V: Wan 2.1's shapes with 36 input channels (latents + mask + start image) and no CLIP vision
    # embedding, which ComfyUI detects as WAN21_T2V; it samples from WanImageToVideo's start-image conditioning.
    "wan22_i2v": TinyModel(
        "wan22_i2v",
        "WAN21_T2V",
        {"diffusion_models": "tiny_wan22_i2v.safetensors", "text_encoders": CLIP_L_NAME, "vae": WAN21_VAE_NAME},
        "sd3",
    ),
    # Wan 2.1 I2V: as Wan 2.2 A14B I2V plus the CLIP vision image embedding (`img_emb`, 1280 wide: ViT-H's features),
    # which ComfyUI detects as WAN21_I2V; fed the tiny CLIP vision of `load_tiny_clip_vision`.
    "wan21_i2v": TinyModel(
        "wan21_i2v",
        "WAN21_I2V",
        {"diffusion_models": "tiny_wan21_i2v.safetensors", "text_encoders": CLIP_L_NAME, "vae": WAN21_VAE_NAME},
        "sd3",
    ),
    # Wan 2.2 TI2V 5B: 48 latent channels at 16x; its real VAE's width is fixed (1.4 GB), so the tiny one is a
    # TAEHV (taew2_2 layout), which ComfyUI 0.33 encodes with (0.3.75's TAEHV only decodes).
    "wan22_5b": TinyModel(
        "wan22_5b",
        "WAN22_T2V",
        {"diffusion_models": "tiny_wan22_5b.safetensors", "text_encoders": CLIP_L_NAME, "vae": WAN22_VAE_NAME},
        "sd3",
    ),
}


def _accepted(function: Callable, values: dict) -> dict:
    """The subset of `values` that `function` takes (constructors gained arguments between hosts)."""
    params = inspect.signature(function).parameters
    return {k: v for k, v in values.items() if k in params}


def _sd35_unet(medium: bool) -> dict[str, torch.Tensor]:
    """SD3.5 MMDiT (fp16): RMS q/k norms; Medium adds the x-block self-attention in its first block."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper, get_2d_sincos_pos_embed_torch

    config = {**TINY_SD3_MMDIT, "qk_norm": "rms", "x_block_self_attn_layers": [0] if medium else []}
    model = OpenAISignatureMMDITWrapper(**config, dtype=torch.float16, operations=comfy.ops.disable_weight_init)
    part = "sd35_medium" if medium else "sd35_large"
    _init_(model, _generator(part))
    size = config["pos_embed_max_size"]
    with torch.no_grad():
        model.pos_embed.copy_(get_2d_sincos_pos_embed_torch(model.hidden_size, size, size).reshape(1, size * size, -1))
    return dict(model.state_dict())


def _dataclass_fields(params_class: type, values: dict) -> dict:
    """The subset of `values` that the dataclass `params_class` declares (fields differ between hosts)."""
    import dataclasses

    declared = {field.name for field in dataclasses.fields(params_class)}
    return {name: value for name, value in values.items() if name in declared}


def _chroma_unet() -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.chroma.model import Chroma, ChromaParams

    config = _dataclass_fields(ChromaParams, TINY_CHROMA)
    model = Chroma(**config, dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init)
    _init_(model, _generator("chroma"))
    return dict(model.state_dict())


def _flux2_unet() -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.flux.model import Flux, FluxParams

    model = Flux(
        **_dataclass_fields(FluxParams, TINY_FLUX2), dtype=torch.float32, operations=comfy.ops.disable_weight_init
    )
    _init_(model, _generator("flux2"))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _flux2_vae() -> dict[str, torch.Tensor]:
    """Flux 2's VAE layout: a KL autoencoder with 32 latent channels and a batch norm over 2x2-packed latents."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 32, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
                "batch_norm_latent": True}  # fmt: skip
    vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=32, decoder_ddconfig={**ddconfig, "ch": 32})
    _init_(vae, _generator("flux2_vae"))
    return {k: v.float().contiguous() if v.is_floating_point() else v for k, v in vae.state_dict().items()}


def _qwen_image_unet() -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    model = QwenImageTransformer2DModel(num_layers=1, dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init)
    _init_(model, _generator("qwen_image"))
    return dict(model.state_dict())


def _nextdit_unet(config: dict, part: str) -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT

    model = NextDiT(
        **_accepted(NextDiT.__init__, config), dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init
    )
    _init_(model, _generator(part))
    return dict(model.state_dict())


def _hunyuan_video_unet() -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.hunyuan_video.model import HunyuanVideo, HunyuanVideoParams

    config = _dataclass_fields(HunyuanVideoParams, TINY_HUNYUAN_VIDEO)
    model = HunyuanVideo(**config, dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    _init_(model, _generator("hunyuan_video"))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _taehv(channels: int, dtype: torch.dtype, part: str) -> dict[str, torch.Tensor]:
    from comfy.taesd.taehv import TAEHV

    vae = TAEHV(latent_channels=channels)
    _init_(vae, _generator(part))
    return {k: v.to(dtype).contiguous() for k, v in vae.state_dict().items()}


def _wan_unet(channels: int, part: str, in_dim: int = 0, model_type: str = "t2v") -> dict[str, torch.Tensor]:
    """A tiny Wan model of `channels` latent channels (`in_dim` input channels: more for image-to-video; model type
    `i2v` adds the CLIP vision image embedding)."""
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    config = {**TINY_WAN, "model_type": model_type, "in_dim": in_dim or channels, "out_dim": channels, "num_heads": 1}
    model = WanModel(**config, dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    _init_(model, _generator(part))
    with torch.no_grad():  # adaLN modulation and its head are plain Parameters: small, so blocks start near identity
        for name, param in model.named_parameters():
            if name.endswith("modulation"):
                param.copy_(torch.randn(param.shape, generator=_generator(part + name)) * 0.02)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _wan21_vae() -> dict[str, torch.Tensor]:
    """A Wan 2.1 VAE 8 channels wide (ComfyUI reads the width from `decoder.head.0.gamma`)."""
    from comfy.ldm.wan.vae import WanVAE

    config = {"dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
              "temperal_downsample": [False, True, True], "dropout": 0.0}  # fmt: skip
    vae = WanVAE(**_accepted(WanVAE.__init__, config))
    _init_(vae, _generator("wan21_vae"))
    return {k: v.float().contiguous() for k, v in vae.state_dict().items()}


def _taew22() -> dict[str, torch.Tensor]:
    """TAEHV with 48 latent channels (fp32: fp16 would make ComfyUI take it for HunyuanVideo's)."""
    from comfy.taesd.taehv import TAEHV

    vae = TAEHV(latent_channels=48)
    _init_(vae, _generator("taew22"))
    return {k: v.float().contiguous() for k, v in vae.state_dict().items()}


_PARTS: dict[tuple[str, str], Callable[[], dict[str, torch.Tensor]]] = {
    ("diffusion_models", "tiny_chroma.safetensors"): _chroma_unet,
    ("diffusion_models", "tiny_lumina2.safetensors"): lambda: _nextdit_unet(TINY_LUMINA2, "lumina2"),
    ("diffusion_models", "tiny_zimage.safetensors"): lambda: _nextdit_unet(TINY_ZIMAGE, "zimage"),
    ("diffusion_models", "tiny_hunyuan_video.safetensors"): _hunyuan_video_unet,
    ("vae", HUNYUAN_VAE_NAME): lambda: _taehv(16, torch.float16, "taehv_hunyuan"),
    ("diffusion_models", "tiny_qwen_image.safetensors"): _qwen_image_unet,
    ("diffusion_models", "tiny_flux2.safetensors"): _flux2_unet,
    ("vae", FLUX2_VAE_NAME): _flux2_vae,
    ("diffusion_models", "tiny_sd35_large.safetensors"): lambda: _sd35_unet(medium=False),
    ("diffusion_models", "tiny_sd35_medium.safetensors"): lambda: _sd35_unet(medium=True),
    ("diffusion_models", "tiny_wan21_t2v.safetensors"): lambda: _wan_unet(16, "wan21_t2v"),
    ("diffusion_models", "tiny_wan22_5b.safetensors"): lambda: _wan_unet(48, "wan22_5b"),
    ("diffusion_models", "tiny_wan22_i2v.safetensors"): lambda: _wan_unet(16, "wan22_i2v", in_dim=36),
    ("diffusion_models", "tiny_wan21_i2v.safetensors"): lambda: _wan_unet(16, "wan21_i2v", 36, model_type="i2v"),
    ("vae", WAN21_VAE_NAME): _wan21_vae,
    ("vae", WAN22_VAE_NAME): _taew22,
}


class PrecomputedText:
    """Stands in for a CLIP whose encoder ComfyUI always builds full size (Qwen2.5-VL 7B; HiDream's Llama 3.1 8B +
    T5-XXL): each caption's conditioning is a fixed, seeded tensor of the family's text width, as if encoded once
    ahead of time, plus a seeded pooled vector (`pooled` wide) and HiDream's stack of Llama hidden states
    (`llama_layers` of them) where the family takes them. It has the CLIP methods Train LoRA and the samplers call
    (tokenize, encode_from_tokens, encode_from_tokens_scheduled)."""

    patcher = None
    cond_stage_model = None

    def __init__(self, width: int, tokens: int = 8, pooled: int = 0, llama_layers: int = 0):
        self.width, self.tokens, self.pooled, self.llama_layers = width, tokens, pooled, llama_layers

    def tokenize(self, text: str) -> str:
        return text

    def _outputs(self, text: str) -> tuple[torch.Tensor, dict]:
        generator = torch.Generator().manual_seed(SEED ^ zlib.crc32(text.encode()))
        cond = torch.randn((1, self.tokens, self.width), generator=generator)
        extra: dict = {"pooled_output": torch.randn((1, self.pooled), generator=generator) if self.pooled else None}
        if self.llama_layers:
            shape = (1, self.llama_layers, self.tokens, self.width)
            extra["conditioning_llama3"] = torch.randn(shape, generator=generator)
        return cond, extra

    def encode_from_tokens(self, tokens: str, return_pooled: bool = False, return_dict: bool = False):
        cond, extra = self._outputs(tokens)
        if return_dict:
            return {"cond": cond, **extra}
        return (cond, extra["pooled_output"]) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens: str) -> list:
        return [list(self._outputs(tokens))]


def load_with_precomputed_text(tiny: TinyModel, models_dir: str | Path, width: int) -> tuple:
    """(MODEL, PrecomputedText, VAE) of a tiny model without a text-encoder file, loaded as the UNET and VAE
    loaders load them (under inference mode)."""
    import comfy.sd
    import comfy.utils

    paths = tiny.paths(models_dir)
    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model(str(paths["diffusion_models"]))
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["vae"])))
    return model, PrecomputedText(width), vae


# HiDream: detection pins 16 double + 32 single MoE blocks at width 2560 (about 17 B parameters), so no file that
# ComfyUI detects as HiDream is small. The tiny one is built in-process from ComfyUI's own HiDream config and model
# class (`supported_models.HiDream`) at width 64, with the real text widths (T5 and Llama 4096, pooled CLIP-L + G
# 2048). Its encoders (Llama 3.1 8B, T5-XXL) are always full size, so it is fed precomputed conditioning.
TINY_HIDREAM = {
    "image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 1,
    "num_single_layers": 1, "attention_head_dim": 32, "num_attention_heads": 2, "axes_dims_rope": [16, 8, 8],
    "caption_channels": [4096, 4096], "text_emb_dim": 2048, "num_routed_experts": 4, "num_activated_experts": 2,
    "max_resolution": [128, 128], "llama_layers": [0, 1],
}  # fmt: skip


def load_tiny_hidream(models_dir: str | Path) -> tuple:
    """(MODEL, PrecomputedText, VAE) of a seeded tiny HiDream, loaded as the loader nodes load (under inference
    mode): ComfyUI's HiDream model and config built in-process (see TINY_HIDREAM), precomputed conditioning of
    HiDream's text widths, and the tiny 16-channel TAESD (HiDream's latents are Flux's)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.utils

    paths = write_tiny("sd3", models_dir).paths(models_dir)  # holds the 16-channel TAESD
    config = comfy.supported_models.HiDream(dict(TINY_HIDREAM))
    config.set_inference_dtype(torch.float32, None)
    seeded = config.get_model({})
    _init_(seeded.diffusion_model, _generator("hidream"))
    state = seeded.diffusion_model.state_dict()
    with torch.inference_mode():  # as ComfyUI's UNET loader: a fresh model, weights copied in
        base = config.get_model({})
        base.load_model_weights(state, "")
        model = comfy.model_patcher.ModelPatcher(base, mm.get_torch_device(), mm.unet_offload_device())
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["vae"])))
    text = PrecomputedText(4096, pooled=2048, llama_layers=len(TINY_HIDREAM["llama_layers"]))
    return model, text, vae


# ComfyUI's ViT-H CLIP vision (Wan's clip_vision_h) at two layers (the features are the penultimate layer's): its
# 1280-wide features are what Wan 2.1 I2V's image embedding reads. Detection needs the full 32 layers, so it is built
# in-process from ComfyUI's own class.
TINY_CLIP_VISION_H = {
    "hidden_act": "gelu", "hidden_size": 1280, "image_size": 224, "intermediate_size": 1280, "layer_norm_eps": 1e-5,
    "model_type": "clip_vision_model", "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 2,
    "patch_size": 14, "projection_dim": 1024,
}  # fmt: skip


def load_tiny_clip_vision(folder: str | Path):
    """A seeded tiny CLIP_VISION (ComfyUI's ClipVisionModel of TINY_CLIP_VISION_H; its config file goes in
    `folder`), as Load CLIP Vision gives it."""
    import json

    import comfy.clip_vision

    config = Path(folder) / "tiny_clip_vision_h.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(TINY_CLIP_VISION_H))
    clip_vision = comfy.clip_vision.ClipVisionModel(str(config))
    _init_(clip_vision.model, _generator("clip_vision_h"))
    return clip_vision


def tiny_any(family: str) -> TinyModel:
    """The descriptor of a 2026 family here, or of a `tiny_models` family."""
    from lora_train.dev.tiny_models import tiny_model

    return _MODELS[family] if family in _MODELS else tiny_model(family)


def write_tiny_any(family: str, models_dir: str | Path) -> TinyModel:
    """Write the missing files of `family` (a 2026 family here, else a `tiny_models` one); return its descriptor."""
    if family not in _MODELS:
        return write_tiny(family, models_dir)
    model = _MODELS[family]
    paths = model.paths(models_dir)
    own = {folder: path for folder, path in paths.items() if (folder, path.name) in _PARTS}
    if any(not path.is_file() for folder, path in paths.items() if folder not in own):
        write_tiny("sd3", models_dir)  # shared parts (tiny CLIP-L, TAESD) come from tiny_models' SD3
    write_parts(own, _PARTS, "lora_train.dev.tiny_families")
    return model


def main(argv: list[str] | None = None) -> int:
    """CLI: write tiny models of the given 2026 families (default all) under a models folder."""
    parser = argparse.ArgumentParser(prog="python -m lora_train.dev.tiny_families", description=main.__doc__)
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("families", nargs="*", metavar="family", help=f"any of {', '.join(NEW_FAMILIES)}")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH or the one this extension is in)")
    args = parser.parse_args(argv)
    from lora_train.host.bootstrap import import_comfy

    import_comfy(args.comfyui, cpu=True)
    for family in args.families or NEW_FAMILIES:
        model = write_tiny_any(family, args.models_dir)
        for path in model.paths(args.models_dir).values():
            print(f"{family}\t{path}\t{path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
