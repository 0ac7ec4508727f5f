"""Gradient checkpointing reaches the layers a host actually calls, and leaves the model as it was."""

import torch
from torch import nn

from lora_train.training.checkpointing import checkpoint_units, gradient_checkpointing


class _IteratedBlocks(nn.Module):
    """Like ComfyUI's UNet: blocks are Sequentials whose layers the model iterates (the block's forward never runs)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.Tanh()), nn.Linear(16, 16)])
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        for block in self.blocks:
            for layer in block if isinstance(block, nn.Sequential) else [block]:
                x = layer(x)
        return self.head(x)


def _saved_bytes_and_grads(model, enabled):
    saved = []
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    with (
        gradient_checkpointing(model, enabled),
        torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t
        ),
    ):
        model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return sum(saved), grads


def test_units_are_the_layers_inside_sequential_blocks():
    model = _IteratedBlocks()
    assert checkpoint_units(model) == [model.blocks[0][0], model.blocks[0][1], model.blocks[1]]


def test_checkpointing_an_iterated_model_saves_less_and_gives_the_same_gradients():
    model = _IteratedBlocks()
    plain_bytes, plain_grads = _saved_bytes_and_grads(model, False)
    checkpointed_bytes, grads = _saved_bytes_and_grads(model, True)
    assert checkpointed_bytes < plain_bytes
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, grads, strict=True))
    assert all("forward" not in vars(m) for m in model.modules()), "the wrappers must be removed afterwards"


class _Residual(nn.Module):
    """Like ComfyUI's Flux blocks when `inplace`: the block adds into its own input (`img += f(img)`)."""

    def __init__(self, inplace: bool):
        super().__init__()
        self.f = nn.Linear(16, 16)
        self.inplace = inplace

    def forward(self, x):
        if self.inplace:
            x += self.f(x).tanh()
            return x
        return x + self.f(x).tanh()


class _ResidualBlocks(nn.Module):
    def __init__(self, inplace: bool):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(16, 16)
        self.blocks = nn.ModuleList([_Residual(inplace), _Residual(inplace)])
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _grads(model, checkpointed: bool) -> list[torch.Tensor]:
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    with gradient_checkpointing(model, checkpointed):
        model(x).sum().backward()
    return [p.grad for p in model.parameters()]


def test_blocks_that_add_into_their_input_in_place_checkpoint_to_the_true_gradients():
    reference = _grads(_ResidualBlocks(inplace=False), checkpointed=False)
    grads = _grads(_ResidualBlocks(inplace=True), checkpointed=True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(reference, grads, strict=True))
