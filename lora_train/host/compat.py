"""Which ComfyUI the trainer runs on, and whether it has every API the host adapter uses. Checked when a Train
node starts, before any work: a ComfyUI older than the oldest tested one (or one that dropped an API) gets a
message naming the missing API and the versions that work, never a traceback from deep inside ComfyUI."""

from __future__ import annotations

import importlib

# Tested hosts (lora_train.dev.host_builder pins them); the README states the same range.
OLDEST_TESTED = "0.3.75"
NEWEST_TESTED = "0.33.0"

# Module attributes the adapter calls (each exists on both tested hosts). Optional ones are probed where used
# (`model_management.in_training`, `soft_empty_cache`, `load_models_gpu(force_full_load=)`).
REQUIRED_APIS = (
    "comfy.model_management.load_models_gpu",
    "comfy.model_management.current_loaded_models",
    "comfy.model_management.throw_exception_if_processing_interrupted",
    "comfy.model_sampling.V_PREDICTION",
    "comfy.sample.sample",
    "comfy.sample.prepare_noise",
    "comfy.sample.fix_empty_latent_channels",
    "comfy.sd.load_lora_for_models",
    "comfy.sd.load_diffusion_model",
    "comfy.sd.load_clip",
    "comfy.sd.VAE",
    "comfy.utils.ProgressBar",
    "comfy.utils.unet_to_diffusers",
    "comfy.utils.mmdit_to_diffusers",
    "comfy.utils.load_torch_file",
    "comfy.model_patcher.ModelPatcher.get_model_object",
    "comfy.model_patcher.ModelPatcher.clone",
)


class HostTooOld(RuntimeError):
    """This ComfyUI lacks an API the trainer needs; the message names it and the versions that work."""


def comfyui_version() -> str:
    """ComfyUI's own version string, or "unknown" (trees without comfyui_version.py predate 0.3)."""
    try:
        return str(importlib.import_module("comfyui_version").__version__)
    except (ImportError, AttributeError):
        return "unknown"


def missing_apis(required: tuple[str, ...] = REQUIRED_APIS) -> list[str]:
    """The dotted names in `required` this ComfyUI does not have."""
    missing = []
    for dotted in required:
        parts = dotted.split(".")
        found = None
        for split in range(len(parts) - 1, 0, -1):  # the longest importable module prefix, then attributes
            try:
                found = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            for attribute in parts[split:]:
                found = getattr(found, attribute, None)
            break
        if found is None:
            missing.append(dotted)
    return missing


def check_host(required: tuple[str, ...] = REQUIRED_APIS) -> None:
    """Raise HostTooOld when this ComfyUI lacks any of `required`."""
    missing = missing_apis(required)
    if missing:
        raise HostTooOld(
            f"this ComfyUI ({comfyui_version()}) lacks {', '.join(missing)}, which LoRA training uses; update "
            f"ComfyUI to {OLDEST_TESTED} or newer (tested: {OLDEST_TESTED} to {NEWEST_TESTED}). Nothing was trained."
        )
