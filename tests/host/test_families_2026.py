"""The 2026 families and the generic path: tiny seeded models ComfyUI detects train through the same Train LoRA
node; the file is in the naming the family's ecosystem reads (ComfyUI's own for the generic path), LoraLoader
loads every key and gives the trained MODEL's output, and KSampler's output changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from lora_train.dev.host_builder import host_version
from lora_train.dev.workflows import lora_loader_sample, train_and_sample
from tests.host.test_families import _image

pytestmark = pytest.mark.host

GENERIC_LOG = "has no family entry: the LoRA is written in ComfyUI's own key naming"


def _diffusers_peft(key: str) -> bool:
    return key.startswith("transformer.transformer_blocks.") and key.endswith((".lora_A.weight", ".lora_B.weight"))


def _kohya_flux(key: str) -> bool:  # kohya's Flux layout (BFL module names)
    return key.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_"))


def _nextdit_peft(key: str) -> bool:  # PEFT keys over NextDiT's names under diffusion_model. (Lumina 2)
    blocks = ("diffusion_model.layers.", "diffusion_model.noise_refiner.", "diffusion_model.context_refiner.")
    return key.startswith(blocks) and key.endswith((".lora_A.weight", ".lora_B.weight"))


def _zimage_peft(key: str) -> bool:  # ai-toolkit's Z-Image layout: diffusers names (qkv split) under diffusion_model.
    return _nextdit_peft(key) and ".qkv." not in key


# Families with no tiny model on 0.3.75 (its detection pins Flux 2 at 48 heads; its TAEHV cannot encode).
NEWER_HOST_ONLY = {"flux2": "0.3.75 pins Flux 2 at 48 heads (a 2.2 B model)"}

# family -> (modelspec.architecture, a predicate every key must satisfy, the log line naming the naming)
CASES = {
    "sd35_large": ("stable-diffusion-3.5-large/lora", _diffusers_peft, "SD3 LoRA written in diffusers key naming"),
    "sd35_medium": ("stable-diffusion-3.5-medium/lora", _diffusers_peft, "SD3 LoRA written in diffusers key naming"),
    "chroma": ("chroma/lora", _kohya_flux, "Chroma LoRA written in kohya_ldm key naming"),
    "lumina2": ("lumina-2/lora", _nextdit_peft, "Lumina2 LoRA written in comfyui_peft key naming"),
    "zimage": ("z-image/lora", _zimage_peft, "ZImage LoRA written in diffusers_zimage key naming"),
    "flux2": ("flux-2-dev/lora", _kohya_flux, "Flux2 LoRA written in kohya_ldm key naming"),
    "wan21_t2v": (
        "wan-2.1-t2v/lora",
        lambda k: k.startswith("lora_unet_blocks_"),
        "WAN21_T2V LoRA written in kohya_ldm",
    ),
    # HunyuanVideo has no family entry: the generic path.
    "hunyuan_video": (
        "HunyuanVideo/lora",
        lambda k: k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks.")),
        GENERIC_LOG,
    ),
}


def _train_and_reload(comfy, tiny_family, dataset_dir, family: str, **overrides):
    """Train in the node graph, then LoraLoader on the file: (train result, loader result, file keys, metadata,
    the server log of both)."""
    tiny = tiny_family(family)
    name = f"family_{family}"
    loaders = tiny.loader_nodes(f"{family}_")
    log_start = len(comfy.log_text())
    settings = {"steps": 4, "batch_size": 1, "rank": 4, "sample_every": 4, "sample_steps": 2} | overrides
    result = comfy.run_workflow(train_and_sample(str(dataset_dir), loaders, output_name=name, **settings))
    with safe_open(str(comfy.models_dir / "loras" / f"{name}.safetensors"), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    loaded = comfy.run_workflow(lora_loader_sample(f"{name}.safetensors", loaders=loaders))
    return result, loaded, keys, metadata, comfy.log_text()[log_start:]


# ~1-2 min each on 2 CPU cores: Chroma ~500 M parameters, Lumina 2 ~420 M, Z-Image ~900 M, Flux 2's VAE encoder 84 M
SLOW = {"chroma", "flux2", "lumina2", "zimage"}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in CASES])
def test_2026_family_trains_in_the_node_and_loads_with_every_key(comfy, tiny_family, style_dataset_dir, family):
    if family in NEWER_HOST_ONLY and host_version() == "0.3.75":
        pytest.skip(NEWER_HOST_ONLY[family])
    architecture, key_ok, naming_log = CASES[family]
    result, loaded, keys, metadata, log = _train_and_reload(comfy, tiny_family, style_dataset_dir, family)
    assert [event["step"] for event in result.events_of("lora_train.train_sample")] == [4], "no preview"
    before, after = _image(comfy, result, "before_save"), _image(comfy, result, "after_save")
    assert np.abs(after - before).mean() > 0.5, f"the {family} LoRA did not change KSampler's output"
    assert keys and all(key_ok(k) for k in keys), [k for k in keys if not key_ok(k)][:5]
    assert metadata["modelspec.architecture"] == architecture
    assert json.loads(metadata["lora_train.config"])["output_name"] == f"family_{family}"
    assert naming_log in log
    assert "lora key not loaded" not in log, log[-3000:]
    difference = np.abs(_image(comfy, loaded, "loader_save") - after).max()
    assert difference <= 2.0, f"LoraLoader at strength 1 differs from Train LoRA's MODEL by {difference}"


@pytest.mark.parametrize("family", ["wan21_t2v", "hunyuan_video"])
def test_2026_families_train_with_the_text_encoder_off_the_device(
    comfy_lib, family_models, style_dataset_dir, tmp_path, family
):
    """Their text encoders (UMT5-XXL, LLaVA-Llama 3: multi-billion-parameter) are encoded once, then never resident."""
    import torch

    from lora_train.dataset.loading import load_dataset
    from lora_train.dev.tiny_families import write_tiny_any
    from lora_train.training import train_lora
    from lora_train.training.config import TrainConfig
    from tests.host.test_families import _WatchTextEncoder

    model, clip, vae = write_tiny_any(family, family_models).load(family_models)
    host = _WatchTextEncoder(model, clip, vae)
    cfg = TrainConfig.from_dict(
        {"rank": 4, "steps": 2, "batch_size": 1, "resolution": 64, "output_name": "te", "log_every": 1}
    )
    with torch.inference_mode():
        result = train_lora(cfg, load_dataset(style_dataset_dir), host, tmp_path)
    assert result.steps == 2 and all(np.isfinite(loss) for _, loss in result.loss_history)
    assert host.text_encoder_loaded == [False, False], "the text encoder stayed loaded during training"
