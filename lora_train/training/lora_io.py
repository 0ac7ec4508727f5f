"""LoRA files: atomic, finite-only safetensors writes; reads; kohya `ss_*` + SAI `modelspec.*` metadata.

The metadata follows what kohya sd-scripts writes (so A1111/Forge/Civitai tools that read `ss_*` keys show
it) and the SAI ModelSpec (`modelspec.*`, https://github.com/Stability-AI/ModelSpec), plus our resolved config
under `lora_train.config` so a file always says how it was made.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_train.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

CONFIG_KEY = "lora_train.config"
SAI_MODEL_SPEC_VERSION = "1.0.0"


class LoraFileError(ValueError):
    """A LoRA file could not be written or read; the message names the file and what to change."""


# ---- writing and reading -------------------------------------------------------------------------------------
def save_lora(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write `tensors` + `metadata` to `path` atomically. Refuses NaN/inf tensors and non-string metadata.

    Nothing is written when a check fails, so a diverged run never leaves a broken file in the loras folder.
    """
    import safetensors.torch

    path = Path(path)
    if not tensors:
        raise LoraFileError(f"refusing to write {path.name}: no tensors (did the adapter set adapt any layer?)")
    bad_meta = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
    if bad_meta:
        raise LoraFileError(f"refusing to write {path.name}: metadata values must be strings; {bad_meta[0]!r} is "
                            f"{type(metadata[bad_meta[0]]).__name__} (json.dumps it)")  # fmt: skip
    ready: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise LoraFileError(
                f"refusing to write {path.name}: tensor {key!r} holds NaN or inf values. Training diverged: "
                "lower learning_rate, enable max_grad_norm, or use bf16 instead of fp16. Nothing was written."
            )
        # Own contiguous CPU copies: safetensors refuses views that share storage.
        ready[key] = tensor.detach().to("cpu", copy=True).contiguous()
    data = safetensors.torch.save(ready, metadata=dict(metadata))
    atomic_write_bytes(path, data)
    log.info("wrote %s (%d tensors, %.1f MB)", path, len(ready), len(data) / 1e6)


