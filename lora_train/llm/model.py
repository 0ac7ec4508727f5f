"""The base model and tokenizer from a local Hugging Face folder, through transformers' own classes only.

Checkpoints that need `trust_remote_code` (ChatGLM2/3's `modeling_chatglm.py`) are refused before anything is
loaded: running a folder's Python is arbitrary code execution, and those classes do not follow transformers'
interfaces (no chat template, their own attention and cache). GLM-4 is in transformers natively (GlmForCausalLM,
Glm4ForCausalLM), and its `-hf` checkpoints load as such.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_train.llm.config import LlmTrainConfig

log = logging.getLogger(__name__)

# config.json's model_type -> the transformers class that trains it. Only families tested here are listed.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "glm": "GlmForCausalLM",
    "glm4": "Glm4ForCausalLM",
}
REMOTE_CODE_HINT = (
    "use a checkpoint in transformers' own format instead: GLM-4 as GlmForCausalLM / Glm4ForCausalLM (the '-hf' "
    "repositories, e.g. THUDM/glm-4-9b-chat-hf or the GLM-4-0414 models), or a Llama-family model"
)
DTYPES = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}


class LlmModelError(ValueError):
    """The base model folder is unusable; the message names the folder, the file and what to use instead."""


@dataclass
class BaseModelInfo:
    """What config.json says about the base model, checked before loading any weight."""

    path: Path
    model_type: str
    class_name: str
    fingerprint: str  # config.json's bytes + weight file names and sizes: a resume only continues on the same model

    @property
    def name(self) -> str:
        return self.path.name


def inspect_base_model(folder: str | Path) -> BaseModelInfo:
    """Read and check `folder/config.json`: a family listed in ARCHITECTURES, no remote code, weights present."""
    path = Path(folder).expanduser()
    config_file = path / "config.json"
    if not config_file.is_file():
        raise LlmModelError(f"base_model {str(path)!r} is not a Hugging Face model folder (no config.json there)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LlmModelError(f"{config_file} is not readable JSON: {exc}") from None
    model_type = str(config.get("model_type", ""))
    if "auto_map" in config or model_type == "chatglm" or list(path.glob("modeling_*.py")):
        raise LlmModelError(
            f"{path.name} is a remote-code checkpoint (model_type {model_type!r}, its classes live in the folder's "
            "own modeling_*.py and need trust_remote_code): this trainer never runs code from a model folder, and "
            f"ChatGLM2/3's classes do not follow transformers' interfaces; {REMOTE_CODE_HINT}"
        )
    if model_type not in ARCHITECTURES:
        raise LlmModelError(
            f"{path.name} has model_type {model_type!r}; supported: "
            + ", ".join(f"{k} ({v})" for k, v in ARCHITECTURES.items())
        )
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise LlmModelError(f"{path} has no *.safetensors weights (pickled .bin checkpoints are not loaded)")
    digest = hashlib.sha256(config_file.read_bytes())
    for weight in weights:
        digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
    return BaseModelInfo(path, model_type, ARCHITECTURES[model_type], digest.hexdigest()[:16])


def load_tokenizer(info: BaseModelInfo) -> Any:
    """The folder's tokenizer (fast, without remote code); a pad token is borrowed from EOS when it has none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(info.path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise LlmModelError(f"cannot load the tokenizer of {info.path}: {exc}") from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out of loss and attention anyway
    return tokenizer


# bitsandbytes runs 4-bit layers on the CPU (quantize, forward, backward) from 0.46, whose torch.library ops have CPU
# implementations; 0.45 and older assert on a CPU tensor. Tested here: 0.45.5 (refused), 0.46.1 and 0.50.2 (train).
CPU_4BIT_MIN_VERSION = (0, 46)


def bitsandbytes_version() -> str:
    """The installed bitsandbytes' version string (its package metadata, else its `__version__`)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        import bitsandbytes

        return str(getattr(bitsandbytes, "__version__", "0"))


def _version_tuple(version: str) -> tuple[int, ...]:
    """(0, 50, 2) from "0.50.2" / "0.50.2.dev0" / "0.46.0+cpu": the leading numeric parts."""
    parts = []
    for part in version.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_quantization(cfg: LlmTrainConfig, device_type: str) -> None:
    """QLoRA needs bitsandbytes; on the CPU one recent enough to run 4-bit layers there. Say so before loading."""
    if cfg.quantization == "none":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LlmModelError(
            "quantization=4bit (QLoRA) needs the bitsandbytes package: pip install bitsandbytes (in this Python "
            "environment; on the CPU version 0.46 or newer), or set quantization: none"
        )
    if device_type == "cuda":
        return
    version = bitsandbytes_version()
    if _version_tuple(version) < CPU_4BIT_MIN_VERSION:
        wanted = ".".join(map(str, CPU_4BIT_MIN_VERSION))
        raise LlmModelError(
            f"quantization=4bit (QLoRA) on the CPU needs bitsandbytes >= {wanted} (older versions have no CPU "
            f"4-bit kernels); this environment has bitsandbytes {version}: pip install -U 'bitsandbytes>={wanted}', "
            "train on a CUDA GPU, or set quantization: none"
        )


def quantization_config(cfg: LlmTrainConfig, dtype: Any) -> Any:
    """transformers' 4-bit NF4 settings (QLoRA's: double quantization); layers compute in `dtype` (fp32 on the CPU
    unless mixed_precision says otherwise)."""
    import transformers

    return transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )


def load_base_model(info: BaseModelInfo, cfg: LlmTrainConfig, device: Any) -> Any:
    """The model, frozen, in the compute dtype (or 4-bit NF4 for QLoRA), on `device`."""
    import torch
    import transformers

    model_class = getattr(transformers, info.class_name)
    dtype = getattr(torch, DTYPES[cfg.mixed_precision])
    options: dict[str, Any] = {"dtype": dtype}
    if cfg.quantization == "4bit":
        options["quantization_config"] = quantization_config(cfg, dtype)
        options["device_map"] = {"": device}  # bitsandbytes quantizes each weight as it lands on `device`
    model = model_class.from_pretrained(str(info.path), **options)
    if cfg.quantization == "none":
        model.to(device)
    model.requires_grad_(False)
    model.config.use_cache = False  # training never reuses a cache; keeping it costs memory
    kind = f"4-bit NF4, compute {dtype}" if cfg.quantization == "4bit" else str(dtype)
    log.info("loaded %s (%s, %s) on %s", info.name, info.class_name, kind, device)
    return model
