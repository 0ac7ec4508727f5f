"""Gradient checkpointing on a host's model: recompute each block's activations in backward instead of keeping
them (less memory, one more forward per step)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def checkpoint_units(root: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules gradient checkpointing recomputes: the items of `root`'s ModuleLists (its blocks). A block that
    is a Sequential gives its children instead: hosts may iterate it rather than call it (ComfyUI's UNet runs
    `forward_timestep_embed` over a block's layers, so a wrapped block forward would never run)."""
    units: list[torch.nn.Module] = []
    for child in root.children():
        if isinstance(child, torch.nn.ModuleList):
            for block in child:
                units += list(block.children()) if isinstance(block, torch.nn.Sequential) else [block]
    return units


def _on_copies(function):
    """`function` run on copies of its tensor arguments, made inside the checkpointed region (so not kept): blocks
    that add into their inputs in place (Flux's `img += ...`) would otherwise change the inputs that backward
    recomputes from (and whether they require grad)."""

    def copy(value):
        return value.clone() if torch.is_tensor(value) else value

    def run(*args, **kwargs):
        return function(*map(copy, args), **{k: copy(v) for k, v in kwargs.items()})

    return run


@contextlib.contextmanager
def gradient_checkpointing(root: torch.nn.Module, enabled: bool) -> Iterator[int]:
    """Recompute each of `root`'s `checkpoint_units` in backward instead of keeping its activations."""
    blocks = checkpoint_units(root) if enabled else []
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        original = block.forward

        def wrapped(*args, _original=original, **kwargs):
            return checkpoint(_on_copies(_original), *args, use_reentrant=False, **kwargs)

        block.forward = wrapped
    try:
        yield len(blocks)
    finally:
        for block in blocks:
            del block.forward  # back to the class's forward
