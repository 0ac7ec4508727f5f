"""blocks_to_swap on ComfyUI's own transformer models (SD3's joint blocks, Flux's double and single blocks): the same
LoRA as training with every block resident, weights back on their device afterwards."""

from __future__ import annotations

import pytest
import torch

from lora_train.dataset.loading import load_dataset
from lora_train.dev.tiny_models import write_tiny
from lora_train.host.comfy_adapter import ComfyHost
from lora_train.training import train_lora
from lora_train.training.config import TrainConfig

pytestmark = pytest.mark.host


def _train(family: str, models_dir, dataset_dir, out, **overrides):
    model, clip, vae = write_tiny(family, models_dir).load(models_dir)
    cfg = TrainConfig.from_dict({"rank": 4, "alpha": 4, "steps": 2, "batch_size": 1, "resolution": 64,
                                 "output_name": "swap", "log_every": 1} | overrides)  # fmt: skip
    with torch.inference_mode():  # as every ComfyUI node runs
        result = train_lora(cfg, load_dataset(dataset_dir), ComfyHost(model, clip, vae), out)
    return result, model


# The tiny models' transformer blocks: SD3 has 2 joint blocks, Flux 1 double-stream block (and no single ones).
@pytest.mark.parametrize(("family", "count"), [("sd3", 2), pytest.param("flux_dev", 1, marks=pytest.mark.slow)])
def test_swapped_blocks_train_the_same_lora_as_resident_ones(comfy_lib, family_models, style_dataset_dir, tmp_path,
                                                              family, count):  # fmt: skip
    resident, _ = _train(family, family_models, style_dataset_dir, tmp_path / "a", gradient_checkpointing=True)
    swapped, model = _train(family, family_models, style_dataset_dir, tmp_path / "b", blocks_to_swap=count)
    assert all(torch.equal(resident.lora_tensors[k], swapped.lora_tensors[k]) for k in resident.lora_tensors)
    assert any(t.abs().sum() > 0 for t in swapped.lora_tensors.values())
    blocks = model.model.diffusion_model
    assert all("forward" not in b.__dict__ for b in blocks.modules()), "a swapped block kept its wrapper"
