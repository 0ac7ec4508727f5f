"""kohya-style aspect-ratio buckets: (width, height) pairs, multiples of a step, with area <= resolution².

Items are anything with `width`, `height` (0 = unknown) and `load()`, such as `lora_train.dataset.ImageItem`.
`BucketOptions` holds the knobs kohya exposes (`enable_bucket`, `min_bucket_reso`, `max_bucket_reso`,
`bucket_reso_steps`, `bucket_no_upscale`); the trainer and the dataset report use the same ones.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BucketOptions:
    """How images are fitted: buckets on/off, smallest and largest side (0 = resolution/2 and resolution*2), the
    side step, and no-upscale (small images keep their own size, rounded down to the step, instead of growing)."""

    enabled: bool = True
    min_size: int = 0
    max_size: int = 0
    step: int = 64
    no_upscale: bool = False

    def describe(self, resolution: int) -> str:
        """One line for reports, e.g. `buckets 256-1024 px, step 64, no upscale`."""
        if not self.enabled:
            side = resolution // self.step * self.step
            return f"buckets off: every image center-cropped to {side}x{side}"
        low, high = (
            self.min_size or max(self.step, (resolution // 2) // self.step * self.step),
            self.max_size or (resolution * 2),
        )
        return f"buckets {low}-{high} px, step {self.step}" + (", no upscale" if self.no_upscale else "")


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


def _item_size(item: Any) -> tuple[int, int]:
    width, height = item.width, item.height
    if width <= 0 or height <= 0:
        width, height = item.load().size
    return width, height


def _no_upscale_bucket(width: int, height: int, resolution: int, step: int) -> tuple[int, int]:
    """kohya's bucket_no_upscale: an image within resolution² keeps its size rounded down to `step`; a larger one
    is scaled to resolution² at its own aspect ratio first."""
    if width * height > resolution * resolution:
        scale = math.sqrt(resolution * resolution / (width * height))
        width, height = width * scale, height * scale
    return max(step, int(width) // step * step), max(step, int(height) // step * step)


def assign_buckets(
    items: Sequence[Any],
    resolution: int,
    *,
    step: int = 64,
    min_size: int | None = None,
    max_size: int | None = None,
    no_upscale: bool = False,
    enabled: bool = True,
) -> list[tuple[int, int]]:
    """The bucket (width, height) for each item: the bucket whose aspect ratio is nearest in log space (or, with
    `no_upscale`, the image's own size within resolution²; with buckets off, one square of `resolution`)."""
    if not enabled:
        side = resolution // step * step
        return [(side, side)] * len(items)
    buckets = bucket_resolutions(resolution, step, min_size, max_size)
    log_ratios = [math.log(w / h) for w, h in buckets]
    chosen = []
    for item in items:
        width, height = _item_size(item)
        if no_upscale:
            chosen.append(_no_upscale_bucket(width, height, resolution, step))
            continue
        ratio = math.log(width / height)
        index = min(range(len(buckets)), key=lambda i: abs(log_ratios[i] - ratio))
        chosen.append(buckets[index])
    return chosen


def buckets_with(items: Sequence[Any], resolution: int, options: BucketOptions) -> list[tuple[int, int]]:
    """`assign_buckets` with a `BucketOptions`."""
    return assign_buckets(
        items,
        resolution,
        step=options.step,
        min_size=options.min_size or None,
        max_size=options.max_size or None,
        no_upscale=options.no_upscale,
        enabled=options.enabled,
    )


def bucket_counts(buckets: Sequence[tuple[int, int]]) -> dict[str, int]:
    """`"WxH" -> images` for a list of buckets."""
    return dict(Counter(f"{w}x{h}" for w, h in buckets))


def fit_to_bucket(image, size: tuple[int, int]):
    """Scale so the image covers `size`, then center-crop to it (kohya's bucket fitting)."""
    from PIL import Image

    w, h = size
    scale = max(w / image.width, h / image.height)
    resized = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))), Image.LANCZOS)
    left, top = (resized.width - w) // 2, (resized.height - h) // 2
    return resized.crop((left, top, left + w, top + h))
