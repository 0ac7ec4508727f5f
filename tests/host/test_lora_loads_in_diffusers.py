"""A LoRA trained on the tiny SD1.5 checkpoint loads through diffusers' own kohya path with no leftover key."""

import logging

import pytest
import torch

from lora_train.dataset.loading import load_dataset
from lora_train.host.comfy_adapter import ComfyHost
from lora_train.training import train_lora
from lora_train.training.config import TrainConfig
from lora_train.training.lora_io import load_lora

pytestmark = pytest.mark.host


def _tiny_diffusers_unet():
    """diffusers' UNet with the tiny checkpoint's layout: one level (320 ch), one res+attention block per side."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(320,),
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=768,
        attention_head_dim=8,
    )


@pytest.mark.parametrize("network", ["lora", "locon"])
def test_trained_lora_loads_in_diffusers_with_no_leftover_keys(tiny_checkpoint, style_dataset_dir, tmp_path, network):
    from diffusers import StableDiffusionPipeline

    model, clip, vae = tiny_checkpoint
    cfg = TrainConfig.from_dict(
        {
            "network": network,
            "targets": "attention_and_conv",
            "rank": 4,
            "alpha": 2,
            "steps": 2,
            "batch_size": 2,
            "resolution": 64,
            "output_name": network,
        }
    )
    with torch.inference_mode():
        result = train_lora(cfg, load_dataset(style_dataset_dir), ComfyHost(model, clip, vae), tmp_path)
    tensors, _ = load_lora(result.lora_path)
    modules_in_file = {key.split(".")[0] for key in tensors}

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(handler)
    try:
        unet = _tiny_diffusers_unet()
        state_dict, alphas = StableDiffusionPipeline.lora_state_dict(dict(tensors))
        unet_keys = {k for k in state_dict if k.startswith("unet.")}
        assert unet_keys and len(unet_keys) == len(state_dict), f"not converted: {set(state_dict) - unet_keys}"
        StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, unet=unet, adapter_name="ours")
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    leftovers = [m for m in messages if "unexpected" in m.lower() or "not found" in m.lower()]
    assert not leftovers, leftovers
    from peft.tuners.lora import LoraLayer

    lora_layers = [name for name, module in unet.named_modules() if isinstance(module, LoraLayer)]
    assert len(lora_layers) == len(modules_in_file), (len(lora_layers), len(modules_in_file))


# ---- SD3 (diffusers PEFT keys) and Flux (kohya keys with BFL names) -------------------------------------------
def _tiny_diffusers_transformer(family: str):
    """diffusers' transformer with the tiny family model's layout (lora_train.dev.tiny_models)."""
    if family == "sd3":  # MMDiT depth 2: hidden 128, 2 heads of 64, T5-width context, CLIP-L+G pooled width
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel(
            sample_size=32,
            patch_size=2,
            in_channels=16,
            num_layers=2,
            attention_head_dim=64,
            num_attention_heads=2,
            joint_attention_dim=4096,
            caption_projection_dim=128,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=64,
        )
    from diffusers import FluxTransformer2DModel  # one double block, CLIP-L-width text input

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=0,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=768,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )


@pytest.mark.parametrize("family", ["sd3", pytest.param("flux_dev", marks=pytest.mark.slow)])
def test_flow_family_loras_load_in_diffusers_into_every_layer(comfy_lib, style_dataset_dir, tmp_path, family):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline
    from peft.tuners.lora import LoraLayer

    from lora_train.dev import host_builder
    from lora_train.dev.tiny_models import write_tiny

    models = host_builder.models_dir()
    model, clip, vae = write_tiny(family, models).load(models)
    cfg = TrainConfig.from_dict(
        {"rank": 4, "alpha": 2, "steps": 1, "batch_size": 1, "resolution": 64, "output_name": family}
    )
    with torch.inference_mode():
        result = train_lora(cfg, load_dataset(style_dataset_dir), ComfyHost(model, clip, vae), tmp_path)
    tensors, _ = load_lora(result.lora_path)

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(handler)
    try:
        transformer = _tiny_diffusers_transformer(family)
        if family == "sd3":
            state_dict = StableDiffusion3Pipeline.lora_state_dict(dict(tensors))
            StableDiffusion3Pipeline.load_lora_into_transformer(state_dict, transformer=transformer, adapter_name="o")
        else:
            state_dict, alphas = FluxPipeline.lora_state_dict(dict(tensors), return_alphas=True)
            FluxPipeline.load_lora_into_transformer(state_dict, alphas, transformer=transformer, adapter_name="o")
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert state_dict and all(k.startswith("transformer.") for k in state_dict), "not converted to diffusers keys"
    leftovers = [m for m in messages if "unexpected" in m.lower() or "not found" in m.lower()]
    assert not leftovers, leftovers
    loaded = {name for name, module in transformer.named_modules() if isinstance(module, LoraLayer)}
    expected = {k[len("transformer.") : -len(".lora_A.weight")] for k in state_dict if k.endswith(".lora_A.weight")}
    assert loaded == expected, sorted(loaded ^ expected)[:5]
    if family == "sd3":  # the fused qkv of each joint block became q, k and v
        assert {"transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k"} <= loaded
