"""Caption handling at training time: tag shuffling (kohya's `shuffle_caption` / `keep_tokens`) and preview prompts.

Shuffling changes the text every time an example is used, so its embedding cannot be cached: with
`shuffle_captions` on, the loop encodes each batch's shuffled captions with the (frozen) text encoder under
`torch.no_grad()`. Why per step rather than a fixed set of pre-encoded variants: a caption of n tags has n!
orders, and a handful of variants would teach the model those few orders (what shuffling is meant to prevent);
the exact cost is one text-encoder forward per image per step (CLIP-L: ~20 GFLOP at 77 tokens, about 1-2% of a
512 px SD1.5 UNet forward + backward) and the text encoder kept loaded next to the UNet during training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

TAG_SEPARATOR = ","


def split_tags(caption: str) -> list[str]:
    """The caption's comma-separated tags, stripped, empty ones dropped."""
    return [tag.strip() for tag in caption.split(TAG_SEPARATOR) if tag.strip()]


def shuffle_tags(caption: str, generator: torch.Generator, keep_tokens: int = 0) -> str:
    """The caption with its tags in a random order, the first `keep_tokens` tags left in place (kohya semantics).

    Draws from `generator` (the run's), so a seed fixes every order and a resumed run repeats them.
    """
    tags = split_tags(caption)
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    order = torch.randperm(len(rest), generator=generator).tolist()
    return ", ".join(kept + [rest[i] for i in order])


def training_captions(
    captions: Sequence[str], dropped: Sequence[bool], generator: torch.Generator, *, keep: int, shuffle: bool
) -> list[str]:
    """What the text encoder sees for one batch: "" where caption dropout hit, shuffled tags when `shuffle` is on.

    Every caption of the (global) batch is shuffled, dropped or not, so every rank of a multi-GPU run makes the
    same draws. `keep` counts leading tags that stay in place (see `kept_tags`).
    """
    out = []
    for caption, drop in zip(captions, dropped, strict=True):
        text = shuffle_tags(caption, generator, keep) if shuffle else caption
        out.append("" if drop else text)
    return out


def kept_tags(keep_tokens: int, trigger_word: str) -> int:
    """Leading tags that never move: the caption's first `keep_tokens`, plus the trigger word (always first)."""
    return keep_tokens + (1 if trigger_word.strip() else 0)


def preview_prompts(sample_prompts: str, trigger_word: str, first_caption: str) -> list[str]:
    """Prompts for the preview images: one per non-empty line, else the trigger word, else the first caption."""
    lines = [line.strip() for line in sample_prompts.splitlines() if line.strip()]
    if lines:
        return lines
    return [trigger_word.strip() or first_caption.strip()]
