"""What every captioner back end provides: a CLIP model's two towers as plain callables, and the error raised when
auto-labelling cannot run as asked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image


class CaptionError(ValueError):
    """Auto-labelling cannot run as asked; the message says what to change."""


@dataclass
class ClipEncoders:
    """The two halves of one CLIP model as plain callables, plus an id that keys the text-embedding cache."""

    encode_images: Callable[[list[Image.Image]], torch.Tensor]
    encode_texts: Callable[[list[str]], torch.Tensor]
    model_id: str
