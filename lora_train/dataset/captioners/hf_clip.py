"""CLIP encoders from a local Hugging Face folder (transformers `CLIPModel` + tokenizer + image processor)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from lora_train.dataset.captioners.encoders import CaptionError, ClipEncoders

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

TEXT_BATCH = 64
WHERE_TO_PUT_IT = (
    "Put a Hugging Face CLIP model folder there (config.json, model.safetensors, tokenizer.json or vocab.json + "
    "merges.txt, preprocessor_config.json; e.g. a download of openai/clip-vit-large-patch14), for instance in "
    "ComfyUI/models/clip_vision/clip-vit-large-patch14/, and pass its path. Inside ComfyUI you can instead connect "
    "a Load CLIP Vision node (a file in ComfyUI/models/clip_vision/) and a CLIP with the matching text encoder."
)


def _model_id(folder: Path) -> str:
    """Folder path plus config and weight-file sizes and mtimes: changes when the model on disk changes."""
    parts = [str(folder.resolve())]
    for path in sorted(folder.glob("*")):
        if path.suffix in (".json", ".safetensors", ".bin"):
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "hf:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_hf_clip(path: str | Path, device: str = "auto") -> ClipEncoders:
    """Encoders over a transformers CLIPModel folder; raises CaptionError saying what to put where."""
    if not str(path).strip():
        raise CaptionError(f"no CLIP model given (clip_path is empty). {WHERE_TO_PUT_IT}")
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise CaptionError(f"{folder} holds no Hugging Face CLIP model (config.json missing). {WHERE_TO_PUT_IT}")
    import torch
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    try:
        model = CLIPModel.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise CaptionError(f"could not load a CLIPModel from {folder}: {exc}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise CaptionError(f"{folder} has no usable CLIP tokenizer (vocab.json + merges.txt): {exc}") from None
    try:
        processor = CLIPImageProcessor.from_pretrained(str(folder))
    except (OSError, ValueError):
        size = model.config.vision_config.image_size
        log.info("%s has no preprocessor_config.json: using CLIP's standard preprocessing at %d px", folder, size)
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    dev = _pick_device(device)
    model = model.to(dev).eval()
    max_length = model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def encode_images(images: list[Image.Image]) -> torch.Tensor:
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(dev, model.dtype)
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        return model.visual_projection(pooled).float().cpu()

    @torch.no_grad()
    def encode_texts(texts: list[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), TEXT_BATCH):
            batch = tokenizer(texts[start : start + TEXT_BATCH], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(dev)  # fmt: skip
            pooled = model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            chunks.append(model.text_projection(pooled.pooler_output).float().cpu())
        return torch.cat(chunks)

    return ClipEncoders(encode_images=encode_images, encode_texts=encode_texts, model_id=_model_id(folder))