def load_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a LoRA file: (tensors on the CPU, metadata). The header is validated before any tensor is loaded."""
    import safetensors.torch

    from lora_train.safetensors_file import SafetensorsError, read_header

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA file at {path}")
    try:
        header = read_header(path)
    except SafetensorsError as exc:
        raise LoraFileError(f"{path} is not a valid safetensors LoRA: {exc}") from None
    return safetensors.torch.load_file(str(path), device="cpu"), dict(header.metadata)


# ---- metadata ----------------------------------------------------------------------------------------------
@dataclass
class DatasetInfo:
    """What kohya records about the data: images per folder, repeats and caption tag counts."""

    num_images: int = 0  # images x repeats, kohya's ss_num_train_images
    dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)  # folder -> {n_repeats, img_count}
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)  # folder -> {tag: count}


def caption_tags(caption: str) -> list[str]:
    """Comma-separated tags of a caption, stripped, empty ones dropped (kohya's tag counting)."""
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def dataset_info_from(dataset: Any) -> DatasetInfo:
    """Summarise a `LoraDataset` (anything with `.items` of caption/repeats/path, and `.root`) for metadata."""
    root = Path(dataset.root) if getattr(dataset, "root", None) else None
    dirs: dict[str, dict[str, int]] = {}
    tags: dict[str, Counter] = {}
    total = 0
    for item in dataset.items:
        folder = _folder_name(getattr(item, "path", None), root)
        repeats = max(1, int(getattr(item, "repeats", 1)))
        entry = dirs.setdefault(folder, {"n_repeats": repeats, "img_count": 0})
        entry["img_count"] += 1
        tags.setdefault(folder, Counter()).update(caption_tags(item.caption))
        total += repeats
    return DatasetInfo(total, dirs, {folder: dict(counts) for folder, counts in tags.items()})


def _folder_name(path: Path | None, root: Path | None) -> str:
    if path is None:
        return "images"
    parent = Path(path).parent
    if root is not None and parent == root:
        return root.name or "images"
    return parent.name or "images"


@dataclass(frozen=True)
class NetworkFormat:
    """How kohya tools name a network family: the module that trains it and its `network_args`."""

    module: str
    args: Callable[[int, float], dict[str, str]]


def _conv_args(rank: int, alpha: float) -> dict[str, str]:
    return {"conv_dim": str(rank), "conv_alpha": _number(alpha)}


NETWORK_FORMATS: dict[str, NetworkFormat] = {
    "lora": NetworkFormat("networks.lora", lambda rank, alpha: {}),
    "locon": NetworkFormat("networks.lora", _conv_args),
    "dora": NetworkFormat("lycoris.kohya", lambda r, a: {"algo": "lora", "dora_wd": "True", **_conv_args(r, a)}),
    "loha": NetworkFormat("lycoris.kohya", lambda r, a: {"algo": "loha", **_conv_args(r, a)}),
    "lokr": NetworkFormat("lycoris.kohya", lambda r, a: {"algo": "lokr", "factor": "-1", **_conv_args(r, a)}),
}


@dataclass(frozen=True)
class ArchitectureFormat:
    """kohya's base-model version tag, the ModelSpec implementation URL, prediction type and native size."""

    base_model_version: str
    implementation: str
    prediction_type: str | None
    resolution: int


SAI_GENERATIVE_MODELS = "https://github.com/Stability-AI/generative-models"
ARCHITECTURES: dict[str, ArchitectureFormat] = {
    "stable-diffusion-v1": ArchitectureFormat("sd_v1", SAI_GENERATIVE_MODELS, "epsilon", 512),
    "stable-diffusion-v2-512": ArchitectureFormat("sd_v2", SAI_GENERATIVE_MODELS, "epsilon", 512),
    "stable-diffusion-v2-768-v": ArchitectureFormat("sd_v2", SAI_GENERATIVE_MODELS, "v", 768),
    "stable-diffusion-xl-v1-base": ArchitectureFormat("sdxl_base_v1-0", SAI_GENERATIVE_MODELS, "epsilon", 1024),
    "stable-diffusion-3": ArchitectureFormat("sd3", SAI_GENERATIVE_MODELS, None, 1024),
    "flux-1-dev": ArchitectureFormat("flux1", "https://github.com/black-forest-labs/flux", None, 1024),
    "flux-1-schnell": ArchitectureFormat("flux1", "https://github.com/black-forest-labs/flux", None, 1024),
}
DEFAULT_ARCHITECTURE = ArchitectureFormat("", "https://github.com/comfyanonymous/ComfyUI", None, 1024)

# kohya key -> our TrainConfig key: copied when the config has it.
SS_FROM_CONFIG = {
    "ss_learning_rate": "learning_rate",
    "ss_text_encoder_lr": "text_encoder_lr",
    "ss_unet_lr": "learning_rate",
    "ss_optimizer": "optimizer",
    "ss_lr_scheduler": "lr_scheduler",
    "ss_lr_warmup_steps": "warmup_steps",
    "ss_mixed_precision": "mixed_precision",
    "ss_seed": "seed",
    "ss_batch_size_per_device": "batch_size",
    "ss_gradient_accumulation_steps": "gradient_accumulation",
    "ss_gradient_checkpointing": "gradient_checkpointing",
    "ss_max_grad_norm": "max_grad_norm",
    "ss_noise_offset": "noise_offset",
    "ss_min_snr_gamma": "min_snr_gamma",
    "ss_caption_dropout_rate": "caption_dropout",
    "ss_network_dropout": "dropout",
    "ss_loss_type": "loss",
    "ss_huber_c": "huber_delta",
    "ss_max_train_steps": "steps",
}


def training_metadata(
    config: Mapping[str, Any],
    *,
    reg_info: DatasetInfo | None = None,
    num_reg_images: int = 0,
    buckets: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """kohya's regularisation and bucket keys: `ss_reg_dataset_dirs` ({folder: {n_repeats, img_count}}),
    `ss_num_reg_images` (class images per epoch, with repeats), `ss_prior_loss_weight`, `ss_enable_bucket`,
    `ss_min/max_bucket_reso` (resolved: resolution/2 and x2 when 0), `ss_bucket_no_upscale`, `ss_bucket_info`."""
    resolution = int(config.get("resolution") or 512)
    step = int(config.get("bucket_step") or 64)
    meta = {
        "ss_reg_dataset_dirs": json.dumps(reg_info.dataset_dirs if reg_info else {}),
        "ss_num_reg_images": str(num_reg_images),
        "ss_prior_loss_weight": _text(config.get("prior_loss_weight", 1.0)),
        "ss_enable_bucket": str(bool(config.get("buckets", True))),
        "ss_min_bucket_reso": str(config.get("bucket_min") or max(step, (resolution // 2) // step * step)),
        "ss_max_bucket_reso": str(config.get("bucket_max") or resolution * 2),
        "ss_bucket_no_upscale": str(bool(config.get("bucket_no_upscale", False))),
    }
    if buckets:
        sizes = {f"{i}": {"resolution": [int(v) for v in k.split("x")], "count": n}
                 for i, (k, n) in enumerate(sorted(buckets.items()))}  # fmt: skip
        meta["ss_bucket_info"] = json.dumps({"buckets": sizes})
    return meta


# Over 60 lines only through its keyword signature (every field a caller may set) and one flat table of kohya keys.
def build_metadata(
    config: Mapping[str, Any],
    *,
    base_model_name: str,
    network: str,
    rank: int,
    alpha: float,
    steps: int,
    epochs: int,
    architecture: str = "stable-diffusion-v1/lora",
    dataset: Any | None = None,
    dataset_info: DatasetInfo | None = None,
    title: str | None = None,
    trigger_words: str | Sequence[str] = (),
    started_at: float | None = None,
    finished_at: float | None = None,
    base_model_hash: str | None = None,
    author: str | None = None,
    description: str | None = None,
    license: str | None = None,
    tags: Sequence[str] = (),
) -> dict[str, str]:
    """kohya `ss_*` + ModelSpec `modelspec.*` + `lora_train.config` metadata for a LoRA file (all values str).

    `config` is the resolved training config (TrainConfig.to_dict()); `dataset` a LoraDataset (or pass a
    ready `dataset_info`); times are Unix seconds (finished defaults to now).
    """
    if network not in NETWORK_FORMATS:
        raise ValueError(f"unknown network {network!r}; choose one of: {', '.join(NETWORK_FORMATS)}")
    finished_at = datetime.datetime.now().timestamp() if finished_at is None else finished_at
    arch = architecture_format(architecture)
    resolution = int(config.get("resolution") or arch.resolution)
    if dataset_info is None:
        dataset_info = dataset_info_from(dataset) if dataset is not None else DatasetInfo()
    triggers = [trigger_words] if isinstance(trigger_words, str) else list(trigger_words)
    triggers = [t.strip() for t in triggers if t and t.strip()]
    output_name = str(config.get("output_name") or title or "lora")
    net = NETWORK_FORMATS[network]

    meta: dict[str, str] = {
        "ss_network_module": net.module,
        "ss_network_dim": str(rank),
        "ss_network_alpha": _number(alpha),
        "ss_network_args": json.dumps(net.args(rank, alpha)),
        "ss_output_name": output_name,
        "ss_sd_model_name": base_model_name,
        "ss_base_model_version": arch.base_model_version,
        "ss_v2": str(arch.base_model_version == "sd_v2"),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_steps": str(steps),
        "ss_epoch": str(epochs),
        "ss_num_epochs": str(epochs),
        "ss_num_train_images": str(dataset_info.num_images),
        "ss_dataset_dirs": json.dumps(dataset_info.dataset_dirs),
        "ss_tag_frequency": json.dumps(dataset_info.tag_frequency),
        "ss_training_finished_at": _number(finished_at),
        "ss_cache_latents": "True",
    }
    meta.update({key: _text(config[name]) for key, name in SS_FROM_CONFIG.items() if config.get(name) is not None})
    if started_at is not None:
        meta["ss_training_started_at"] = _number(started_at)
    if base_model_hash:
        meta["ss_new_sd_model_hash"] = base_model_hash
    spec = _modelspec(architecture, arch, title or output_name, resolution, finished_at, triggers)
    spec.update(author=author, description=description, license=license, tags=", ".join(tags) or None)
    meta.update({f"modelspec.{key}": value for key, value in spec.items() if value is not None})
    meta[CONFIG_KEY] = json.dumps(dict(config), sort_keys=True, default=str)
    return meta


def _modelspec(
    architecture: str, arch: ArchitectureFormat, title: str, resolution: int, finished_at: float, triggers: list[str]
) -> dict[str, str | None]:
    """ModelSpec 1.0 fields (`modelspec.*`, Stability AI's model card keys) that describe what was trained."""
    return {
        "sai_model_spec": SAI_MODEL_SPEC_VERSION,
        "architecture": architecture,
        "implementation": arch.implementation,
        "title": title,
        "resolution": f"{resolution}x{resolution}",
        "date": datetime.datetime.fromtimestamp(int(finished_at)).isoformat(),
        "prediction_type": arch.prediction_type,
        "trigger_phrase": ", ".join(triggers) or None,
    }


def architecture_format(architecture: str) -> ArchitectureFormat:
    """kohya / ModelSpec facts for a `modelspec.architecture` (by its base id, then by prefix; else generic)."""
    arch_id = architecture.split("/")[0]
    return ARCHITECTURES.get(arch_id) or next(
        (fmt for key, fmt in ARCHITECTURES.items() if arch_id.startswith(key)), DEFAULT_ARCHITECTURE
    )


def _number(value: float) -> str:
    """A float as kohya writes it (alpha 8 -> "8.0"), round-trippable: repr keeps full precision."""
    return repr(float(value))


def _text(value: Any) -> str:
    if isinstance(value, Iterable) and not isinstance(value, str):
        return json.dumps(list(value))
    return str(value)
