"""HiDream: ComfyUI's detection pins a 17 B-parameter model, so the tiny one is ComfyUI's own HiDream model class
and config built in-process at width 64 (`load_tiny_hidream`), fed precomputed conditioning of HiDream's text widths
(its encoders, Llama 3.1 8B and T5-XXL, are always full size). Same checks as the other families: the trainer's
loop runs on it, the file is in diffusers' PEFT naming with its architecture, ComfyUI's LoRA loader (LoraLoader's
call) loads every key, sampling changes, and diffusers' HiDream transformer loads the file with the same weight
updates."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lora_train.dev.tiny_families import TINY_HIDREAM, load_tiny_hidream
from lora_train.host.comfy_adapter import apply_lora
from tests.host.inprocess import assert_diffusers_adds_the_same_updates, sample_tiny, train_logged

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def hidream_trained(comfy_lib, family_models, style_dataset_dir, tmp_path_factory):
    """The tiny HiDream (MODEL, text stand-in, VAE), its training result and the log of the run."""
    model, text, vae = load_tiny_hidream(family_models)
    result, log = train_logged(model, text, vae, style_dataset_dir, tmp_path_factory.mktemp("hd"), "hidream")
    return model, text, vae, result, log


def test_hidream_trains_and_its_diffusers_named_file_loads_in_comfyui_and_changes_sampling(hidream_trained, caplog):
    model, clip, _, result, log = hidream_trained
    assert type(model.model.model_config).__name__ == "HiDream"
    assert "HiDream LoRA written in diffusers_same key naming" in log
    assert result.steps == 3
    with safe_open(str(result.lora_path), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert metadata["modelspec.architecture"] == "hidream-i1/lora"
    assert any(k.startswith("transformer.double_stream_blocks.0.block.attn1.to_q.") for k in keys), keys[:5]
    assert any(k.startswith("transformer.single_stream_blocks.0.block.") for k in keys), keys[:5]
    assert all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)

    with caplog.at_level(logging.WARNING):
        patched, _ = apply_lora(model, None, load_file(str(result.lora_path)), 1.0, 0.0)
    assert "lora key not loaded" not in caplog.text, caplog.text[-2000:]
    assert len(patched.patches) == len(keys) // 2, "every module of the file patches a weight"
    before, after = sample_tiny(model, clip), sample_tiny(patched, clip)
    assert torch.isfinite(after).all()
    assert (after - before).abs().mean() > 1e-3, "the HiDream LoRA did not change sampling"


def test_hidream_file_loads_in_diffusers_with_every_key_and_the_same_weight_updates(hidream_trained):
    from diffusers import HiDreamImagePipeline, HiDreamImageTransformer2DModel

    result = hidream_trained[3]
    config = {k: tuple(v) if k.endswith(("_rope", "_resolution")) else v for k, v in TINY_HIDREAM.items()}
    del config["image_model"]  # ComfyUI's selector; diffusers' class takes the same sizes by the same names
    with torch.device("meta"):
        transformer = HiDreamImageTransformer2DModel(**config)
    assert_diffusers_adds_the_same_updates(transformer, HiDreamImagePipeline, result.lora_path)
