"""Small synthetic datasets with a strong, measurable style, for the demo, tests and benches (seeded)."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from lora_train.fsutil import atomic_write, atomic_write_text

SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond", "bar", "dot")
STYLE_COLOR = (230, 40, 40)  # saturated red: easy to measure in sampled images


def style_image(index: int, size: int = 64, color: tuple[int, int, int] = STYLE_COLOR, seed: int = 0) -> Image.Image:
    """A red-dominated image with a light shape on it; differs per index."""
    rng = random.Random(seed * 1000 + index)
    jitter = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in color)
    image = Image.new("RGB", (size, size), jitter)
    draw = ImageDraw.Draw(image)
    shape = SHAPES[index % len(SHAPES)]
    a, b = rng.randint(size // 8, size // 3), rng.randint(2 * size // 3, size - size // 8)
    light = (250, 210, 200)
    if shape in ("circle", "dot", "ring"):
        draw.ellipse(
            [a, a, b, b],
            outline=light if shape == "ring" else None,
            fill=None if shape == "ring" else light,
            width=max(1, size // 16),
        )
    elif shape in ("square", "bar"):
        draw.rectangle([a, a, b, a + (b - a) // (3 if shape == "bar" else 1)], fill=light)
    else:
        draw.polygon([(size // 2, a), (b, b), (a, b)], fill=light)
    return image


def write_style_dataset(
    folder: str | Path, count: int = 8, size: int = 64, trigger: str = "redstyle", seed: int = 0
) -> Path:
    """Write `count` PNGs with `.txt` captions ("redstyle, a circle") into `folder`; return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        name = f"{index:03d}_{SHAPES[index % len(SHAPES)]}"
        with atomic_write(folder / f"{name}.png") as handle:
            style_image(index, size, seed=seed).save(handle, format="PNG")
        atomic_write_text(folder / f"{name}.txt", f"{trigger}, a {SHAPES[index % len(SHAPES)]}")
    return folder


def style_frames(index: int, frames: int, size: int = 64, seed: int = 0) -> list[Image.Image]:
    """A red-style clip: one style image whose shape drifts one pixel right per frame."""
    import numpy as np

    pixels = np.asarray(style_image(index, size, seed=seed))
    return [Image.fromarray(np.roll(pixels, t, axis=1)) for t in range(frames)]


def write_clip_dataset(
    folder: str | Path, count: int = 2, frames: int = 9, size: int = 64, trigger: str = "redstyle", fps: int = 16
) -> Path:
    """Write `count` animated GIF clips (`frames` frames at `fps`) with `.txt` captions into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        name = f"clip{index:02d}_{SHAPES[index % len(SHAPES)]}"
        images = style_frames(index, frames, size)
        with atomic_write(folder / f"{name}.gif") as handle:
            images[0].save(handle, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
        atomic_write_text(folder / f"{name}.txt", f"{trigger}, a drifting {SHAPES[index % len(SHAPES)]}")
    return folder
