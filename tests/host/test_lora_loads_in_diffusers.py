"""A LoRA trained on the tiny SD1.5 checkpoint loads through diffusers' own kohya path with no leftover key."""

import logging

import pytest
import torch

from lora_train.config import TrainConfig
from lora_train.data import load_dataset
from lora_train.host.comfy_adapter import ComfyHost
from lora_train.lora_io import load_lora
from lora_train.train import train_lora

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
