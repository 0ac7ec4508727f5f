"""The mutable pieces of a language-model run (adapters, optimizer, schedule, random streams, row order, step) and
their resumable state: the same `.lora_state` file format as the image trainer (lora_train.training), so a run
interrupted by Ctrl-C or a crash continues bit-identically on the CPU."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_train.llm.config import LlmTrainConfig
from lora_train.training import ResumeError, ResumeState, Streams, capture_streams

# Settings that shape the adapter or the token stream: a resume with any of them changed is refused.
STRUCTURAL = ("network", "rank", "alpha", "targets", "quantization", "batch_size", "gradient_accumulation", "seed",
              "max_length", "overlong", "packing", "chat_template", "system_prompt")  # fmt: skip
DATA_KEY = "data_sha256"


class RowOrder:
    """Seeded epochs over the token rows, in global batches (batch_size x processes) every process draws alike."""

    def __init__(self, rows: int, batch_size: int, generator: torch.Generator):
        self.rows, self.batch_size, self.generator = rows, batch_size, generator
        self.epoch = 0
        self._queue: list[list[int]] = []

    def batches_per_epoch(self) -> int:
        return math.ceil(self.rows / self.batch_size)

    def next(self) -> list[int]:
        """The row indices of the next global batch (a new seeded permutation at each epoch start)."""
        if not self._queue:
            perm = torch.randperm(self.rows, generator=self.generator).tolist()
            self._queue = [perm[i : i + self.batch_size] for i in range(0, self.rows, self.batch_size)]
            self.epoch += 1
        return self._queue.pop(0)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "queue": [list(batch) for batch in self._queue]}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._queue = [list(batch) for batch in state["queue"]]


@dataclass
class LlmRun:
    """What a resume state captures."""

    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    generator: torch.Generator
    order: RowOrder
    fingerprint: str
    data_sha256: str
    step: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def stream_state(self) -> Streams:
        """The random streams and row order right now (rewinds an interrupted step)."""
        return capture_streams(self.generator, self.order)

    def snapshot(self, cfg: LlmTrainConfig, streams: Streams | None = None) -> ResumeState:
        return ResumeState.capture(
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            streams=streams or self.stream_state(),
            step=self.step,
            adapters={name: p.detach().float().cpu().contiguous() for name, p in self.params.items()},
            config={**cfg.to_dict(), DATA_KEY: self.data_sha256},
            base_model=self.fingerprint,
            history=[list(point) for point in self.history],
        )

    def restore(self, state: ResumeState) -> None:
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(state.adapters[name].to(param.device, param.dtype))
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.generator.set_state(state.generator_state)
        torch.set_rng_state(state.torch_rng_state)
        self.order.load_state_dict(state.order)
        self.step = state.step
        self.history = [(int(s), float(v)) for s, v in state.history]


def check_compatible(state: ResumeState, run: LlmRun, cfg: LlmTrainConfig, path: Path) -> None:
    """Refuse a state made for another base model, other data or other structural settings, naming the change."""
    advice = "use a different output_name, delete the state, or set resume to false"
    if state.base_model != run.fingerprint:
        raise ResumeError(f"the resume state {path.name} was written for another base model; {advice}")
    if state.config.get(DATA_KEY) != run.data_sha256:
        raise ResumeError(f"the resume state {path.name} was written for other training data; {advice}")
    current = cfg.to_dict()
    for key in STRUCTURAL:
        if state.config.get(key) != current[key]:
            raise ResumeError(f"cannot resume {path.name}: {key} was {state.config.get(key)!r} and is now "
                              f"{current[key]!r}; set it back, or {advice}")  # fmt: skip
    if set(state.adapters) != set(run.params):
        raise ResumeError(f"the resume state {path.name} holds other adapter tensors than this run; {advice}")
