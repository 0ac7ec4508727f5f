"""A small loss chart drawn with PIL (no plotting library needed): raw points and an EMA-smoothed line."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw


def smooth(values: Sequence[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with bias correction, as TensorBoard's smoothing slider does."""
    out, last, norm = [], 0.0, 0.0
    for value in values:
        last = weight * last + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


VALIDATION_COLOUR = (110, 205, 120)


def loss_chart(
    history: Sequence[tuple[int, float]],
    validation: Sequence[tuple[int, float]] = (),
    width: int = 640,
    height: int = 320,
) -> Image.Image:
    """Loss against step: light raw line, strong smoothed line, validation loss (green dots and line) when given,
    min/max labels."""
    image = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(image)
    margin_left, margin_right, margin_top, margin_bottom = 56, 12, 12, 28
    plot_w, plot_h = width - margin_left - margin_right, height - margin_top - margin_bottom
    draw.rectangle([margin_left, margin_top, margin_left + plot_w, margin_top + plot_h], outline=(80, 80, 90))
    if not history:
        draw.text((margin_left + 8, margin_top + 8), "no loss recorded yet", fill=(200, 200, 200))
        return image
    steps = [s for s, _ in history]
    losses = [v for _, v in history]
    lo, hi = min(losses + [v for _, v in validation]), max(losses + [v for _, v in validation])
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * abs(lo or 1), hi + 0.5 * abs(hi or 1)
    first, last = steps[0], max(steps[-1], *(s for s, _ in validation)) if validation else steps[-1]
    last = last if last != first else first + 1

    def xy(step: float, value: float) -> tuple[float, float]:
        x = margin_left + (step - first) / (last - first) * plot_w
        y = margin_top + (1 - (value - lo) / (hi - lo)) * plot_h
        return x, y

    raw = [xy(s, v) for s, v in history]
    smoothed = [xy(s, v) for s, v in zip(steps, smooth(losses), strict=True)]
    if len(raw) > 1:
        draw.line(raw, fill=(90, 120, 170), width=1)
        draw.line(smoothed, fill=(255, 170, 60), width=2)
    else:
        x, y = raw[0]
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(255, 170, 60))
    _draw_validation(draw, [xy(s, v) for s, v in validation])
    if validation:
        draw.text((margin_left + 8, margin_top + 4), "validation", fill=VALIDATION_COLOUR)
    draw.text((4, margin_top), f"{hi:.4g}", fill=(200, 200, 200))
    draw.text((4, margin_top + plot_h - 10), f"{lo:.4g}", fill=(200, 200, 200))
    draw.text((margin_left, height - 18), f"step {steps[0]}", fill=(200, 200, 200))
    draw.text((margin_left + plot_w - 70, height - 18), f"step {steps[-1]}", fill=(200, 200, 200))
    draw.text((margin_left + plot_w // 2 - 40, height - 18), "loss (smoothed)", fill=(255, 170, 60))
    return image


def _draw_validation(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]]) -> None:
    if len(points) > 1:
        draw.line(points, fill=VALIDATION_COLOUR, width=2)
    for x, y in points:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=VALIDATION_COLOUR)
