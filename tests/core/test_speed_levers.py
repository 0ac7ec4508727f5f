"""Speed levers kept from bench_vs_kohya.py, each against the plain path it replaced: LoRA's branch scaled on the
rank-wide activation and accumulated into the layer output with one addmm, and fused AdamW. Trained weights stay
within float tolerance of the plain path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_train.dataset import load_dataset
from lora_train.training import TrainConfig, train_lora
from lora_train.training import optim as optim_module
from lora_train.training.networks.base import Adapter, AdapterSpec
from lora_train.training.networks.lora import LoConAdapter, LoRAAdapter
from tests.core.standin import StandInHost, TinyFlowModel, write_images


def _plain_add_branch(adapter, output, x, base_weight=None, multiplier=1.0):
    return Adapter.add_branch(adapter, output, x, base_weight, multiplier)


@pytest.mark.parametrize(
    ("target", "shape", "rank_dropout"),
    [
        (nn.Linear(12, 20), (3, 5, 12), 0.0),
        (nn.Linear(12, 20), (3, 5, 12), 0.5),
        (nn.Conv2d(6, 10, 1), (2, 6, 4, 4), 0.0),
    ],
)
def test_lora_branch_equals_the_plain_branch_with_gradients(target, shape, rank_dropout):
    torch.manual_seed(0)
    adapter = LoRAAdapter(target, AdapterSpec(4, 2.0, rank_dropout=rank_dropout))
    nn.init.normal_(adapter.lora_up.weight)
    adapter.train()
    x = torch.randn(shape, requires_grad=True)
    results = []
    for add in (LoRAAdapter.add_branch, _plain_add_branch):
        torch.manual_seed(5)  # the same rank-dropout draw both ways
        out = add(adapter, target(x), x, None, 0.7)
        out.square().sum().backward()
        results.append((out.detach(), x.grad.clone(), [p.grad.clone() for p in adapter.parameters()]))
        x.grad = None
        adapter.zero_grad()
    (fast, fast_x, fast_p), (plain, plain_x, plain_p) = results
    assert not torch.equal(fast, target(x)), "the branch must change the output"
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_x, plain_x, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_p, plain_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fused_adamw_is_used_where_torch_has_it():
    params = [nn.Parameter(torch.zeros(3))]
    optimizer = optim_module.make_optimizer("adamw", [{"params": params, "lr": 1e-3}], 0.01)
    assert optimizer.param_groups[0].get("fused") is True


def _train(tmp_path, name: str, **overrides):
    data = load_dataset(write_images(tmp_path / "data", size=(64, 64)))
    cfg = TrainConfig.from_dict({"rank": 4, "alpha": 4, "steps": 6, "batch_size": 2, "resolution": 64,
                                 "learning_rate": 1e-2, "output_name": name, "log_every": 1, "seed": 3,
                                 "network": "locon", "targets": "all_linear", **overrides})  # fmt: skip
    return train_lora(cfg, data, StandInHost(TinyFlowModel(seed=1)), tmp_path / name)


@pytest.mark.parametrize("rank_dropout", [0.0, 0.25])
def test_trained_lora_matches_the_plain_path(tmp_path, monkeypatch, rank_dropout):
    fast = _train(tmp_path, "fast", rank_dropout=rank_dropout)
    monkeypatch.setattr(LoRAAdapter, "add_branch", _plain_add_branch)
    monkeypatch.setattr(LoConAdapter, "add_branch", _plain_add_branch)
    monkeypatch.setattr(optim_module, "fused_kwargs", lambda groups: {})
    plain = _train(tmp_path, "plain", rank_dropout=rank_dropout)
    ups = [k for k in fast.lora_tensors if "lora_up" in k]
    assert ups and all(fast.lora_tensors[k].abs().sum() > 0 for k in ups), "nothing trained"
    for key, tensor in plain.lora_tensors.items():
        torch.testing.assert_close(fast.lora_tensors[key], tensor, rtol=1e-4, atol=1e-6)
