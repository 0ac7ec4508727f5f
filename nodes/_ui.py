"""Shared bits of the nodes' UI: custom type names, previews shown on a node."""

from __future__ import annotations

import uuid
from pathlib import Path

DATASET_TYPE = "LORA_DATASET"


def settings_since(settings_class, last_first_release: str) -> tuple[list[str], list[str]]:
    """(widget settings of the node's first release, settings added since), in declaration order.

    Saved workflows store widget values by position and API-format workflows name only the inputs they knew: the
    first release's settings stay required, in their order; later ones become optional widgets after them, so an
    older workflow loads its values onto the same widgets, queues without them, and they keep their defaults."""
    names = [f.name for f in settings_class.field_specs() if f.metadata.get("widget", True)]
    split = names.index(last_first_release) + 1
    return names[:split], names[split:]


def pil_to_image_batch(img):
    """A PIL image as a ComfyUI IMAGE batch [1, H, W, 3] of floats in 0..1."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]


def save_temp_preview(img, prefix: str) -> dict[str, str]:
    """Save a PIL image into ComfyUI's temp folder; returns the `ui.images` entry that shows it on the node."""
    import folder_paths

    name = f"{prefix}_{uuid.uuid4().hex[:12]}.png"
    img.save(f"{folder_paths.get_temp_directory()}/{name}", compress_level=1)
    return {"filename": name, "subfolder": "", "type": "temp"}


def loras_dir() -> Path:
    """ComfyUI's first loras folder (where trained and fetched LoRAs go)."""
    import folder_paths

    return Path(folder_paths.get_folder_paths("loras")[0])
