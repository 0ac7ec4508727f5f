"""LyCORIS families ComfyUI loads natively: LoHa (Hadamard product) and LoKr (Kronecker product).

Layouts follow ComfyUI's `weight_adapter/loha.py` and `lokr.py` (and LyCORIS, which wrote them first):
- LoHa: `hada_w1_a` [out, r], `hada_w1_b` [r, in*kh*kw], `hada_w2_a`, `hada_w2_b`, `alpha`;
  dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r.
- LoKr: `lokr_w1` [out1, in1] (full, small), `lokr_w2_a` [out2, r], `lokr_w2_b` [r, in2*kh*kw], `alpha`, with
  out = out1 * out2 and in = in1 * in2 from LyCORIS's near-square factorisation; dW = kron(w1, w2_a @ w2_b) *
  alpha / r (ComfyUI applies alpha / r only when w2 is stored factorised, as here).
Both branches are applied as a convolution/linear with dW, so their cost is one full-size weight per step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lora_train.training.networks.base import Adapter, AdapterSpec, kaiming_


class LoHaAdapter(Adapter):
    """Low-rank Hadamard product (FedPara, arXiv 2108.06098), LyCORIS init: w2_a starts at zero."""

    network = "loha"

    def __init__(self, target: nn.Module, spec: AdapterSpec):
        super().__init__(target, spec)
        fan_in = self.in_features * int(torch.tensor(self.kernel).prod()) if self.kernel else self.in_features
        self.hada_w1_a = nn.Parameter(torch.empty(self.out_features, spec.rank))
        self.hada_w1_b = nn.Parameter(torch.empty(spec.rank, fan_in))
        self.hada_w2_a = nn.Parameter(torch.empty(self.out_features, spec.rank))
        self.hada_w2_b = nn.Parameter(torch.empty(spec.rank, fan_in))
        nn.init.normal_(self.hada_w1_a, std=0.1)
        nn.init.normal_(self.hada_w1_b, std=1.0)
        nn.init.zeros_(self.hada_w2_a)  # step 0 changes nothing
        nn.init.normal_(self.hada_w2_b, std=1.0)

    def delta_weight(self, base_weight: Tensor | None = None) -> Tensor:
        product = (self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b)
        return product.reshape(self.weight_shape) * self.scale


def factorization(dimension: int) -> tuple[int, int]:
    """Split `dimension` into m * n with m <= n as close to a square as its divisors allow (LyCORIS factor=-1)."""
    best = (1, dimension)
    for m in range(2, int(dimension**0.5) + 1):
        if dimension % m == 0:
            best = (m, dimension // m)
    return best


class LoKrAdapter(Adapter):
    """Kronecker-product adapter (LyCORIS LoKr): a small full w1 times a low-rank w2; w2_b starts at zero."""

    network = "lokr"

    def __init__(self, target: nn.Module, spec: AdapterSpec):
        super().__init__(target, spec)
        out1, out2 = factorization(self.out_features)
        in1, in2 = factorization(self.in_features)
        kernel_numel = int(torch.tensor(self.kernel).prod()) if self.kernel else 1
        self.lokr_w1 = nn.Parameter(torch.empty(out1, in1))
        self.lokr_w2_a = nn.Parameter(torch.empty(out2, spec.rank))
        self.lokr_w2_b = nn.Parameter(torch.empty(spec.rank, in2 * kernel_numel))
        kaiming_(self.lokr_w1)
        kaiming_(self.lokr_w2_a)
        nn.init.zeros_(self.lokr_w2_b)  # step 0 changes nothing

    def delta_weight(self, base_weight: Tensor | None = None) -> Tensor:
        # kron of [out1, in1] and [out2, in2*kh*kw] lays the blocks out exactly as [out, in, kh, kw] expects.
        product = torch.kron(self.lokr_w1, self.lokr_w2_a @ self.lokr_w2_b)
        return product.reshape(self.weight_shape) * self.scale
