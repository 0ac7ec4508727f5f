"""What every adapter shares: its spec, the target layer's geometry, scaling, dropout and the kohya tensor layout.

An adapter's own `state_dict()` keys are exactly the kohya/LyCORIS suffixes ComfyUI's loader reads
(`lora_down.weight`, `hada_w1_a`, `alpha`, ...), so the file layout cannot drift from the training state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AdapterSpec:
    """Shape of every adapter in a set: rank, alpha (scale = alpha / rank), input dropout and network family."""

    rank: int
    alpha: float
    dropout: float = 0.0
    network: str = "lora"
    rank_dropout: float = 0.0  # kohya: drop ranks per sample (lora / locon), the rest scaled up to compensate
    module_dropout: float = 0.0  # kohya: skip the whole branch for a forward pass

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or not 1 <= self.rank <= 4096:
            raise ValueError(f"rank must be an integer between 1 and 4096, got {self.rank!r}")
        if not math.isfinite(float(self.alpha)) or float(self.alpha) <= 0:
            raise ValueError(f"alpha must be a positive number (usually rank or rank/2), got {self.alpha!r}")
        for name in ("dropout", "rank_dropout", "module_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")


def is_adaptable(module: nn.Module) -> bool:
    """Linear, or a 2-D convolution an adapter can mirror (one group, zero padding); subclasses included."""
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros"
    return isinstance(module, nn.Linear)


def kernel_size(module: nn.Module) -> tuple[int, ...]:
    """The target's kernel (empty for Linear)."""
    return tuple(module.kernel_size) if isinstance(module, nn.Conv2d) else ()


class Adapter(nn.Module):
    """Base class: one adapter for one target layer. Subclasses define parameters, `delta_weight` and init."""

    network: ClassVar[str]
    adapts_spatial_conv: ClassVar[bool] = True  # Conv2d layers whose kernel is larger than 1x1
    needs_base_weight: ClassVar[bool] = False  # the branch depends on the target's weight (DoRA)

    def __init__(self, target: nn.Module, spec: AdapterSpec):
        super().__init__()
        if not is_adaptable(target):
            raise TypeError(f"{type(target).__name__} cannot be adapted: only nn.Linear and ungrouped nn.Conv2d")
        self.is_conv = isinstance(target, nn.Conv2d)
        self.out_features = target.weight.shape[0]
        self.in_features = target.weight.shape[1]
        self.kernel = kernel_size(target)
        self.weight_shape = tuple(target.weight.shape)
        # Conv geometry copied from the target so the branch sees the same receptive field and output size.
        self.conv_args = (target.stride, target.padding, target.dilation) if self.is_conv else None
        self.rank = spec.rank
        self.register_buffer("alpha", torch.tensor(float(spec.alpha)))
        self.scale = float(spec.alpha) / spec.rank  # a Python float: no device sync per step
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.rank_dropout = float(spec.rank_dropout)
        self.module_dropout = float(spec.module_dropout)

    def dropped(self) -> bool:
        """kohya module dropout: in training mode, skip this branch for one forward pass with that probability
        (drawn from torch's CPU stream, which the resume state keeps)."""
        return self.training and self.module_dropout > 0 and float(torch.rand(())) < self.module_dropout

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        """Whether this network adapts `module` (plain LoRA leaves convolutions with kernels > 1x1 alone)."""
        if not is_adaptable(module):
            return False
        return cls.adapts_spatial_conv or all(k == 1 for k in kernel_size(module))

    def refresh_scale(self) -> None:
        """Recompute the cached scale after `alpha` was loaded from a file."""
        self.scale = float(self.alpha) / self.rank

    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        """Run `x` through the target's op with `weight` (no bias)."""
        if self.is_conv:
            stride, padding, dilation = self.conv_args
            return F.conv2d(x, weight, None, stride, padding, dilation)
        return F.linear(x, weight)

    def delta_weight(self, base_weight: Tensor | None = None) -> Tensor:
        """The change this adapter makes to the target weight (target's shape), scale included."""
        raise NotImplementedError

    def delta_output(self, x: Tensor, base_weight: Tensor | None = None) -> Tensor:
        """The branch added to the target's output for input `x` (dropout applied in training mode)."""
        return self.apply_weight(self.dropout(x), self.delta_weight(base_weight))

    def add_branch(
        self, output: Tensor, x: Tensor, base_weight: Tensor | None = None, multiplier: float = 1.0
    ) -> Tensor:
        """`output` + `multiplier` x the branch for input `x`, in `output`'s dtype and device."""
        branch = self.delta_output(x, base_weight)
        if multiplier != 1.0:
            branch = branch * multiplier
        return output + branch.to(device=output.device, dtype=output.dtype)

    def kohya_tensors(self) -> dict[str, Tensor]:
        """Kohya/LyCORIS suffix -> tensor, detached copies."""
        return {name: tensor.detach().clone() for name, tensor in self.state_dict().items()}


def kaiming_(tensor: Tensor) -> Tensor:
    """kaiming_uniform_ with a=sqrt(5): nn.Linear's default, used by kohya, peft and LyCORIS for down weights."""
    return nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
