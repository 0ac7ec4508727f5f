"""LoRA key naming for the families whose ecosystems read other names than kohya's `lora_unet_<module path>`:
kohya's diffusers-style block names for SD1/SD2 UNets, diffusers' PEFT keys for SD3 and Qwen-Image (derived from
ComfyUI's own key maps, the ones its LoRA loader reads those files with), and ComfyUI's own naming
(`diffusion_model.<module path>`) for the generic path."""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def to_diffusers_peft(
    tensors: dict[str, torch.Tensor], pieces: dict[str, list[tuple[str, Any, Any]]], prefix: str = "transformer."
) -> dict[str, torch.Tensor]:
    """kohya LoRA tensors -> diffusers PEFT keys (`transformer.<module>.lora_A/lora_B.weight`, alpha/rank folded
    into lora_B). A fused weight (SD3's qkv) becomes one LoRA per diffusers module, sharing lora_A, each with its
    rows of lora_B (exact: the product of each pair is those rows of the fused update); `function` re-orders rows
    as ComfyUI's key map does (SD3's last adaLN). Tensors that are not plain LoRA (LyCORIS types), or modules with
    no diffusers name, stay in kohya naming, which ComfyUI loads too."""
    prefixes = {key.split(".", 1)[0] for key in tensors}
    plain = all(
        key.split(".", 1)[1] in ("lora_down.weight", "lora_up.weight", "alpha") and key.split(".", 1)[0] in pieces
        for key in tensors
    )
    if not plain:
        log.warning("LoRA kept in kohya naming: diffusers keys exist only for plain LoRA on mapped modules")
        return tensors
    out: dict[str, torch.Tensor] = {}
    for kohya in sorted(prefixes):
        down, up = tensors[f"{kohya}.lora_down.weight"], tensors[f"{kohya}.lora_up.weight"]
        alpha = tensors.get(f"{kohya}.alpha")
        scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
        for name, offset, function in pieces[kohya]:
            rows = up * scale
            if offset is not None:
                dim, start, size = offset
                rows = rows.narrow(dim, start, size)
            if function is not None:
                rows = function(rows)
            out[f"{prefix}{name}.lora_A.weight"] = down.contiguous()
            out[f"{prefix}{name}.lora_B.weight"] = rows.contiguous()
    return out


def same_name_pieces(root: torch.nn.Module) -> dict[str, list[tuple[str, Any, Any]]]:
    """Every module under its own path: for families whose ComfyUI module paths are diffusers' (Qwen-Image)."""
    return {path: [(path, None, None)] for path, _ in root.named_modules() if path}


def to_comfyui_names(tensors: dict[str, torch.Tensor], paths: dict[str, str]) -> dict[str, torch.Tensor]:
    """kohya LoRA tensors -> ComfyUI's own naming, `diffusion_model.<module path>.<suffix>` (what its built-in
    trainer writes and its LoRA loader maps for every model); `paths` is kohya prefix -> module path."""
    out = {}
    for key, tensor in tensors.items():
        kohya, _, suffix = key.partition(".")
        out[f"diffusion_model.{paths[kohya]}.{suffix}" if kohya in paths else key] = tensor
    return out


def diffusers_pieces(base, mapper: str = "mmdit_to_diffusers") -> dict[str, list[tuple[str, Any, Any]]]:
    """ComfyUI module path -> [(diffusers module path, (dim, start, size) rows or None, row function or None)], from
    ComfyUI's own key map (`comfy.utils.<mapper>`: SD3's MMDiT, Z-Image's NextDiT), the one its LoRA loader reads
    diffusers files with."""
    import comfy.utils

    mapping = getattr(comfy.utils, mapper)(base.model_config.unet_config, output_prefix="")
    pieces: dict[str, list[tuple[str, Any, Any]]] = {}
    for diffusers_key, target in mapping.items():
        if isinstance(target, str):
            key, offset, function = target, None, None
        else:
            key, offset, function = target[0], target[1], target[2] if len(target) > 2 else None
        if diffusers_key.endswith(".weight") and key.endswith(".weight"):
            pieces.setdefault(key[: -len(".weight")], []).append((diffusers_key[: -len(".weight")], offset, function))
    return pieces


def diffusers_names(base) -> dict[str, str]:
    """LDM module path -> diffusers module path for UNet models (kohya's naming for SD1/SD2/SDXL LoRAs)."""
    import comfy.utils

    unet_config = getattr(base.model_config, "unet_config", {})
    mapping = comfy.utils.unet_to_diffusers(unet_config) if "num_res_blocks" in unet_config else {}
    return {
        ldm[: -len(".weight")]: diff[: -len(".weight")] for diff, ldm in mapping.items() if ldm.endswith(".weight")
    }
