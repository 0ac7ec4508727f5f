"""kohya-style aspect-ratio buckets: (width, height) pairs, multiples of a step, with area <= resolution².

Items are anything with `width`, `height` (0 = unknown) and `load()`, such as `lora_train.dataset.ImageItem`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def bucket_resolutions(
    resolution: int, step: int = 64, min_size: int | None = None, max_size: int | None = None
) -> list[tuple[int, int]]:
    """kohya-style buckets: (width, height) pairs, multiples of `step`, area <= resolution², sorted by aspect."""
    min_size = min_size or max(step, (resolution // 2) // step * step)
    max_size = max_size or resolution * 2
    max_area = resolution * resolution
    buckets: set[tuple[int, int]] = set()
    width = min_size
    while width <= max_size:
        height = min(max_size, (max_area // width) // step * step)
        if height >= min_size:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    side = resolution // step * step
    buckets.add((side, side))
    return sorted(buckets, key=lambda wh: wh[0] / wh[1])


def assign_buckets(
    items: Sequence[Any],
    resolution: int,
    *,
    step: int = 64,
    min_size: int | None = None,
    max_size: int | None = None,
) -> list[tuple[int, int]]:
    """The bucket (width, height) for each item: the bucket whose aspect ratio is nearest in log space."""
    buckets = bucket_resolutions(resolution, step, min_size, max_size)
    log_ratios = [math.log(w / h) for w, h in buckets]
    chosen = []
    for item in items:
        width, height = item.width, item.height
        if width <= 0 or height <= 0:
            width, height = item.load().size
        ratio = math.log(width / height)
        index = min(range(len(buckets)), key=lambda i: abs(log_ratios[i] - ratio))
        chosen.append(buckets[index])
    return chosen
