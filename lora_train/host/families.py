"""Per-family knowledge at the edges of the one training loop: how each ComfyUI model family's LoRA files are named
(`FamilySupport.naming`), their preview CFG, whether captions are encoded once, and SDXL's size conditioning. A
family without an entry trains through the generic path (`family_support`): adapters on the diffusion model's
linear layers, the file in ComfyUI's own key naming."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lora_train.host.start_image import takes_start_image
from lora_train.training import TrainingError


@dataclass(frozen=True)
class FamilySupport:
    """How one model family (ComfyUI's model_config class) trains and how its LoRA files are named.

    naming: `kohya_diffusers` = kohya's SD1/SD2 keys (`lora_unet_down_blocks_0_attentions_0_...`, diffusers block
    names); `kohya_ldm` = `lora_unet_` + ComfyUI's own module path (kohya's SDXL keys with LDM block names, and
    kohya's Flux keys with BFL names, `lora_unet_double_blocks_0_img_attn_qkv`); `diffusers` = diffusers' PEFT keys
    (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, fused qkv split into q/k/v), for SD3, whose kohya
    keys diffusers cannot read; `diffusers_same` = diffusers' PEFT keys where ComfyUI's module paths are diffusers'
    own (`transformer.<path>.lora_A.weight`: Qwen-Image, HiDream); `comfyui_peft` = PEFT keys over ComfyUI's module
    paths (`diffusion_model.<path>.lora_A.weight`: Lumina 2, what diffusers' loader converts); `comfyui` = ComfyUI's
    own naming, what its built-in trainer writes (`diffusion_model.<path>.lora_down.weight`): the generic path, which
    other tools may not read.
    """

    architecture: str  # modelspec.architecture of the LoRA
    naming: str
    preview_cfg: float  # the CFG scale previews use when sample_cfg is 0 (the family's usual one)
    # T5-XXL families: captions are encoded once, before training, and the text encoders are never trained, so
    # the 4.8 B-parameter encoder is never resident next to the diffusion model.
    encode_once: bool = False
    generic: bool = False  # no per-family entry: trained through the generic path


FAMILIES: dict[str, FamilySupport] = {
    "SD15": FamilySupport("stable-diffusion-v1/lora", "kohya_diffusers", 7.0),
    "SD20": FamilySupport("stable-diffusion-v2-768-v/lora", "kohya_diffusers", 7.0),  # -512 when it predicts eps
    "SDXL": FamilySupport("stable-diffusion-xl-v1-base/lora", "kohya_ldm", 7.0),
    "SD3": FamilySupport("stable-diffusion-3/lora", "diffusers", 5.0, encode_once=True),
    "Flux": FamilySupport("flux-1-dev/lora", "kohya_ldm", 1.0, encode_once=True),
    "FluxSchnell": FamilySupport("flux-1-schnell/lora", "kohya_ldm", 1.0, encode_once=True),
    # Chroma is Flux.1 schnell's blocks without the pooled vector: kohya's Flux keys (sd-scripts trains Chroma into
    # the same BFL-named `lora_unet_double_blocks_...` layout, and Flux LoRA loaders read it). T5-XXL: encode once.
    "Chroma": FamilySupport("chroma/lora", "kohya_ldm", 4.0, encode_once=True),
    # Flux 2 keeps Flux's BFL module names: kohya's layout, as musubi-tuner writes it. Mistral 24B: encode once.
    "Flux2": FamilySupport("flux-2-dev/lora", "kohya_ldm", 1.0, encode_once=True),
    # Qwen-Image: ComfyUI's module paths are diffusers' own, so the file is diffusers' PEFT layout
    # (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`), what diffusers' QwenImage loader, ai-toolkit and
    # DiffSynth read and write. Qwen2.5-VL 7B: encode once.
    "QwenImage": FamilySupport("qwen-image/lora", "diffusers_same", 4.0, encode_once=True),
    # Wan: kohya's layout over Wan's own module names (`lora_unet_blocks_0_self_attn_q`), as musubi-tuner writes it;
    # ComfyUI and diffusers' Wan loader read it. UMT5-XXL: encode once. Wan 2.2 A14B has 2.1's shapes (and class).
    # Lumina 2: PEFT keys over its NextDiT names under `diffusion_model.` (`diffusion_model.layers.0.attention.qkv.
    # lora_A.weight`), the layout diffusers' Lumina2 loader converts (with the default all-linear targets: it wants
    # every block's qkv, out, w1-w3 and modulation) and ComfyUI reads. Gemma 2B: encode once.
    "Lumina2": FamilySupport("lumina-2/lora", "comfyui_peft", 4.0, encode_once=True),
    # Z-Image (incl. Turbo): diffusers' Z-Image names under `diffusion_model.` (qkv split into to_q/to_k/to_v), the
    # layout ai-toolkit writes and diffusers' ZImage loader and ComfyUI's key map read. Qwen3 4B: encode once.
    "ZImage": FamilySupport("z-image/lora", "diffusers_zimage", 1.0, encode_once=True),
    # HiDream: ComfyUI's module paths are diffusers' own (its key map reads `transformer.<path>`, SimpleTuner's
    # layout), so diffusers' PEFT keys, what diffusers' HiDream loader and ai-toolkit read. Llama 3.1 8B + T5-XXL +
    # CLIP-L/G: encode once. Preview CFG 5, HiDream-I1 Full's (Dev and Fast sample at 1: set `sample_cfg`).
    "HiDream": FamilySupport("hidream-i1/lora", "diffusers_same", 5.0, encode_once=True),
    "WAN21_T2V": FamilySupport("wan-2.1-t2v/lora", "kohya_ldm", 5.0, encode_once=True),
    # Wan 2.1 I2V: each clip's first frame is its start image, with its CLIP vision features (host/start_image.py).
    "WAN21_I2V": FamilySupport("wan-2.1-i2v/lora", "kohya_ldm", 5.0, encode_once=True),
    "WAN22_T2V": FamilySupport("wan-2.2-ti2v-5b/lora", "kohya_ldm", 5.0, encode_once=True),
}

# The generic path's preview CFG: the middle of what the flow-matching families sample with (Wan 5, Qwen-Image 4,
# HunyuanVideo 6); previews are a glimpse, `sample_cfg` sets it.
GENERIC_PREVIEW_CFG = 4.0


# Families that sample only with conditioning the trainer does not build yet (a start image, control video, audio):
# the generic path would feed them text alone and fail inside the model, so they are refused by name.
NEEDS_CONDITIONING = {
    "WAN21_FunControl2V": "its control video",
    "WAN21_Vace": "its VACE control inputs",
    "WAN22_S2V": "its audio conditioning",
    "WAN22_Animate": "its pose and face conditioning",
    "WAN21_Camera": "its camera-motion conditioning",
    "WAN22_Camera": "its camera-motion conditioning",
}


def family_support(model, family: str) -> FamilySupport:
    """The family's entry, or the generic path for any other model ComfyUI detects and can sample. Refuses, naming
    the family, a model that cannot train: no noise schedule (`model_sampling`: an inference-only model)."""
    if family in FAMILIES:
        return FAMILIES[family]
    if family in NEEDS_CONDITIONING:
        raise TrainingError(
            f"ComfyUI detected this model as {family}: training it needs {NEEDS_CONDITIONING[family]}, which Train "
            "LoRA does not build yet. Train on the text-to-video model of the same release instead. Nothing was "
            "trained."
        )
    base = model.model
    if getattr(base, "model_sampling", None) is None or not isinstance(base.diffusion_model, torch.nn.Module):
        raise TrainingError(
            f"ComfyUI detected this model as {family}, which has no noise schedule (model_sampling): it is not a "
            "diffusion model ComfyUI samples, so it cannot be trained as one. Connect a diffusion model's MODEL. "
            "Nothing was trained."
        )
    # Text encoders of such models are unknown (often multi-billion-parameter LLMs): captions are encoded once.
    return FamilySupport(f"{family}/lora", "comfyui", GENERIC_PREVIEW_CFG, encode_once=True, generic=True)


def model_family(model) -> str:
    """ComfyUI's name for the model's family (its model_config class), e.g. SD15, SDXL, Flux."""
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "diffusion_model"):
        raise TrainingError("the MODEL input is not a diffusion model; connect a checkpoint or UNet loader's MODEL")
    return type(base.model_config).__name__


def size_conditioning(original: tuple[int, int], bucket: tuple[int, int]) -> dict[str, int]:
    """SDXL's micro-conditioning for an image of `original` (w, h) trained at `bucket`: its original size, the
    top-left corner `fit_to_bucket` crops at (in resized pixels, as kohya records it) and the target size."""
    (w, h), (bw, bh) = original, bucket
    scale = max(bw / w, bh / h)
    resized_w, resized_h = max(bw, round(w * scale)), max(bh, round(h * scale))
    return {
        "width": w,
        "height": h,
        "crop_w": (resized_w - bw) // 2,
        "crop_h": (resized_h - bh) // 2,
        "target_width": bw,
        "target_height": bh,
    }


def architecture(model, family: str, support: FamilySupport) -> str:
    """modelspec.architecture of a LoRA for this model: the family's, told apart where one ComfyUI family holds
    several releases (SD2 512/768-v by its prediction; SD3 / SD3.5 Large / SD3.5 Medium by its blocks; Wan 2.1 T2V /
    Wan 2.2 A14B I2V by its input channels)."""
    if family == "SD20" and not predicts_v(model):
        return "stable-diffusion-v2-512/lora"
    if family == "WAN21_T2V" and takes_start_image(model):
        return "wan-2.2-i2v-a14b/lora"  # Wan 2.2 A14B I2V: Wan 2.1's blocks, a start image, no CLIP vision
    if family == "SD3":
        unet = model.model.model_config.unet_config
        if unet.get("x_block_self_attn_layers"):  # MMDiT-X
            return "stable-diffusion-3.5-medium/lora"
        if unet.get("qk_norm"):
            return "stable-diffusion-3.5-large/lora"
    return support.architecture


def predicts_v(model) -> bool:
    import comfy.model_sampling

    return isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION)
