"""Training datasets: images with captions, from a folder or from the graph.

`LoraDataset` is what the Load Dataset node outputs (ComfyUI type `LORA_DATASET`) and the trainer consumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class ImageItem:
    """One training image: a file on disk or an in-memory image, its caption and how often an epoch repeats it."""

    caption: str
    path: Path | None = None
    image: Image.Image | None = None
    repeats: int = 1
    width: int = 0
    height: int = 0

    def load(self) -> Image.Image:
        """The image as RGB: EXIF orientation applied, alpha flattened onto white."""
        from PIL import Image, ImageOps

        if self.image is not None:
            img = self.image
        elif self.path is not None:
            with Image.open(self.path) as opened:
                img = ImageOps.exif_transpose(opened)
                img.load()
        else:
            raise ValueError("ImageItem has neither a path nor an image")
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return img.convert("RGB")


@dataclass
class DatasetReport:
    """What loading found: counts and the named problems."""

    images: int = 0
    captions: int = 0
    missing_captions: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # file -> reason
    sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> count
    buckets: dict[str, int] = field(default_factory=dict)  # "WxH" -> count
    warnings: list[str] = field(default_factory=list)


@dataclass
class LoraDataset:
    """Images with captions plus the report of how they were found."""

    items: list[ImageItem]
    root: Path | None = None
    report: DatasetReport = field(default_factory=DatasetReport)

    def __len__(self) -> int:
        return len(self.items)
