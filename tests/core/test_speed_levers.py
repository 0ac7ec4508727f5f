"""Speed levers kept from bench_vs_kohya.py, each against the plain path it replaced: LoRA's branch scaled on the
rank-wide activation and accumulated into the layer output with one addmm, fused AdamW, and small-image
convolutions as one GEMM on the CPU. Trained weights stay within float tolerance of the plain path."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_train.dataset import load_dataset
from lora_train.training import TrainConfig, conv_gemm, train_lora
from lora_train.training import loop as loop_module
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


# ---- small-image convolutions as one GEMM (CPU) ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "bias"), [(1, 1, 1, True), (2, 1, 1, False), (1, 2, 2, True)]
)
def test_gemm_conv_equals_conv2d_with_input_gradient(stride, padding, dilation, bias):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 16, 3, 3, generator=generator)
    bias_t = torch.randn(24, generator=generator) if bias else None
    x = torch.randn(2, 16, 5, 4, generator=generator, requires_grad=True)
    args = ((stride, stride), (padding, padding), (dilation, dilation))
    expected = F.conv2d(x, weight, bias_t, *args)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), x)
    got = conv_gemm.gemm_conv2d(x, weight, bias_t, *args)
    (grad_got,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-5, atol=1e-4)


class ResBlock(nn.Module):
    """A conv block (the class name makes `targets=attention_and_conv` adapt its convolutions)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.context = nn.Linear(8, width)

    def forward(self, h, context):
        return h + torch.tanh(self.conv(h) + self.context(context)[:, :, None, None])


class ConvFlowModel(nn.Module):
    """[B, 3, 8, 8] latents -> stride-2 conv to 4x4 (32 positions at batch 2: the GEMM form) -> ResBlocks -> back."""

    def __init__(self, width: int = 24):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(4, width, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList([ResBlock(width), ResBlock(width)])
        self.out = nn.Conv2d(width, 12, 1)

    def forward(self, x, sigmas, context):
        level = sigmas.reshape(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:]).to(x)
        h = self.stem(torch.cat([x, level], dim=1))
        for block in self.blocks:
            h = block(h, context)
        return F.pixel_shuffle(self.out(h), 2)


def _train_conv(tmp_path, name):
    data = load_dataset(write_images(tmp_path / "data", size=(64, 64)))
    cfg = TrainConfig.from_dict({"rank": 4, "alpha": 4, "steps": 4, "batch_size": 2, "resolution": 64,
                                 "learning_rate": 1e-2, "output_name": name, "log_every": 1, "seed": 3,
                                 "network": "locon", "targets": "attention_and_conv"})  # fmt: skip
    host = StandInHost(ConvFlowModel())
    return train_lora(cfg, data, host, tmp_path / name), host.model


def test_small_convolutions_train_the_lora_of_conv2d(tmp_path, monkeypatch):
    calls = []
    real = conv_gemm.gemm_conv2d
    monkeypatch.setattr(conv_gemm, "gemm_conv2d", lambda *a: calls.append(1) or real(*a))
    fast, model = _train_conv(tmp_path, "fast")
    assert calls, "no convolution took the GEMM form"
    assert all("forward" not in vars(m) for m in model.modules()), "a convolution kept its wrapper"
    monkeypatch.setattr(loop_module, "small_convs_as_gemm", lambda root, enabled: contextlib.nullcontext(0))
    plain, _ = _train_conv(tmp_path, "plain")
    ups = [k for k in fast.lora_tensors if "lora_up" in k]
    assert ups and all(fast.lora_tensors[k].abs().sum() > 0 for k in ups), "nothing trained"
    for key, tensor in plain.lora_tensors.items():
        torch.testing.assert_close(fast.lora_tensors[key], tensor, rtol=1e-4, atol=1e-5)
