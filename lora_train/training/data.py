"""What the loop trains and validates on, prepared before the model is lent: the training images (minus any held
out for validation), regularisation (class) images mixed in at `reg_ratio` with `prior_loss_weight`, validation
images, and masks (`masked_loss`). Every bad input is refused here, before encoding starts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lora_train.dataset import bucket_counts, buckets_with
from lora_train.training.config import TrainConfig
from lora_train.training.host_api import Example, TrainingError, TrainingHost
from lora_train.training.latent_cache import cache_folder
from lora_train.training.lora_io import DatasetInfo, dataset_info_from
from lora_train.training.masks import attach_masks, load_masks
from lora_train.training.validation import split_validation

if TYPE_CHECKING:
    from lora_train.dataset import LoraDataset

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Encoded examples: `examples` (training + regularisation, what batches are drawn from) and `validation`."""

    examples: list[Example]
    validation: list[Example] = field(default_factory=list)
    reg_info: DatasetInfo | None = None  # the regularisation folders, for ss_reg_dataset_dirs
    num_reg_images: int = 0  # regularisation images per epoch (with repeats), kohya's ss_num_reg_images
    buckets: dict[str, int] = field(default_factory=dict)  # "WxH" -> training images


def training_buckets(items, cfg: TrainConfig) -> list[tuple[int, int]]:
    """The bucket (width, height) of each item under the run's bucket settings (hosts encode at these sizes)."""
    return buckets_with(items, cfg.resolution, cfg.bucket_options())


def check_reg_dataset(reg_dataset: LoraDataset | None) -> None:
    """Refuse a regularisation dataset with no images or with uncaptioned images (their class prompt)."""
    if reg_dataset is None:
        return
    where = f" ({reg_dataset.root})" if reg_dataset.root else ""
    if not reg_dataset.items:
        raise TrainingError(
            f"the regularisation dataset{where} has no images; add class images to it or disconnect reg_dataset"
        )
    empty = [item.name for item in reg_dataset.items if not item.caption.strip()]
    if empty:
        raise TrainingError(
            f"{len(empty)} regularisation image(s) have no caption (e.g. {empty[0]}); give them their class prompt "
            "('a photo of a dog') as .txt captions, metadata.csv or the loader's default_caption"
        )


def reg_repeats(train_count: int, reg_count: int, ratio: float) -> list[int]:
    """Repeats per regularisation image so an epoch holds round(ratio x train_count) of them, spread evenly (images
    beyond that count get 0 and are left out, as kohya leaves out surplus class images)."""
    target = max(1, round(ratio * train_count))
    return [target // reg_count + (1 if index < target % reg_count else 0) for index in range(reg_count)]


def _encode(host: TrainingHost, dataset: LoraDataset, cfg: TrainConfig, output_dir: Path) -> list[Example]:
    """Latents and conditioning, once (and from/to the on-disk latent cache when `cache_latents_to_disk`)."""
    if cfg.cache_latents_to_disk:
        return host.encode_examples(dataset, cfg, cache_dir=cache_folder(output_dir))
    return host.encode_examples(dataset, cfg)


def _encode_with_masks(host, dataset: LoraDataset, cfg: TrainConfig, output_dir: Path, masks) -> list[Example]:
    examples = _encode(host, dataset, cfg, output_dir)
    if masks is not None:
        attach_masks(examples, masks, training_buckets(dataset.items, cfg))
    return examples


def prepare_data(
    cfg: TrainConfig,
    dataset: LoraDataset,
    host: TrainingHost,
    output_dir: Path,
    *,
    reg_dataset: LoraDataset | None = None,
    validation_dataset: LoraDataset | None = None,
) -> TrainingData:
    """Split, check, read masks, then encode: regularisation and validation images first, the training images last
    (a host prepares its preview prompts from the last dataset it encodes)."""
    check_reg_dataset(reg_dataset)
    train_set, held_out = split_validation(cfg, dataset)
    held = [*(held_out.items if held_out else []), *(validation_dataset.items if validation_dataset else [])]
    validation_set = type(dataset)(items=held, root=dataset.root) if held else None
    sets = {"train": train_set, "reg": reg_dataset, "validation": validation_set}
    masks = {name: load_masks(d.items) if cfg.masked_loss and d else None for name, d in sets.items()}
    data = TrainingData(examples=[])
    if reg_dataset is not None:  # class images keep their own captions: no trigger word
        reg = _encode_with_masks(host, reg_dataset, cfg.replace(trigger_word=""), output_dir, masks["reg"])
        data.reg_info = dataset_info_from(reg_dataset)
    if validation_set is not None:
        data.validation = _encode_with_masks(host, validation_set, cfg, output_dir, masks["validation"])
    data.examples = _encode_with_masks(host, train_set, cfg, output_dir, masks["train"])
    data.buckets = bucket_counts(training_buckets(train_set.items, cfg))
    if reg_dataset is not None:
        train_count = sum(max(1, e.repeats) for e in data.examples)
        for example, repeats in zip(reg, reg_repeats(train_count, len(reg), cfg.reg_ratio), strict=True):
            example.repeats, example.loss_weight = repeats, cfg.prior_loss_weight
        mixed = [example for example in reg if example.repeats > 0]
        data.num_reg_images = sum(example.repeats for example in mixed)
        data.examples += mixed
    _log_data(cfg, data, masks)
    return data


def _log_data(cfg: TrainConfig, data: TrainingData, masks: dict) -> None:
    buckets = ", ".join(f"{k} ({v})" for k, v in sorted(data.buckets.items(), key=lambda kv: -kv[1]))
    log.info("%s: %s", cfg.bucket_options().describe(cfg.resolution), buckets)
    if data.num_reg_images:
        log.info("regularisation: %d class image(s) per epoch, loss weight %g", data.num_reg_images,
                 cfg.prior_loss_weight)  # fmt: skip
    if data.validation:
        log.info("validation: %d held-out image(s), every %s step(s)", len(data.validation),
                 cfg.validate_every or "last")  # fmt: skip
    if cfg.masked_loss:
        count = sum(mask is not None for mask in masks["train"] or [])
        log.info("masked loss: %d of %d training image(s) have a mask", count, len(masks["train"] or []))
