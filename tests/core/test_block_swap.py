"""blocks_to_swap: swapped transformer blocks give exactly the resident model's gradients; weights copied in for
every forward (and checkpointing's recompute); restored afterwards; impossible counts refused by name."""

import pytest
import torch
from torch import nn

from lora_train.dataset import load_dataset
from lora_train.training import TrainConfig, TrainingError, block_swap, train_lora
from lora_train.training.block_swap import swapped_blocks
from lora_train.training.checkpointing import gradient_checkpointing
from lora_train.training.networks import AdapterSet, AdapterSpec, find_targets
from tests.core.standin import StandInHost, write_images


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x, *, scale=1.0):
        return x + scale * self.fc2(torch.relu(self.fc1(self.norm(x))))


class TinyTransformer(nn.Module):
    def __init__(self, depth=4):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(Block() for _ in range(depth))
        self.head = nn.Linear(8, 8)

    def forward(self, x):
        for block in self.blocks:
            x = block(x, scale=0.5)
        return self.head(x)


def _gradients(swap: int, checkpointing: bool) -> list[torch.Tensor]:
    model = TinyTransformer().requires_grad_(False)
    torch.manual_seed(1)
    adapters = AdapterSet.create(find_targets(model, lambda p, m: True), AdapterSpec(rank=2, alpha=2.0),
                                 key_prefix_for=lambda p: p.replace(".", "_"))  # fmt: skip
    for p in adapters.parameters():
        nn.init.normal_(p)
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(2))
    with adapters.attached(), swapped_blocks(model, swap, torch.device("cpu")):
        with gradient_checkpointing(model, checkpointing):
            model(x).pow(2).mean().backward()
    return [p.grad.clone() for p in adapters.parameters()]


@pytest.mark.parametrize("checkpointing", [True, False])
def test_swapped_blocks_give_the_resident_models_gradients(checkpointing):
    resident = _gradients(0, checkpointing=True)
    swapped = _gradients(3, checkpointing)
    assert all(torch.equal(a, b) for a, b in zip(resident, swapped, strict=True))


def test_weights_are_copied_in_for_the_forward_and_again_for_the_recompute(monkeypatch):
    copies = []
    real = block_swap.to_device
    monkeypatch.setattr(block_swap, "to_device", lambda tensors, device: copies.append(1) or real(tensors, device))
    _gradients(2, checkpointing=True)
    assert len(copies) == 2 * 2, "each swapped block: one copy for the forward, one for backward's recompute"
    copies.clear()
    _gradients(2, checkpointing=False)
    assert len(copies) == 2


def test_the_blocks_are_restored_afterwards():
    model = TinyTransformer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with swapped_blocks(model, 2, torch.device("cpu")) as swapped:
        assert swapped == list(model.blocks[2:])
        assert "forward" in model.blocks[3].__dict__
    assert all("forward" not in block.__dict__ for block in model.blocks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_impossible_counts_are_refused_by_name():
    with pytest.raises(TrainingError, match="blocks_to_swap=5 is more than the 4 transformer blocks"):
        with swapped_blocks(TinyTransformer(), 5, torch.device("cpu")):
            pass

    class UNetLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_blocks = nn.ModuleList([nn.Sequential(nn.Linear(2, 2))])

    with pytest.raises(TrainingError, match=r"blocks_to_swap=1: this model .UNetLike. has no transformer blocks"):
        with swapped_blocks(UNetLike(), 1, torch.device("cpu")):
            pass


def test_training_with_swapped_blocks_matches_resident_training(tmp_path):
    data = load_dataset(write_images(tmp_path / "data", 2, (64, 64)))
    base = {"resolution": 64, "rank": 4, "alpha": 4.0, "steps": 3, "learning_rate": 1e-2}
    resident = train_lora(TrainConfig.from_dict({**base, "gradient_checkpointing": True}), data, StandInHost(),
                          tmp_path / "a")  # fmt: skip
    swapped = train_lora(TrainConfig.from_dict({**base, "blocks_to_swap": 2}), data, StandInHost(), tmp_path / "b")
    assert all(torch.equal(resident.lora_tensors[k], swapped.lora_tensors[k]) for k in resident.lora_tensors)
    host = StandInHost()
    with pytest.raises(TrainingError, match="blocks_to_swap=9 is more than the 3 transformer blocks"):
        train_lora(TrainConfig.from_dict({**base, "blocks_to_swap": 9}), data, host, tmp_path / "c")
