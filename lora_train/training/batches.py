"""The data order: seeded epochs over the cached examples (with repeats), batches that never mix latent shapes."""

from __future__ import annotations

import math

import torch

from lora_train.training.config import TrainConfig
from lora_train.training.host_api import Example, TrainingError


class BatchOrder:
    """Seeded epochs over examples (with repeats); a batch never mixes latent shapes (aspect buckets)."""

    def __init__(self, examples: list[Example], batch_size: int, generator: torch.Generator):
        self.shapes = [tuple(e.latents.shape) for e in examples]
        self.repeats = [max(1, e.repeats) for e in examples]
        self.batch_size = batch_size
        self.generator = generator
        self.epoch = 0
        self._queue: list[list[int]] = []

    def batches_per_epoch(self) -> int:
        counts: dict[tuple, int] = {}
        for shape, repeats in zip(self.shapes, self.repeats, strict=True):
            counts[shape] = counts.get(shape, 0) + repeats
        return sum(math.ceil(n / self.batch_size) for n in counts.values())

    def _new_epoch(self) -> None:
        by_shape: dict[tuple, list[int]] = {}
        for index, (shape, repeats) in enumerate(zip(self.shapes, self.repeats, strict=True)):
            by_shape.setdefault(shape, []).extend([index] * repeats)
        batches = []
        for indices in by_shape.values():
            perm = torch.randperm(len(indices), generator=self.generator).tolist()
            shuffled = [indices[i] for i in perm]
            batches += [shuffled[i : i + self.batch_size] for i in range(0, len(shuffled), self.batch_size)]
        order = torch.randperm(len(batches), generator=self.generator).tolist()
        self._queue = [batches[i] for i in order]
        self.epoch += 1

    def next(self) -> list[int]:
        if not self._queue:
            self._new_epoch()
        return self._queue.pop(0)

    def state_dict(self) -> dict:
        """Epoch, the batches still queued and how many examples they index (the shared generator's state is saved
        by the caller)."""
        return {"epoch": self.epoch, "queue": [list(batch) for batch in self._queue], "examples": len(self.shapes)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`; refuses a state that indexes another number of examples."""
        written_for = state.get("examples", len(self.shapes))
        if written_for != len(self.shapes):
            raise TrainingError(
                f"the resume state was written for {written_for} examples (training images, class images with "
                f"repeats from reg_ratio) and this run has {len(self.shapes)}; use the same datasets and reg_ratio, "
                "or set resume to false to start over"
            )
        self.epoch = int(state["epoch"])
        self._queue = [list(batch) for batch in state["queue"]]


def total_steps(cfg: TrainConfig, order: BatchOrder) -> int:
    """Optimizer steps for the run: `steps`, or `epochs` worth of batches divided by gradient accumulation."""
    if cfg.epochs > 0:
        return max(1, cfg.epochs * order.batches_per_epoch() // cfg.gradient_accumulation)
    return cfg.steps
