"""Sample previews during training: images with the LoRA as it is now, saved next to it and shown by the host.

The session samples with the host's own sampler while the adapters are attached (they are forward hooks on the
live model). Previews must not change the run: no gradients, adapters in eval mode (no dropout) and every random
stream the loop draws from (torch's global CPU stream and the accelerator's) restored afterwards, so a run with
previews trains bit-identical weights to one without, and resume stays exact.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lora_train.fsutil import atomic_write

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


def sample_due(sample_every: int, step: int, total: int) -> bool:
    """Previews are on and `step` is a multiple of `sample_every` or the last step."""
    return sample_every > 0 and (step % sample_every == 0 or step == total)


def sample_path(output_dir: Path, output_name: str, step: int, index: int) -> Path:
    """`<output_name>_sample_s000100_0.png` beside the LoRA."""
    return Path(output_dir) / f"{output_name}_sample_s{step:06d}_{index}.png"


@contextlib.contextmanager
def preview_mode(modules: Sequence[torch.nn.Module], device: torch.device) -> Iterator[None]:
    """No grad, `modules` in eval mode, and torch's random streams (CPU and `device`) put back afterwards."""
    accelerator = device.type if device.type not in ("cpu", "meta") else None
    fork = torch.random.fork_rng(
        devices=[device] if accelerator else [], device_type=accelerator or "cuda", enabled=True
    )
    modes = [(module, module.training) for module in modules]
    with fork, torch.no_grad():
        for module, _ in modes:
            module.eval()
        try:
            yield
        finally:
            for module, was_training in modes:
                module.train(was_training)


def save_samples(images: Sequence[Image.Image], output_dir: Path, output_name: str, step: int) -> list[Path]:
    """Write each preview as a PNG, atomically; return the paths."""
    paths = []
    for index, image in enumerate(images):
        path = sample_path(output_dir, output_name, step, index)
        with atomic_write(path) as handle:
            image.save(handle, format="PNG")
        paths.append(path)
    return paths


def write_previews(
    session: Any, host: Any, adapters: Sequence[torch.nn.Module], cfg: Any, output_dir: Path, step: int, total: int
) -> list[Path]:
    """Sample the previews (session.sample_previews), save them and hand them to the host (host.show_samples).

    A session without `sample_previews` (a host that cannot sample) logs once per call and writes nothing.
    """
    sample = getattr(session, "sample_previews", None)
    if sample is None:
        log.warning("this host cannot sample previews; sample_every is ignored")
        return []
    with preview_mode(adapters, session.device):
        images = sample(cfg)
    paths = save_samples(images, output_dir, cfg.output_name, step)
    show = getattr(host, "show_samples", None)
    if show is not None:
        show(step, total, images, paths)
    log.info("step %d: saved %d preview(s) %s", step, len(paths), ", ".join(p.name for p in paths))
    return paths
