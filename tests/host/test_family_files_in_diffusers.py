"""Files of the 2026 families whose naming diffusers has a loader for (Wan: musubi-tuner's kohya keys; Z-Image:
ai-toolkit's `diffusion_model.` keys; Lumina 2: PEFT keys over its NextDiT names; Chroma and Flux 2: kohya's
BFL-named keys) load into diffusers' own transformer with every module adapted and the same weight updates
ComfyUI's loader adds. (Qwen-Image's and HiDream's: tests/host/test_families_precomputed.py,
test_family_hidream.py.)"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lora_train.dataset.loading import load_dataset
from lora_train.dev.host_builder import host_version
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


def _transformer(family: str):
    """diffusers' transformer at the tiny model's sizes (on the meta device: its weights do not change what a LoRA
    adds) and the pipeline class whose loader reads the family's files."""
    from diffusers import (
        ChromaPipeline,
        ChromaTransformer2DModel,
        Flux2Pipeline,
        Flux2Transformer2DModel,
        Lumina2Pipeline,
        Lumina2Transformer2DModel,
        WanPipeline,
        WanTransformer3DModel,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )

    with torch.device("meta"):
        if family == "wan21_t2v":
            model = WanTransformer3DModel(num_attention_heads=1, attention_head_dim=128, ffn_dim=256, num_layers=1)
            return model, WanPipeline
        if family == "zimage":
            return ZImageTransformer2DModel(n_layers=1, cap_feat_dim=768), ZImagePipeline
        if family == "lumina2":
            sizes = {"num_layers": 1, "cap_feat_dim": 768}  # its FFN: 4 x 2304, as the tiny model's
            return Lumina2Transformer2DModel(**sizes), Lumina2Pipeline
        if family == "chroma":
            return ChromaTransformer2DModel(num_layers=1, num_single_layers=0, joint_attention_dim=768), ChromaPipeline
        sizes = {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 1, "joint_attention_dim": 768}
        return Flux2Transformer2DModel(**sizes), Flux2Pipeline


def _diffusers_updates(transformer, state: dict) -> tuple[int, list[float]]:
    transformer.load_lora_adapter(state, prefix="transformer", adapter_name="trained")
    adapted = [m for m in transformer.modules() if "trained" in getattr(m, "lora_A", {})]
    return len(adapted), sorted(float(m.get_delta_weight("trained").float().norm()) for m in adapted)


SLOW = [pytest.param(family, marks=pytest.mark.slow) for family in ("zimage", "chroma", "lumina2")]


@pytest.mark.parametrize("family", ["wan21_t2v", "flux2", *SLOW])
def test_family_file_loads_in_diffusers_with_every_module_and_the_same_updates(
    comfy_lib, family_models, style_dataset_dir, tmp_path, family
):
    if family == "flux2" and host_version() == "0.3.75":
        pytest.skip("0.3.75's detection pins Flux 2 at 48 heads: no tiny Flux 2 there")
    tensors = _trained_file(family, family_models, style_dataset_dir, tmp_path)
    transformer, pipeline = _transformer(family)
    count, updates = _diffusers_updates(transformer.to_empty(device="cpu"), pipeline.lora_state_dict(tensors.copy()))
    expected = _comfy_updates(tensors)
    # diffusers splits a fused kohya qkv LoRA into q, k and v (one A, B split by rows): 2 modules more per qkv,
    # the same total update.
    fused = sum(1 for k in tensors if k.endswith(("qkv.lora_down.weight", "qkv.lora_A.weight")))
    assert count == len(expected) + 2 * fused > 0, f"diffusers adapted {count} modules, the file has {len(expected)}"
    if fused:
        total = torch.tensor([sum(u * u for u in updates), sum(e * e for e in expected)])
        torch.testing.assert_close(total[0], total[1], rtol=2e-3, atol=1e-7)
    else:
        torch.testing.assert_close(torch.tensor(updates), torch.tensor(expected), rtol=1e-4, atol=1e-7)
