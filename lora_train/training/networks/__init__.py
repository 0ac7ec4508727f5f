"""Adapter networks: one adapter module per adapted Linear/Conv2d layer, one module per network family (`lora`:
LoRA, LoCon, DoRA; `lycoris`: LoHa, LoKr), and `adapter_set`: finding the layers to adapt, attaching adapters as
forward hooks beside the model, and reading and writing their kohya tensors."""

from lora_train.lazy import lazy_exports

EXPORTS = {
    "NETWORKS": "adapter_set",
    "AdapterSet": "adapter_set",
    "AdapterSpec": "adapter_set",
    "find_targets": "adapter_set",
    "kohya_te_prefix": "adapter_set",
    "kohya_unet_prefix": "adapter_set",
    "network_class": "adapter_set",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
