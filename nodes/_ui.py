"""Shared bits of the nodes' UI: custom type names, previews shown on a node."""

from __future__ import annotations

import uuid
from pathlib import Path

DATASET_TYPE = "LORA_DATASET"


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
