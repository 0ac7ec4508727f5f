"""Full-size model shapes for the benches, and a full-size SD1.5 checkpoint with random weights, for speed
comparisons at real shapes (never for quality).

UNet (859.5 M), VAE (AutoencoderKL, 83.7 M) and CLIP-L (123.1 M) are built with ComfyUI's own classes and its SD15
configuration, in the original single-file LDM layout (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.text_model.*`), so ComfyUI detects SD15 and kohya's loader matches every key.
Weights: N(0, 0.02) for tensors of two or more dimensions, 1 for norm weights, 0 for biases; stored fp16 (2.1 GB).
Written once into the cache, seeded, never committed.

    python -m lora_train.dev.full_models OUT.safetensors [--comfyui PATH]   # the SD1.5 checkpoint
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
from pathlib import Path

import torch

from lora_train.dev.tiny_models import TINY_SD15_UNET, TINY_SDXL_UNET, _init_, _write_safetensors

log = logging.getLogger(__name__)

FULL_SD15_NAME = "random_sd15_full.safetensors"
SEED = 1505
INIT_STD = 0.02  # N(0, 0.02) for tensors of two or more dimensions
# SD1.5's UNet in ComfyUI's UNetModel arguments: attention at the first three levels, none at the fourth.
FULL_SD15_UNET = {
    **TINY_SD15_UNET,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
}
# Full SDXL (ComfyUI's model_detection SDXL config: 2.57 B parameters).
FULL_SDXL_UNET = {
    **TINY_SDXL_UNET,
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10,
}
# ComfyUI's SD1.x VAE (comfy.sd.VAE's default ddconfig).
SD15_VAE = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def _half_state(module: torch.nn.Module, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    return {
        prefix + k: v.half().contiguous()
        for k, v in module.state_dict().items()
        if v.is_floating_point() and not k.startswith(skip)
    }


def full_sd15_state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (fp16), built part by part."""
    import comfy.clip_model
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    unet = UNetModel(**FULL_SD15_UNET, operations=comfy.ops.disable_weight_init)
    _init_(unet, generator, std=INIT_STD)
    state.update(_half_state(unet, "model.diffusion_model."))
    del unet
    gc.collect()
    vae = AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4)
    _init_(vae, generator, std=INIT_STD)
    state.update(_half_state(vae, "first_stage_model."))
    del vae
    config_path = Path(comfy.clip_model.__file__).parent / "sd1_clip_config.json"
    clip = comfy.clip_model.CLIPTextModel(
        json.loads(config_path.read_text()), torch.float32, "cpu", comfy.ops.disable_weight_init
    )
    _init_(clip, generator, std=INIT_STD)
    # SD1.5 files hold no text projection (kohya's loader is strict about it).
    state.update(_half_state(clip, "cond_stage_model.transformer.", skip=("text_projection",)))
    return state


def write_full_sd15(path: str | Path, seed: int = SEED) -> Path:
    """Write the checkpoint to `path` unless it exists; return the path."""
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    state = full_sd15_state_dict(seed)
    _write_safetensors(path, state, {"generator": "lora_train.dev.full_models", "seed": str(seed)})
    log.info("wrote %s (%.2f GB)", path, path.stat().st_size / 1e9)
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI: write the full-size random SD1.5 checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m lora_train.dev.full_models", description=main.__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH or the one this extension is in)")
    args = parser.parse_args(argv)
    from lora_train.host.bootstrap import import_comfy

    import_comfy(args.comfyui, cpu=True)
    print(write_full_sd15(args.path))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
