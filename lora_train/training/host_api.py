"""What the training loop needs from the world around it, and what it hands back: the host protocol (ComfyUI's
adapter in lora_train.host implements it; the core tests use a pure-torch stand-in), the cached examples it
encodes, the progress it is told, and the one error type training raises."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from lora_train.dataset import LoraDataset
    from lora_train.training.config import TrainConfig


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message names the setting, file or step."""


@dataclass
class Example:
    """One cached training example: model-space latents and the host's encoded conditioning for its caption."""

    latents: torch.Tensor  # [C, h, w], already through the model's process_latent_in
    cond: Any
    empty_cond: Any = None  # the empty caption's conditioning, for caption dropout
    repeats: int = 1
    caption: str = ""  # as trained (trigger word included), for text-encoder training
    size: dict[str, int] | None = None  # the host's size conditioning (SDXL: original size, crop, target)
    mask: torch.Tensor | None = None  # [1, h, w] loss weights in latent space (masked_loss), set by the trainer
    loss_weight: float = 1.0  # prior_loss_weight for regularisation images


@dataclass
class Progress:
    """What the host is told every `log_every` steps."""

    step: int
    total: int
    loss: float
    smoothed_loss: float
    lr: float
    eta_s: float
    elapsed_s: float
    validation_loss: float | None = None  # measured at this step (its own series; see training.validation)


class TrainingSession(Protocol):
    """The diffusion model lent for training; created by `TrainingHost.session()`."""

    diffusion_model: torch.nn.Module
    sampling: Any
    device: torch.device

    def kohya_prefix(self, module_path: str) -> str: ...
    def fingerprint(self) -> str: ...
    def file_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def collate(self, conds: list[Any]) -> Any: ...
    def predict(
        self, model_input: torch.Tensor, sigmas: torch.Tensor, timesteps: torch.Tensor, cond: Any, noisy: torch.Tensor
    ) -> torch.Tensor: ...


class TrainingHost(Protocol):
    """What the loop needs from the world around it."""

    base_model_name: str
    architecture: str

    def encode_examples(
        self, dataset: LoraDataset, cfg: TrainConfig, cache_dir: Path | None = None
    ) -> list[Example]: ...
    def session(self, cfg: TrainConfig) -> contextlib.AbstractContextManager[TrainingSession]: ...
    def check_cancel(self) -> None: ...
    def report(self, progress: Progress) -> None: ...
