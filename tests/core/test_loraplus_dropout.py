"""LoRA+ (a faster learning rate for the up matrices), kohya rank dropout and module dropout."""

import pytest
import torch
from torch import nn

from lora_train.dataset import load_dataset
from lora_train.settings import SettingsError
from lora_train.training import TrainConfig, train_lora
from lora_train.training.networks import AdapterSet, AdapterSpec
from lora_train.training.run import param_groups
from tests.core.standin import StandInHost, write_images

BASE = {"resolution": 64, "rank": 4, "alpha": 4.0, "steps": 1, "log_every": 1, "learning_rate": 0.1,
        "optimizer": "sgd", "weight_decay": 0.0, "max_grad_norm": 0.0}  # fmt: skip


def _adapters(spec: AdapterSpec) -> tuple[nn.Linear, AdapterSet]:
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    adapters = AdapterSet.create({"layer": layer}, spec, key_prefix_for=lambda p: f"lora_unet_{p}")
    with torch.no_grad():
        adapters.adapter("layer").lora_up.weight.normal_()
    return layer, adapters


def test_loraplus_puts_the_up_matrices_in_their_own_faster_group():
    _, adapters = _adapters(AdapterSpec(rank=2, alpha=2.0))
    plain, plus = param_groups(adapters, 1e-4), param_groups(adapters, 1e-4, 16.0)
    assert len(plain) == 1 and len(plus) == 2
    up = adapters.adapter("layer").lora_up.weight
    assert plus[1]["lr"] == pytest.approx(1.6e-3) and plus[1]["params"] == [up]
    assert all(p is not up for p in plus[0]["params"])


def test_loraplus_ratio_scales_the_first_update_of_the_up_matrices(tmp_path):
    data = load_dataset(write_images(tmp_path / "data", 2, (64, 64)))
    one = train_lora(TrainConfig.from_dict({**BASE, "loraplus_lr_ratio": 1.0}), data, StandInHost(), tmp_path / "a")
    four = train_lora(TrainConfig.from_dict({**BASE, "loraplus_lr_ratio": 4.0}), data, StandInHost(), tmp_path / "b")
    ups = [k for k in one.lora_tensors if k.endswith("lora_up.weight")]
    # Up matrices start at zero and SGD moves them by lr x gradient; the down matrices get no gradient at step 1.
    assert all(torch.allclose(four.lora_tensors[k], 4 * one.lora_tensors[k]) for k in ups)
    assert any(one.lora_tensors[k].abs().sum() > 0 for k in ups)


def test_rank_dropout_zeroes_ranks_per_sample_and_rescales_as_kohya_does():
    layer, adapters = _adapters(AdapterSpec(rank=4, alpha=2.0, rank_dropout=0.5))
    adapter = adapters.adapter("layer")
    x = torch.randn(3, 7, 6)
    with adapters.attached():
        torch.manual_seed(5)
        trained = layer(x)
        torch.manual_seed(5)
        keep = (torch.rand(3, 4) > 0.5).float()[:, None, :]
        hidden = adapter.lora_down(x) * keep
        scale = 2.0 / 4  # alpha / rank
        expected = nn.functional.linear(x, layer.weight, layer.bias) + adapter.lora_up(hidden) * scale / (1 - 0.5)
        assert torch.allclose(trained, expected, atol=1e-6)
        adapters.eval()
        full = nn.functional.linear(x, layer.weight, layer.bias) + adapter.lora_up(adapter.lora_down(x)) * scale
        assert torch.allclose(layer(x), full, atol=1e-6), "no rank dropout in eval mode"


def test_module_dropout_skips_the_whole_branch_sometimes_and_never_in_eval():
    layer, adapters = _adapters(AdapterSpec(rank=2, alpha=2.0, module_dropout=0.5))
    x = torch.randn(2, 6)
    base = nn.functional.linear(x, layer.weight, layer.bias)
    torch.manual_seed(0)
    with adapters.attached():
        adapters.eval()
        adapted = layer(x)
        assert not torch.equal(adapted, base) and all(torch.equal(layer(x), adapted) for _ in range(20))
        adapters.train()
        outputs = [layer(x) for _ in range(40)]
    skipped = sum(torch.equal(out, base) for out in outputs)
    assert 5 < skipped < 35
    assert all(torch.equal(out, adapted) or torch.equal(out, base) for out in outputs)


def test_settings_refuse_dropouts_and_loraplus_on_networks_without_them():
    with pytest.raises(SettingsError, match=r"rank_dropout works on lora and locon.*network='loha'"):
        TrainConfig.from_dict({"network": "loha", "rank_dropout": 0.1})
    with pytest.raises(SettingsError, match=r"loraplus_lr_ratio needs up/down matrices.*network='lokr'"):
        TrainConfig.from_dict({"network": "lokr", "loraplus_lr_ratio": 16})
