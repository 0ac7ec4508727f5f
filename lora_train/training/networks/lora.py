"""LoRA (Linear + 1x1 conv), LoCon (also k x k convs, kohya `conv_dim`) and DoRA on top of LoCon.

File layout (what ComfyUI's `weight_adapter/lora.py` reads): `lora_down.weight` [rank, in(, kh, kw)],
`lora_up.weight` [out, rank(, 1, 1)], `alpha`; DoRA adds `dora_scale`. ComfyUI merges
W + strength * alpha / rank * (up.flatten(1) @ down.flatten(1)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lora_train.training.networks.base import Adapter, AdapterSpec, kaiming_


class LoRAAdapter(Adapter):
    """x -> down -> up, scaled by alpha / rank. For convs the down mirrors the target's kernel, the up is 1x1."""

    network = "lora"
    adapts_spatial_conv = False

    def __init__(self, target: nn.Module, spec: AdapterSpec):
        super().__init__(target, spec)
        if self.is_conv:
            stride, padding, dilation = self.conv_args
            self.lora_down = nn.Conv2d(self.in_features, spec.rank, self.kernel, stride, padding, dilation, bias=False)
            self.lora_up = nn.Conv2d(spec.rank, self.out_features, 1, bias=False)
        else:
            self.lora_down = nn.Linear(self.in_features, spec.rank, bias=False)
            self.lora_up = nn.Linear(spec.rank, self.out_features, bias=False)
        kaiming_(self.lora_down.weight)
        nn.init.zeros_(self.lora_up.weight)  # step 0 changes nothing

    def lora_weight(self) -> Tensor:
        """scale * up @ down, in the target weight's shape."""
        product = self.lora_up.weight.flatten(1) @ self.lora_down.weight.flatten(1)
        return product.reshape(self.weight_shape) * self.scale

    def delta_weight(self, base_weight: Tensor | None = None) -> Tensor:
        return self.lora_weight()

    def _down(self, x: Tensor, scale: float) -> tuple[Tensor, float]:
        """The rank-wide hidden activation (dropout, then rank dropout in training) and the scale its up projection
        takes (`scale` raised for the dropped ranks)."""
        hidden = self.lora_down(self.dropout(x))
        if self.training and self.rank_dropout > 0:
            hidden, scale = self.drop_ranks(hidden), scale / (1.0 - self.rank_dropout)
        return hidden, scale

    def delta_output(self, x: Tensor, base_weight: Tensor | None = None) -> Tensor:
        # Activation side: two thin matmuls instead of materialising a full-size weight every step.
        hidden, scale = self._down(x, self.scale)
        return self.lora_up(hidden) * scale

    def add_branch(
        self, output: Tensor, x: Tensor, base_weight: Tensor | None = None, multiplier: float = 1.0
    ) -> Tensor:
        # The scale goes on the rank-wide hidden activation (not a full-size multiply), and for Linear targets the
        # up projection accumulates straight into the layer's output (one addmm instead of a matmul and an add).
        hidden, scale = self._down(x, self.scale * multiplier)
        hidden = hidden * scale
        up = self.lora_up.weight
        same_type = torch.is_autocast_enabled(output.device.type) or output.dtype == hidden.dtype == up.dtype
        if self.is_conv or output.device != hidden.device or not same_type:
            return output + self.lora_up(hidden).to(device=output.device, dtype=output.dtype)
        flat = torch.addmm(output.reshape(-1, output.shape[-1]), hidden.reshape(-1, self.rank), up.t())
        return flat.view(output.shape)

    def drop_ranks(self, hidden: Tensor) -> Tensor:
        """kohya rank dropout: zero each rank of `hidden` per sample with probability `rank_dropout` (the caller
        scales the branch by 1 / (1 - rank_dropout), as kohya does)."""
        keep = torch.rand(hidden.shape[0], self.rank, device=hidden.device) > self.rank_dropout
        if self.is_conv:  # [B, rank, h, w]
            shape = (hidden.shape[0], self.rank, *[1] * (hidden.dim() - 2))
        else:  # [B, ..., rank]
            shape = (hidden.shape[0], *[1] * (hidden.dim() - 2), self.rank)
        return hidden * keep.reshape(shape).to(hidden.dtype)


class LoConAdapter(LoRAAdapter):
    """LoRA that also adapts convolutions with kernels larger than 1x1 (kohya networks.lora with conv_dim)."""

    network = "locon"
    adapts_spatial_conv = True


class DoRAAdapter(LoConAdapter):
    """DoRA (arXiv 2402.09353) in the form ComfyUI applies: W' = (W + dW) * dora_scale / ||W + dW||.

    The norm is taken per *input* channel (over output rows and kernel), `dora_scale` has shape [1, in(, 1, 1)]:
    the only axis every ComfyUI version normalises the same way (LyCORIS `wd_on_out=False`). `dora_scale`
    starts at ||W|| so step 0 is the identity. The branch added to the output is x -> (W' - W), so it needs
    the target's current weight; ComfyUI scales that same difference by the LoRA strength.
    """

    network = "dora"
    needs_base_weight = True

    def __init__(self, target: nn.Module, spec: AdapterSpec):
        super().__init__(target, spec)
        with torch.no_grad():
            base = target.weight.detach().to(device="cpu", dtype=torch.float32)
            self.dora_scale = nn.Parameter(self.column_norm(base))

    @staticmethod
    def column_norm(weight: Tensor) -> Tensor:
        """L2 norm per input channel, shaped [1, in, 1, ...] to broadcast over the weight."""
        per_input = weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
        return per_input.reshape(1, weight.shape[1], *[1] * (weight.dim() - 2))

    def delta_weight(self, base_weight: Tensor | None = None) -> Tensor:
        if base_weight is None:
            raise ValueError("DoRA's weight change depends on the base weight: pass the target's weight")
        base = base_weight.detach().to(device=self.dora_scale.device, dtype=self.dora_scale.dtype)
        merged = base + self.lora_weight()
        # ComfyUI 0.3.75 adds the fp32 epsilon to the norm (its merge runs in fp32); older versions add none.
        norm = self.column_norm(merged) + torch.finfo(torch.float32).eps
        return merged * (self.dora_scale / norm) - base

    def delta_output(self, x: Tensor, base_weight: Tensor | None = None) -> Tensor:
        return self.apply_weight(self.dropout(x), self.delta_weight(base_weight))

    add_branch = Adapter.add_branch  # the weight-space branch above, not LoRA's activation-side shortcut
