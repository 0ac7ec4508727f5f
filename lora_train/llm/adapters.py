"""peft adapters on the base model, and the adapter folder others load with `PeftModel.from_pretrained`.

The folder holds peft's two files: `adapter_config.json` and `adapter_model.safetensors`, whose header carries the
same kind of metadata as the image LoRAs (kohya-style `ss_*` keys that publish reads, ModelSpec `modelspec.*`, the
resolved settings under `lora_train.config`, plus the base model and the training data's sha256). peft ignores the
header metadata when loading. Every folder is written into a hidden temporary folder and swapped in when complete.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any

import torch

from lora_train.fsutil import atomic_folder
from lora_train.llm.config import LlmTrainConfig
from lora_train.llm.model import BaseModelInfo

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CONFIG_KEY = "lora_train.config"
PEFT_URL = "https://github.com/huggingface/peft"


def attach_adapters(model: Any, cfg: LlmTrainConfig, info: BaseModelInfo) -> Any:
    """The base model wrapped by peft with fresh, seeded LoRA/DoRA adapters (only they require grad)."""
    import peft

    lora_config = peft.LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules(),
        use_dora=cfg.network == "dora",
        task_type="CAUSAL_LM",
    )
    if cfg.quantization == "4bit":
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    torch.manual_seed(cfg.seed)  # lora_A's kaiming init draws from the global generator
    try:
        peft_model = peft.get_peft_model(model, lora_config)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"targets={cfg.targets!r}: {exc}") from None
    # adapter_config.json names the base by its folder's name, not by this machine's path to it.
    peft_model.peft_config["default"].base_model_name_or_path = info.name
    return peft_model


def trainable_parameters(peft_model: Any) -> dict[str, torch.nn.Parameter]:
    """The adapter parameters by name, in a fixed order (what the optimizer steps and the resume state holds)."""
    return {name: p for name, p in peft_model.named_parameters() if p.requires_grad}


def adapter_metadata(
    cfg: LlmTrainConfig, info: BaseModelInfo, data_sha256: str, data_summary: dict, steps: int, started_at: float
) -> dict[str, str]:
    """The adapter file's header metadata (all strings): kohya-style keys, ModelSpec, settings, base model, data."""
    finished = datetime.datetime.now()
    args = {"use_dora": cfg.network == "dora", "target_modules": cfg.target_modules()}
    return {
        "format": "pt",  # what peft's own save writes
        "ss_network_module": "peft.tuners.lora",
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": repr(float(cfg.alpha)),
        "ss_network_args": json.dumps(args),
        "ss_output_name": cfg.output_name,
        "ss_sd_model_name": info.name,  # publish reads the base model's name from here, as for image LoRAs
        "ss_base_model_version": info.model_type,
        "ss_steps": str(steps),
        "ss_learning_rate": str(cfg.learning_rate),
        "ss_optimizer": cfg.optimizer,
        "ss_lr_scheduler": cfg.lr_scheduler,
        "ss_seed": str(cfg.seed),
        "ss_max_train_steps": str(cfg.steps),
        "ss_training_started_at": repr(float(started_at)),
        "ss_training_finished_at": repr(finished.timestamp()),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{info.model_type}/{cfg.network}",
        "modelspec.implementation": PEFT_URL,
        "modelspec.title": cfg.output_name,
        "modelspec.date": finished.replace(microsecond=0).isoformat(),
        "lora_train.kind": "peft_adapter",
        "lora_train.base_model": info.name,
        "lora_train.base_model_class": info.class_name,
        "lora_train.data_sha256": data_sha256,
        "lora_train.data": json.dumps(data_summary, sort_keys=True),
        CONFIG_KEY: json.dumps(cfg.to_dict(), sort_keys=True),
    }


def save_adapter_folder(peft_model: Any, folder: Path, metadata: dict[str, str]) -> Path:
    """`folder/adapter_model.safetensors` (finite values only) + `adapter_config.json`, swapped in atomically."""
    import peft
    from safetensors.torch import save_file

    # save_embedding_layers=False: embeddings are never trained here, and peft's "auto" asks the Hugging Face hub
    # about a base named like our folder.
    adapter_state = peft.get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in adapter_state.items()}
    bad = [key for key, value in tensors.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise ValueError(f"refusing to write {folder.name}: {bad[0]} holds NaN or inf (training diverged: lower "
                         "learning_rate or use bf16 instead of fp16); nothing was written")  # fmt: skip
    with atomic_folder(folder) as staging:
        save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata=metadata)
        peft_model.peft_config["default"].save_pretrained(str(staging))
    log.info("wrote adapter %s (%d tensors)", folder, len(tensors))
    return folder


def save_merged(info: BaseModelInfo, cfg: LlmTrainConfig, adapter_dir: Path, tokenizer: Any, folder: Path) -> Path:
    """A full model folder: the base (loaded again, unquantized, on the CPU) with the saved adapter merged in.

    After QLoRA too the merge goes into the unquantized base, in mixed_precision's dtype: merging into the 4-bit base
    (peft dequantizes, adds, quantizes again) would round the update away. The merged model therefore differs from
    the trained one by the base's 4-bit rounding, as every QLoRA merge into the original weights does."""
    import peft
    import transformers

    from lora_train.llm.model import DTYPES

    dtype = getattr(torch, DTYPES[cfg.mixed_precision])
    base = getattr(transformers, info.class_name).from_pretrained(str(info.path), dtype=dtype)
    merged = peft.PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload(safe_merge=True)
    with atomic_folder(folder) as staging:
        merged.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
    if cfg.quantization == "4bit":
        log.info("wrote merged model %s: the adapter merged into the unquantized %s base (not 4-bit)", folder, dtype)
    else:
        log.info("wrote merged model %s", folder)
    return folder


def read_adapter_metadata(folder: str | Path) -> dict[str, str]:
    """The header metadata of an adapter folder's weights."""
    from lora_train.safetensors_file import read_header

    return dict(read_header(Path(folder) / ADAPTER_WEIGHTS).metadata)
