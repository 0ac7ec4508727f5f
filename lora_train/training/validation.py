"""Validation loss: the training objective on held-out images at fixed noise and fixed noise levels, so one run's
curve compares with another's (same `validation_seed`, same images: same draws).

Held-out images come from `validation_split` (a seeded share of the dataset, never trained on) or a separate
validation dataset. Each is measured at `VALIDATION_TIMES` (spread over the schedule, through the model's own
shift) with noise drawn once from `validation_seed`; adapters and model in eval mode (no dropout), under the EMA
weights when `ema_decay` is on, and torch's random streams left as they were, so validating changes nothing
about training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lora_train.training.config import TrainConfig
from lora_train.training.ema import ema_applied
from lora_train.training.host_api import Example, TrainingError, TrainingSession
from lora_train.training.losses import sigmas_at
from lora_train.training.previews import preview_mode
from lora_train.training.run import Run
from lora_train.training.step import predicted_loss

if TYPE_CHECKING:
    from lora_train.dataset import LoraDataset

log = logging.getLogger(__name__)

# Times in (0, 1) (1 = pure noise) every validation image is measured at.
VALIDATION_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def split_validation(cfg: TrainConfig, dataset: LoraDataset) -> tuple[LoraDataset, LoraDataset | None]:
    """(training images, held-out images) for `validation_split`: round(split x images), at least one, chosen by
    a generator seeded with `seed`. Refuses a split that leaves nothing to train on."""
    if cfg.validation_split <= 0:
        return dataset, None
    count = len(dataset.items)
    held_out = max(1, round(cfg.validation_split * count))
    if held_out >= count:
        raise TrainingError(
            f"validation_split={cfg.validation_split} holds out {held_out} of the {count} image(s), leaving none to "
            "train on; lower validation_split, add images, or connect a separate validation dataset instead"
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    chosen = set(order[:held_out])
    items = dataset.items
    train = [item for index, item in enumerate(items) if index not in chosen]
    held = [item for index, item in enumerate(items) if index in chosen]
    kind = type(dataset)
    return kind(items=train, root=dataset.root, report=dataset.report), kind(items=held, root=dataset.root)


@dataclass
class Validator:
    """The held-out examples with their fixed noise, measured every `validate_every` steps and at the end."""

    cfg: TrainConfig
    examples: list[Example]
    noise: list[torch.Tensor]  # per example: [len(VALIDATION_TIMES), C, h, w]

    @classmethod
    def create(cls, cfg: TrainConfig, examples: list[Example]) -> Validator:
        generator = torch.Generator().manual_seed(cfg.validation_seed)
        noise = [torch.randn((len(VALIDATION_TIMES), *e.latents.shape), generator=generator) for e in examples]
        return cls(cfg, examples, noise)

    def due(self, step: int, total: int) -> bool:
        every = self.cfg.validate_every
        return step == total or (every > 0 and step % every == 0)

    def measure_if_due(self, run: Run, session: TrainingSession, total: int) -> float | None:
        """The validation loss at this step (also appended to `run.validation_history`), or None when not due."""
        if not self.due(run.step, total):
            return None
        value = self.loss(run, session)
        run.validation_history.append((run.step, value))
        best_step, best = best_validation(run.validation_history)
        log.info("step %d: validation loss %.6f (best %.6f at step %d)", run.step, value, best, best_step)
        return value

    def loss(self, run: Run, session: TrainingSession) -> float:
        """Mean loss over the held-out examples and `VALIDATION_TIMES` with the weights as they are now."""
        device = session.device
        sigmas = sigmas_at(session.sampling, torch.tensor(VALIDATION_TIMES), device=device)
        total = torch.zeros((), device=device)
        with preview_mode([*run.adapter_sets, session.diffusion_model], device), ema_applied(run.ema):
            for example, noise in zip(self.examples, self.noise, strict=True):
                total += self._example_loss(session, example, noise.to(device), sigmas)
        return float(total) / len(self.examples)

    def _example_loss(self, session: TrainingSession, example: Example, noise, sigmas) -> torch.Tensor:
        """One example's mean loss over the validation times, in chunks of `batch_size`."""
        chunk, losses = self.cfg.batch_size, []
        for start in range(0, len(sigmas), chunk):
            rows = len(sigmas[start : start + chunk])
            latents = example.latents[None].expand(rows, *example.latents.shape).to(session.device)
            if self.cfg.train_text_encoder:  # the text encoder's adapters change the conditioning
                cond = session.encode_captions([example.caption] * rows, latents, [example.size] * rows)
            else:
                cond = session.collate([example.cond] * rows)
            loss = predicted_loss(self.cfg, session, [example] * rows, latents, noise[start : start + chunk],
                                  sigmas[start : start + chunk], cond)  # fmt: skip
            losses.append(loss * rows)
        return torch.stack(losses).sum() / len(sigmas)


def best_validation(history: list[tuple[int, float]]) -> tuple[int, float]:
    """(step, loss) of the lowest validation loss (the earliest on ties)."""
    return min(history, key=lambda point: (point[1], point[0]))
