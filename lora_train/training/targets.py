"""Which layers of the diffusion model get adapters (the `targets` setting)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lora_train.training.config import TrainConfig

# "attention" targets: every linear layer inside these blocks (kohya's defaults: UNet transformer blocks for
# SD1/2/XL, the joint blocks of SD3's MMDiT, Flux's double- and single-stream blocks).
ATTENTION_CONTAINERS = (
    "SpatialTransformer",
    "SpatialVideoTransformer",
    "Transformer2DModel",
    "JointBlock",
    "DoubleStreamBlock",
    "SingleStreamBlock",
    "JointTransformerBlock",  # Lumina 2 / Z-Image (NextDiT): layers and the noise / context refiners
)
CONV_CONTAINERS = ("ResBlock", "Downsample", "Upsample", "VideoResBlock")


def repeated_blocks(root: torch.nn.Module) -> list[str]:
    """Paths of the blocks a transformer repeats (children of its ModuleLists: `blocks.0`, `layers.3`, ...), where
    the attention and MLP layers of any DiT live (its embedders and final layer stay out)."""
    return [
        f"{path}.{name}" if path else name
        for path, module in root.named_modules()
        if isinstance(module, torch.nn.ModuleList)
        for name, _ in module.named_children()
    ]


def target_filter(cfg: TrainConfig, root: torch.nn.Module) -> Callable[[str, torch.nn.Module], bool]:
    """Which layers of `root` get adapters, as `include(path, module)` for `networks.find_targets`. "attention" is
    every linear layer of the family's transformer blocks; in a model with none of the known block types (the
    generic path), of its repeated blocks."""
    attention = [n for n, m in root.named_modules() if type(m).__name__ in ATTENTION_CONTAINERS]
    attention = attention or repeated_blocks(root)
    conv = [n for n, m in root.named_modules() if type(m).__name__ in CONV_CONTAINERS]
    with_convs = cfg.targets == "attention_and_conv" or cfg.network == "locon"

    def inside(path: str, prefixes: list[str]) -> bool:
        return any(path.startswith(p + ".") for p in prefixes)

    def include(path: str, module: torch.nn.Module) -> bool:
        is_conv = isinstance(module, torch.nn.Conv2d)
        is_pointwise = isinstance(module, torch.nn.Linear) or (is_conv and tuple(module.kernel_size) == (1, 1))
        if is_pointwise and (cfg.targets == "all_linear" or inside(path, attention)):
            return True
        return with_convs and is_conv and inside(path, conv)

    return include
