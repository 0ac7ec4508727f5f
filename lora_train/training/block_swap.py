"""Block swapping (`blocks_to_swap`, kohya's name; ai-toolkit `layer_offloading`): the weights of the last N
transformer blocks live in CPU memory during training and are copied to the device only while their block runs.

How: each swapped block's forward becomes "copy the block's weights to the device, run the block with those copies
(`torch.func.functional_call`), drop them". Under gradient checkpointing (switched on with block swapping) the
backward pass recomputes the block through that same forward, so it copies the weights in again and at most the
blocks being computed hold device copies; without checkpointing autograd would keep every copy until backward.
The block's own parameters are never replaced while autograd may hold them, so gradients are exactly those of the
resident model (tested). On leaving, the weights go back where the host had them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from lora_train.training.host_api import TrainingError

log = logging.getLogger(__name__)


def transformer_blocks(root: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of `root`'s block lists (Flux: double then single blocks; SD3: joint blocks), in run order. UNet
    stages (Sequential containers) are not transformer blocks: a UNet model has none."""
    blocks: list[torch.nn.Module] = []
    for child in root.children():
        if isinstance(child, torch.nn.ModuleList) and not any(isinstance(b, torch.nn.Sequential) for b in child):
            blocks += list(child)
    return blocks


def pick_swapped(root: torch.nn.Module, count: int) -> list[torch.nn.Module]:
    """The last `count` transformer blocks; refuses a model without them or a count larger than it has."""
    blocks = transformer_blocks(root)
    if not blocks:
        raise TrainingError(
            f"blocks_to_swap={count}: this model ({type(root).__name__}) has no transformer blocks to swap (it works "
            "on transformer families such as Flux and SD3); set blocks_to_swap to 0"
        )
    if count > len(blocks):
        raise TrainingError(
            f"blocks_to_swap={count} is more than the {len(blocks)} transformer blocks this model has; "
            f"use at most {len(blocks)}"
        )
    return blocks[len(blocks) - count :]


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Device copies of a block's offloaded weights (asynchronous from pinned memory)."""
    return {name: tensor.to(device, non_blocking=True) for name, tensor in tensors.items()}


def _swapped_forward(block: torch.nn.Module, offloaded: dict[str, torch.Tensor], device: torch.device):
    def forward(*args, **kwargs):
        # functional_call calls the block: take the instance forward (this one, or gradient checkpointing's wrapper
        # around it) away meanwhile, so that call runs the class's forward once, with the device copies.
        outer = block.__dict__.pop("forward")
        try:
            return torch.func.functional_call(block, to_device(offloaded, device), args, kwargs)
        finally:
            block.forward = outer

    return forward


@contextlib.contextmanager
def swapped_blocks(root: torch.nn.Module, count: int, device: torch.device) -> Iterator[list[torch.nn.Module]]:
    """Keep the last `count` transformer blocks' weights off `device` while training; restore them afterwards."""
    if count <= 0:
        yield []
        return
    blocks = pick_swapped(root, count)
    placed = []  # (block, {name: original device})
    pin = device.type == "cuda"
    try:
        for block in blocks:
            state = dict(block.named_parameters()) | dict(block.named_buffers())
            placed.append((block, {name: tensor.device for name, tensor in state.items()}))
            for tensor in state.values():
                moved = tensor.data.to("cpu")
                tensor.data = moved.pin_memory() if pin else moved
            offloaded = {name: tensor.detach() for name, tensor in state.items()}
            block.forward = _swapped_forward(block, offloaded, device)
        log.info(
            "blocks_to_swap: %d of %d transformer blocks kept in CPU memory", count, len(transformer_blocks(root))
        )
        yield blocks
    finally:
        for block, devices in placed:
            block.__dict__.pop("forward", None)  # back to the class's forward
            state = dict(block.named_parameters()) | dict(block.named_buffers())
            for name, tensor in state.items():
                tensor.data = tensor.data.to(devices[name])
