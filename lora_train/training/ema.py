"""An exponential moving average of the adapter weights (`ema_decay`): smoother than the last step's weights, it is
what gets saved, previewed and validated when on.

The decay warms up as diffusers' `EMAModel` does without `use_ema_warmup`: min(decay, (1 + n) / (10 + n)) after n
updates, so the first steps do not stay glued to the random-free initial adapters. The average lives beside the
parameters (fp32, same device) and goes into the resume state, so a resumed run continues it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch


class AdapterEMA:
    """Shadow copies of `params`, updated after every optimizer step."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.updates = 0

    def current_decay(self) -> float:
        """The decay of the next update: min(decay, (1 + n) / (10 + n)) (diffusers EMAModel.get_decay)."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * param."""
        weight = 1.0 - self.current_decay()
        for shadow, param in zip(self.shadow, self.params, strict=True):
            shadow.lerp_(param.detach().float(), weight)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the parameters for the duration (save, previews, validation); then the trained
        ones back, bit for bit."""
        trained = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param, shadow in zip(self.params, self.shadow, strict=True):
                param.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, saved in zip(self.params, trained, strict=True):
                    param.copy_(saved)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """`"<index>" -> shadow` on the CPU (for the resume state)."""
        return {str(index): tensor.detach().cpu().contiguous() for index, tensor in enumerate(self.shadow)}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        """Restore what `state_tensors` gave (shapes checked)."""
        if len(tensors) != len(self.shadow):
            raise ValueError(f"the EMA state holds {len(tensors)} tensors, the adapters have {len(self.shadow)}")
        for index, shadow in enumerate(self.shadow):
            shadow.copy_(tensors[str(index)].to(shadow))
        self.updates = updates


@contextlib.contextmanager
def ema_applied(ema: AdapterEMA | None) -> Iterator[None]:
    """`ema.applied()`, or nothing when EMA is off."""
    if ema is None:
        yield
        return
    with ema.applied():
        yield
