"""Image files of a dataset folder: finding them (hidden files skipped), telling loss masks (`<stem>_mask.png`)
from training images, and probing each one fully before training (empty, truncated, corrupt, oversized)."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FRAMES_SUFFIX = ".frames"  # `<clip>.frames/`: the frames of one video clip (lora_train.dataset.video), not images
# PIL's own guard (Image.MAX_IMAGE_PIXELS) is 89,478,485 pixels: a 3-channel image that size is ~256 MiB.
DEFAULT_MAX_PIXELS = 89_478_485


class DatasetError(ValueError):
    """A dataset could not be loaded (or, in strict mode, one file was bad); the message names the file."""


def find_images(root: Path):
    """Image files below `root`, sorted, skipping hidden files and folders (macOS `._x.jpg`, our temp files) and
    frame folders (their images are one clip's frames)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(FRAMES_SUFFIX))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(dirpath) / name


MASK_SUFFIX = "_mask"


CONTROL_SUFFIX = "_control"


def split_masks(
    paths: list[Path], suffix: str = MASK_SUFFIX, extensions: tuple[str, ...] = (".png",)
) -> tuple[list[Path], dict[Path, Path]]:
    """(training images, image -> its `<stem><suffix>` file): a `x_mask.png` beside an image `x.*` is that image's
    loss mask (kohya masked_loss), a `x_control.*` its control/source image (edit models), never a training image
    of its own."""
    by_stem = {(p.parent, p.stem): p for p in paths}
    found: dict[Path, Path] = {}
    for path in paths:
        if path.stem.endswith(suffix) and path.suffix.lower() in extensions:
            image = by_stem.get((path.parent, path.stem[: -len(suffix)]))
            if image is not None:
                found[image] = path
    kept = set(found.values())
    return [p for p in paths if p not in kept], found


def probe_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Open, size-check, then fully decode an image; returns (width, height) after EXIF orientation.

    Raises DatasetError with a plain reason for empty, truncated, corrupt or oversized files.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DatasetError(f"cannot read file: {exc.strerror}") from None
    if size == 0:
        raise DatasetError("empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            width, height = img.size  # header only: nothing decoded yet
            if width * height > max_pixels:
                raise DatasetError(
                    f"{width}x{height} = {width * height / 1e6:.1f} MP is more than max_pixels "
                    f"({max_pixels / 1e6:.1f} MP); refused unread as a possible decompression bomb. Resize it, or "
                    "raise max_pixels if you trust the file"
                )
            img.load()
            orientation = img.getexif().get(0x0112, 1)
    except DatasetError:
        raise
    except UnidentifiedImageError:
        raise DatasetError("not an image PIL can read (corrupt or wrong extension)") from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"refused unread as a possible decompression bomb: {exc} Resize the image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"corrupt or truncated image: {exc}") from None
    # EXIF orientations 5-8 rotate by 90 degrees: width and height swap once the orientation is applied.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
