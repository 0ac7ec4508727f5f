"""Tiny, seeded checkpoints that ComfyUI detects as real model families, for tests, the demo and the benches.

Built with ComfyUI's own classes (so the shapes are right by construction) and random weights from a fixed seed;
written once into the cache and reused. Nothing here is ever committed.

    python -m lora_train.host.tiny_models /path/to/models   # writes checkpoints/tiny_sd15.safetensors
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import torch

from lora_train.fsutil import atomic_write

log = logging.getLogger(__name__)

TINY_SD15_NAME = "tiny_sd15.safetensors"
SEED = 20261130
# One level, one ResBlock, one transformer block per input/output block, no middle block: the smallest UNet
# ComfyUI's detection still calls SD15 (model_channels 320, context_dim 768, conv proj_in, 4 latent channels).
TINY_SD15_UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1],
    "channel_mult": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "transformer_depth_middle": -2,
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "legacy": False,
}


def _init_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Explicit init (ComfyUI's ops skip it): fan-in scaled normals, unit norms, zero biases."""
    for name, param in module.named_parameters():
        with torch.no_grad():
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:
                param.fill_(1.0)
            else:
                fan_in = math.prod(param.shape[1:])
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))


def tiny_sd15_state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    """UNet + TAESD VAE + full-size CLIP-L (ComfyUI always builds CLIP-L at full size) as one SD1.5 checkpoint."""
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from transformers import CLIPTextConfig, CLIPTextModel

    generator = torch.Generator().manual_seed(seed)
    unet = UNetModel(**TINY_SD15_UNET, operations=comfy.ops.disable_weight_init)
    _init_(unet, generator)
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    _init_(vae, generator)

    clip_config_path = Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json"
    clip_config = CLIPTextConfig(
        **{k: v for k, v in json.loads(clip_config_path.read_text()).items() if k != "architectures"}
    )
    torch.manual_seed(seed)
    clip = CLIPTextModel(clip_config)

    state = {f"model.diffusion_model.{k}": v.float().contiguous() for k, v in unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v.float().contiguous() for k, v in vae.state_dict().items()})
    state.update({f"cond_stage_model.transformer.{k}": v.half().contiguous() for k, v in clip.state_dict().items()})
    return state


def write_tiny_sd15(models_dir: str | Path, seed: int = SEED) -> Path:
    """Write `checkpoints/tiny_sd15.safetensors` under `models_dir` if missing; return its path."""
    from safetensors.torch import save

    path = Path(models_dir) / "checkpoints" / TINY_SD15_NAME
    if path.is_file():
        return path
    state = tiny_sd15_state_dict(seed)
    with atomic_write(path) as handle:
        handle.write(save(state, metadata={"generator": "lora_train.host.tiny_models", "seed": str(seed)}))
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(write_tiny_sd15(sys.argv[1] if len(sys.argv) > 1 else "models"))
