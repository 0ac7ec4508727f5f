"""TensorBoard event files (`tensorboard` setting): loss, smoothed loss, learning rate, validation loss and the
preview images, through `torch.utils.tensorboard.SummaryWriter` (needs the optional `tensorboard` package).

Events go to `<output folder>/tensorboard/<output_name>/`; open them with
`tensorboard --logdir <output folder>/tensorboard`. Only rank 0 writes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lora_train.training.host_api import Progress, TrainingError

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


def tensorboard_available() -> bool:
    """Whether the `tensorboard` package (which torch's SummaryWriter needs) is installed."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_folder(output_dir: str | Path, output_name: str) -> Path:
    """`<output_dir>/tensorboard/<output_name>`."""
    return Path(output_dir) / TENSORBOARD_DIR / output_name


class TensorBoardLog:
    """A SummaryWriter opened on entering (when `enabled`), closed on leaving; every method is a no-op when off."""

    def __init__(self, folder: Path, enabled: bool):
        self.folder, self.enabled = folder, enabled
        self.writer: Any = None

    def __enter__(self) -> TensorBoardLog:
        if not self.enabled:
            return self
        if not tensorboard_available():
            raise TrainingError("tensorboard is on but the package is not installed: pip install tensorboard "
                                "(in ComfyUI's Python environment), or set tensorboard to false")  # fmt: skip
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.folder))
        log.info("TensorBoard events in %s (tensorboard --logdir %s)", self.folder, self.folder.parent)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def progress(self, progress: Progress) -> None:
        """Loss, smoothed loss, learning rate and (when measured) validation loss at `progress.step`."""
        if self.writer is None:
            return
        step = progress.step
        self.writer.add_scalar("loss/train", progress.loss, step)
        self.writer.add_scalar("loss/train_smoothed", progress.smoothed_loss, step)
        self.writer.add_scalar("lr", progress.lr, step)
        if progress.validation_loss is not None:
            self.writer.add_scalar("loss/validation", progress.validation_loss, step)
        self.writer.flush()

    def previews(self, step: int, paths: Sequence[Path]) -> None:
        """The preview PNGs of `step` as images `preview/<index>`."""
        if self.writer is None or not paths:
            return
        import numpy as np
        from PIL import Image

        for index, path in enumerate(paths):
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"preview/{index}", pixels, step, dataformats="HWC")
        self.writer.flush()
