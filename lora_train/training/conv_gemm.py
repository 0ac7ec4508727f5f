"""Small-image convolutions as one GEMM on the CPU while training.

Where a convolution's output has few positions but many channels (a UNet's 1280-channel levels at 2x2 and 4x4 when
training at low resolution), oneDNN's kernel spends its time reading and reordering a large weight for very little
work: measured on one thread, 1280 -> 1280 3x3 at 2x2, batch 2, forward + input gradient took 77 ms with
F.conv2d and 25 ms as unfold + one matmul (the weight read once, as a plain [out, in x k x k] matrix). The same
values up to float rounding; larger outputs keep F.conv2d, which is faster there. Frozen fp32 convolutions of the
lent model only, restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

# Output positions (batch x height x width) up to which the GEMM form is used: 2x2 and 4x4 at batch 2-4 (faster
# there: 2.5-3x); 8x8 at batch 2 measured even, 16x16 slower.
MAX_POSITIONS = 64


def gemm_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation):
    """F.conv2d(x, weight, bias, stride, padding, dilation) (groups 1) as unfold + one matmul."""
    batch = x.shape[0]
    kernel = weight.shape[-2:]
    out_h = (x.shape[2] + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (x.shape[3] + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [B, in*kh*kw, L]
    cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # [in*kh*kw, B*L]
    matrix = weight.reshape(weight.shape[0], -1)
    out = matrix @ cols if bias is None else torch.addmm(bias[:, None], matrix, cols)  # [out, B*L]
    return out.reshape(weight.shape[0], batch, out_h, out_w).transpose(0, 1).contiguous()


def _eligible(module: torch.nn.Module) -> bool:
    return (
        isinstance(module, torch.nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
        and not module.weight.requires_grad
        and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
        and not getattr(module, "comfy_cast_weights", False)
        and not getattr(module, "weight_function", None)
        and not getattr(module, "bias_function", None)
    )


def _forward(module: torch.nn.Conv2d, original):
    def forward(x, *args, **kwargs):
        small = x.dim() == 4 and x.shape[0] * x.shape[2] * x.shape[3] // (module.stride[0] * module.stride[1])
        if (
            not args
            and not kwargs
            and x.dtype == module.weight.dtype
            and x.device == module.weight.device
            and not torch.is_autocast_enabled("cpu")
            and 0 < small <= MAX_POSITIONS
        ):
            return gemm_conv2d(x, module.weight, module.bias, module.stride, module.padding, module.dilation)
        return original(x, *args, **kwargs)

    return forward


@contextlib.contextmanager
def small_convs_as_gemm(root: torch.nn.Module, enabled: bool) -> Iterator[int]:
    """Route `root`'s frozen fp32 CPU convolutions through `gemm_conv2d` when their output is small (yields how
    many convolutions are routed); their own forward is back afterwards."""
    convs = [m for m in root.modules() if _eligible(m)] if enabled else []
    own = {id(conv): conv.__dict__.get("forward") for conv in convs}  # a wrapper someone else set, kept
    for conv in convs:
        conv.forward = _forward(conv, conv.forward)
    try:
        yield len(convs)
    finally:
        for conv in convs:
            if own[id(conv)] is None:
                del conv.forward  # back to the class's forward
            else:
                conv.forward = own[id(conv)]
