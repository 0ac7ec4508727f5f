"""Optimizer and learning-rate schedule registries (names feed the node combos and the CLI choices)."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable

import torch

ParamGroups = list[dict]


def _optional(module: str, package: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(
            f"the {purpose} optimizer needs the '{package}' package: pip install {package} "
            "(in ComfyUI's Python environment), or pick another optimizer"
        ) from None


def fused_kwargs(groups: ParamGroups) -> dict:
    """`{"fused": True}` where this torch has a fused Adam(W) kernel for every parameter's device (one kernel for
    all parameters instead of a dozen small ops each), else `{}` (torch's default implementation)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # older torch
        return {}
    params = [p for group in groups for p in group["params"]]
    supported = set(_get_fused_kernels_supported_devices())
    if params and all(p.is_floating_point() and p.device.type in supported for p in params):
        return {"fused": True}
    return {}


def _adamw(groups: ParamGroups, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, weight_decay=weight_decay, **fused_kwargs(groups))


def _adam(groups: ParamGroups, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, weight_decay=weight_decay, **fused_kwargs(groups))


def _sgd(groups: ParamGroups, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, momentum=0.9, weight_decay=weight_decay)


def _adamw8bit(groups: ParamGroups, weight_decay: float) -> torch.optim.Optimizer:
    bnb = _optional("bitsandbytes", "bitsandbytes", "adamw8bit")
    return bnb.optim.AdamW8bit(groups, weight_decay=weight_decay)


def _adafactor(groups: ParamGroups, weight_decay: float) -> torch.optim.Optimizer:
    # Fixed learning rate (our schedule drives it), no relative step: the usual setting for LoRA training.
    transformers_opt = _optional("transformers.optimization", "transformers", "adafactor")
    return transformers_opt.Adafactor(
        groups, scale_parameter=False, relative_step=False, warmup_init=False, weight_decay=weight_decay
    )


def _prodigy(groups: ParamGroups, weight_decay: float) -> torch.optim.Optimizer:
    prodigyopt = _optional("prodigyopt", "prodigyopt", "prodigy")
    return prodigyopt.Prodigy(groups, weight_decay=weight_decay, safeguard_warmup=True, use_bias_correction=True)


OPTIMIZERS: dict[str, Callable[[ParamGroups, float], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adam": _adam,
    "sgd": _sgd,
    "adamw8bit": _adamw8bit,
    "adafactor": _adafactor,
    "prodigy": _prodigy,
}


def make_optimizer(name: str, groups: Iterable[dict], weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Build a registered optimizer over parameter groups (each with its own `lr`)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name](list(groups), weight_decay)


def _constant(progress: float) -> float:
    return 1.0


def _linear(progress: float) -> float:
    return max(0.0, 1.0 - progress)


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _cosine_with_restarts(progress: float, cycles: int = 3) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * ((cycles * min(progress, 0.999999)) % 1.0)))


SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
    "cosine_with_restarts": _cosine_with_restarts,
}


def lr_factor(name: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier at `step` (0-based): linear warmup, then the named decay over the rest."""
    if name not in SCHEDULES:
        raise ValueError(f"lr_scheduler must be one of {', '.join(SCHEDULES)}, got {name!r}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, total_steps - warmup_steps)
    return SCHEDULES[name]((step - warmup_steps) / decay_steps)


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """A LambdaLR over `lr_factor` (its state dict resumes exactly)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(name, step, total_steps, warmup_steps))
