"""Training attention on a CPU host: torch SDPA replaces ComfyUI's sub-quadratic fallback for the training forward
passes only, computes the same attention, and trains the LoRA the host's kernel trains (within float tolerance)."""

from __future__ import annotations

import pytest
import torch

from lora_train.dataset.loading import load_dataset
from lora_train.host.comfy_adapter import ComfyHost
from lora_train.host.session import ATTENTION_ENV, training_attention
from lora_train.training import TrainConfig, train_lora

pytestmark = pytest.mark.host


def test_the_override_runs_sdpa_in_place_of_the_cpu_fallback(comfy_lib, monkeypatch):
    import comfy.ldm.modules.attention as attention

    assert attention.optimized_attention is attention.attention_sub_quad, "a CPU host defaults to sub-quadratic"
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real_sdpa(*a, **k))  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 64, 8 * 40, generator=generator) for _ in range(3))
    options = {"optimized_attention_override": training_attention()}
    host_out = attention.optimized_attention(q, k, v, 8, transformer_options={})
    assert not calls
    sdpa_out = attention.optimized_attention(q, k, v, 8, transformer_options=options)
    assert calls, "SDPA did not run"
    torch.testing.assert_close(sdpa_out, host_out, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(ATTENTION_ENV, "host")
    assert training_attention() is None


def _train(checkpoint, dataset_dir, out):
    model, clip, vae = checkpoint
    cfg = TrainConfig.from_dict({"rank": 4, "alpha": 4, "steps": 3, "batch_size": 2, "resolution": 64,
                                 "learning_rate": 1e-3, "output_name": "attn", "log_every": 1})  # fmt: skip
    with torch.inference_mode():  # as every ComfyUI node runs
        return train_lora(cfg, load_dataset(dataset_dir), ComfyHost(model, clip, vae), out)


def test_sdpa_trains_the_lora_of_the_host_kernel(own_tiny_checkpoint, style_dataset_dir, tmp_path, monkeypatch):
    sdpa = _train(own_tiny_checkpoint, style_dataset_dir, tmp_path / "sdpa")
    monkeypatch.setenv(ATTENTION_ENV, "host")
    host = _train(own_tiny_checkpoint, style_dataset_dir, tmp_path / "host")
    ups = [k for k in sdpa.lora_tensors if "lora_up" in k]
    assert ups and all(sdpa.lora_tensors[k].abs().sum() > 0 for k in ups)
    # Adam normalises each element's step: a float-level gradient difference on an element whose gradient is ~0 can
    # move it by up to lr (1e-3) per step, so single elements get an absolute tolerance well below one step, and the
    # whole update must agree to 1e-3 of its size.
    for key, tensor in host.lora_tensors.items():
        torch.testing.assert_close(sdpa.lora_tensors[key], tensor, rtol=1e-3, atol=2e-4)
    for key in ups:
        change = host.lora_tensors[key].norm()
        assert (sdpa.lora_tensors[key] - host.lora_tensors[key]).norm() <= 1e-3 * change
