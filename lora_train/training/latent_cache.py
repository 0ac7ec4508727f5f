"""On-disk cache of VAE latents (`cache_latents_to_disk`): encode each image once per bucket and VAE, across runs.

An entry is keyed by what decides the latents: the image's content (sha256 of the file, or of the pixels for
in-memory images), the bucket it is fitted to, the VAE's identity and how pixels are prepared (`PREPARE`). It
holds the VAE's raw output (before the model's `process_latent_in`), so any model of the same latent space reuses
it. Entries are safetensors files named `<key>.latent` (not `.safetensors`: the cache may sit below the loras
folder, and ComfyUI must not list them as LoRAs), written atomically; a damaged entry is re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lora_train.fsutil import atomic_write_bytes, sha256_file

if TYPE_CHECKING:
    from lora_train.dataset import ImageItem

log = logging.getLogger(__name__)

CACHE_DIR = ".lora_train_cache"
LATENTS_SUBDIR = "latents"
SUFFIX = ".latent"
FORMAT = "lora_train.latents/1"
# Bump when the pixel preparation changes (resize filter, crop, value range): old entries then stop matching.
PREPARE = "cover-resize lanczos, center crop, RGB 0..1 float32 (fit_to_bucket v1)"


def cache_folder(output_dir: str | Path) -> Path:
    """`<output_dir>/.lora_train_cache/latents`.

    Under the output folder rather than the dataset folder: dataset folders may be read-only, in-memory datasets
    have none, and a cache inside the dataset would change the folder fingerprint the dataset node re-runs on."""
    return Path(output_dir) / CACHE_DIR / LATENTS_SUBDIR


def image_digest(item: ImageItem) -> str:
    """sha256 of the image file's bytes, or of an in-memory image's mode, size and pixels. A video clip's (a file
    or a frame folder's files) also covers the frames it trains on and their rate."""
    if item.path is not None and getattr(item, "frames", 0):
        files = sorted(item.path.iterdir()) if item.path.is_dir() else [item.path]
        digest = hashlib.sha256(f"clip:{item.frames}@{item.resample_fps}".encode())
        for file in files:
            digest.update(sha256_file(file).encode())
        return digest.hexdigest()
    if item.path is not None:
        return sha256_file(item.path)
    if item.image is None:
        raise ValueError("ImageItem has neither a path nor an image")
    digest = hashlib.sha256(f"{item.image.mode}:{item.image.size}".encode())
    digest.update(item.image.tobytes())
    return digest.hexdigest()


def tensors_identity(named_tensors: Iterable[tuple[str, torch.Tensor]], label: str, samples: int = 1024) -> str:
    """A fingerprint of a model's weights: names, shapes, dtypes and `samples` evenly spaced values of each
    tensor (cheap on an 83 M-parameter VAE, yet any retrained or fine-tuned VAE differs)."""
    digest = hashlib.sha256(label.encode())
    for name, tensor in named_tensors:
        flat = tensor.detach().flatten()
        stride = max(1, flat.numel() // samples)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat[::stride][:samples].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def latent_key(image_sha256: str, bucket: tuple[int, int], vae_identity: str, prepare: str = PREPARE) -> str:
    """The entry's name: sha256 over everything that decides the latents."""
    fields = {"image": image_sha256, "bucket": list(bucket), "vae": vae_identity, "prepare": prepare}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class LatentCache:
    """A folder of `<key>.latent` entries."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def get(self, key: str) -> torch.Tensor | None:
        """The cached latents, or None when absent or damaged (a damaged entry is logged and later overwritten)."""
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), "pt") as handle:
                if (handle.metadata() or {}).get("key") != key:
                    raise ValueError("entry names another key")
                latents = handle.get_tensor("latents")
        except Exception as exc:  # safetensors raises several types for truncated or foreign files
            log.warning("latent cache entry %s is damaged (%s); encoding the image again", path.name, exc)
            self.misses += 1
            return None
        self.hits += 1
        return latents

    def put(self, key: str, latents: torch.Tensor) -> None:
        """Store `latents` under `key` (write to a temp name, then rename)."""
        from safetensors.torch import save

        data = save({"latents": latents.detach().float().cpu().contiguous()}, metadata={"key": key, "format": FORMAT})
        atomic_write_bytes(self.path(key), data)
