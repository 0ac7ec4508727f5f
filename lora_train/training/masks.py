"""Masked loss (kohya `masked_loss`): a per-image mask in latent space multiplies the elementwise loss, so
masked-out pixels contribute nothing.

The mask comes from `<stem>_mask.png` beside the image (white = learn, black = ignore; grey weighs in between),
else from the image's alpha channel; images with neither count everywhere. It is fitted to the image's bucket
exactly as the image is (cover-resize, center crop) and area-averaged down to the latent grid, as kohya does: a
latent cell weighs by the share of its pixels that are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from lora_train.dataset import fit_to_bucket
from lora_train.training.host_api import Example, TrainingError

if TYPE_CHECKING:
    from PIL import Image

    from lora_train.dataset import ImageItem


def load_mask(item: ImageItem) -> Image.Image | None:
    """The item's mask as a greyscale image the size of the (EXIF-oriented) image, or None when it has none.

    Raises TrainingError naming the mask file when its size differs from the image's."""
    from PIL import Image

    if item.mask_path is not None:
        try:
            with Image.open(item.mask_path) as opened:
                mask = opened.convert("L")
        except OSError as exc:
            raise TrainingError(f"cannot read the mask {item.mask_path}: {exc}") from exc
        size = (item.width, item.height) if item.width > 0 else item.load().size
        if mask.size != size:
            raise TrainingError(
                f"the mask {item.mask_path} is {mask.size[0]}x{mask.size[1]} but its image {item.name} is "
                f"{size[0]}x{size[1]}; save the mask at the image's size (masked_loss)"
            )
        return mask
    if item.image is None and item.path is None:
        return None
    image = item.load_oriented()
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA").getchannel("A")
    return None


def load_masks(items: Sequence[ImageItem]) -> list[Image.Image | None]:
    """Every item's mask (None where it has none), read and size-checked before any encoding."""
    return [load_mask(item) for item in items]


def latent_mask(mask: Image.Image, bucket: tuple[int, int], latent_size: tuple[int, int]) -> torch.Tensor:
    """[1, h, w] weights in 0..1: the mask fitted to `bucket` like its image, area-averaged to the latent grid."""
    import numpy as np

    fitted = torch.from_numpy(np.asarray(fit_to_bucket(mask, bucket), dtype=np.float32) / 255.0)
    return torch.nn.functional.interpolate(fitted[None, None], size=latent_size, mode="area")[0]


def attach_masks(
    examples: Sequence[Example], masks: Sequence[Image.Image | None], buckets: Sequence[tuple[int, int]]
) -> int:
    """Give each example its latent-space mask (examples without one keep None = everywhere); returns how many."""
    count = 0
    for example, mask, bucket in zip(examples, masks, buckets, strict=True):
        if mask is not None:
            example.mask = latent_mask(mask, bucket, tuple(example.latents.shape[-2:]))
            count += 1
    return count


def batch_mask(examples: Sequence[Example], like: torch.Tensor) -> torch.Tensor | None:
    """[B, 1, h, w] masks for a batch (ones where an example has none), or None when no example has one."""
    if all(example.mask is None for example in examples):
        return None
    ones = torch.ones((1, *like.shape[-2:]))
    return torch.stack([ones if e.mask is None else e.mask for e in examples]).to(like)
