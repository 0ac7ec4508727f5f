"""Files of the 2026 families whose naming diffusers has a loader for (Wan: musubi-tuner's kohya keys; Z-Image:
ai-toolkit's `diffusion_model.` keys) load into diffusers' own transformer with every module adapted and the same
weight updates ComfyUI's loader adds. (Qwen-Image's: tests/host/test_families_precomputed.py. Chroma, Flux 2 and
Lumina 2 files use kohya layouts diffusers converts for Flux.1 only; not checked here.)"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lora_train.dataset.loading import load_dataset
from lora_train.dev.tiny_families import write_tiny_any
from lora_train.host.comfy_adapter import ComfyHost
from lora_train.training import train_lora
from lora_train.training.config import TrainConfig

pytestmark = pytest.mark.host


def _trained_file(family: str, models, dataset_dir, out) -> dict[str, torch.Tensor]:
    model, clip, vae = write_tiny_any(family, models).load(models)
    cfg = TrainConfig.from_dict({"rank": 4, "alpha": 2, "steps": 2, "resolution": 64, "output_name": family,
                                 "learning_rate": 1e-2})  # fmt: skip
    with torch.inference_mode():
        result = train_lora(cfg, load_dataset(dataset_dir), ComfyHost(model, clip, vae), out)
    return load_file(str(result.lora_path))


def _comfy_updates(tensors: dict[str, torch.Tensor]) -> list[float]:
    """The norm of the weight update ComfyUI's loader adds per file module (B @ A, times alpha / rank if stored)."""
    norms = []
    for key in tensors:
        for down, up in ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight")):
            if key.endswith(down):
                prefix = key[: -len(down)]
                a, b = tensors[key].float(), tensors[prefix + up].float()
                alpha = tensors.get(prefix + ".alpha")
                scale = float(alpha) / a.shape[0] if alpha is not None else 1.0
                norms.append(float((b @ a).norm()) * scale)
    return sorted(norms)


def _diffusers_updates(transformer, state: dict) -> tuple[int, list[float]]:
    transformer.load_lora_adapter(state, prefix="transformer", adapter_name="trained")
    adapted = [m for m in transformer.modules() if "trained" in getattr(m, "lora_A", {})]
    return len(adapted), sorted(float(m.get_delta_weight("trained").float().norm()) for m in adapted)


@pytest.mark.parametrize("family", ["wan21_t2v", pytest.param("zimage", marks=pytest.mark.slow)])
def test_family_file_loads_in_diffusers_with_every_module_and_the_same_updates(
    comfy_lib, family_models, style_dataset_dir, tmp_path, family
):
    from diffusers import WanPipeline, WanTransformer3DModel, ZImagePipeline, ZImageTransformer2DModel

    tensors = _trained_file(family, family_models, style_dataset_dir, tmp_path)
    with torch.device("meta"):  # the tiny model's shapes; its weights do not change what the LoRA adds
        if family == "wan21_t2v":
            transformer = WanTransformer3DModel(
                num_attention_heads=1, attention_head_dim=128, ffn_dim=256, num_layers=1
            )
            pipeline = WanPipeline
        else:
            transformer = ZImageTransformer2DModel(n_layers=1, cap_feat_dim=768)
            pipeline = ZImagePipeline
    transformer = transformer.to_empty(device="cpu")
    state = pipeline.lora_state_dict(tensors.copy())
    count, updates = _diffusers_updates(transformer, state)
    expected = _comfy_updates(tensors)
    assert count == len(expected) > 0, f"diffusers adapted {count} modules, the file has {len(expected)}"
    torch.testing.assert_close(torch.tensor(updates), torch.tensor(expected), rtol=1e-4, atol=1e-7)
