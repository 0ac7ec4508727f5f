"""`LlmTrainConfig` and `LlmPaths`: every setting of a language-model LoRA run (YAML keys, CLI help, adapter metadata).

The same conventions as `lora_train.training.TrainConfig`: defaults with the reason for them, bounds, help text,
unknown keys refused with the nearest valid name. A job config selects these with `model_type: causal_lm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lora_train.settings import Settings, SettingsError, setting

NETWORK_CHOICES = ("lora", "dora")
QUANTIZATION_CHOICES = ("none", "4bit")
TARGET_CHOICES = ("all_linear", "attention")
OVERLONG_CHOICES = ("error", "truncate", "drop")
# Registries of lora_train.training (optim.OPTIMIZERS / SCHEDULES): the names are repeated here so that reading
# the settings does not import torch; a test checks they agree.
OPTIMIZER_CHOICES = ("adamw", "adam", "sgd", "adamw8bit", "adafactor", "prodigy")
SCHEDULER_CHOICES = ("constant", "linear", "cosine", "cosine_with_restarts")
PRECISION_CHOICES = ("no", "bf16", "fp16")


@dataclass
class LlmTrainConfig(Settings):
    """What decides a causal-LM LoRA run. Defaults follow common instruction-tuning practice for 1-10B models."""

    # ---- the adapter ----------------------------------------------------------------------------------------
    network: str = setting(
        "lora", "Adapter type: lora, or dora (weight-decomposed LoRA, arXiv 2402.09353).", choices=NETWORK_CHOICES
    )
    rank: int = setting(16, "LoRA rank r: the adapter's capacity. 8-64 is typical.", min=1, max=1024)
    alpha: float = setting(32.0, "LoRA alpha: updates are scaled by alpha/rank (peft's lora_alpha).", min=0.0001,
                           max=4096)  # fmt: skip
    dropout: float = setting(0.05, "Dropout on the adapter input during training (peft's lora_dropout).", min=0.0,
                             max=0.9)  # fmt: skip
    targets: str = setting(
        "all_linear",
        "Which layers get adapters: every linear layer of the decoder (QLoRA paper's choice) or only attention "
        "projections. A comma-separated list of module names (q_proj, v_proj, ...) also works.",
    )
    quantization: str = setting(
        "none",
        "none, or 4bit: load the base model in 4-bit NF4 and train LoRA on top (QLoRA, arXiv 2305.14314); "
        "needs bitsandbytes (on the CPU: 0.46 or newer). --merge then merges into the unquantized base.",
        choices=QUANTIZATION_CHOICES,
    )
    # ---- optimisation -------------------------------------------------------------------------------------
    learning_rate: float = setting(2e-4, "Peak learning rate (2e-4 is the usual LoRA rate for LLMs).", min=1e-8,
                                   max=1.0)  # fmt: skip
    steps: int = setting(200, "Optimizer steps to train (used when epochs is 0).", min=1, max=1_000_000)
    epochs: int = setting(0, "Passes over the data instead of `steps`; 0 = use steps.", min=0, max=10_000)
    batch_size: int = setting(4, "Sequences per forward pass (per process).", min=1, max=1024)
    gradient_accumulation: int = setting(
        1, "Forward passes per optimizer step (effective batch = batch_size x this x processes).", min=1, max=1024
    )
    optimizer: str = setting("adamw", "Optimizer (adamw8bit needs bitsandbytes).", choices=OPTIMIZER_CHOICES)
    weight_decay: float = setting(0.0, "Decoupled weight decay.", min=0.0, max=1.0, advanced=True)
    lr_scheduler: str = setting("cosine", "Learning-rate schedule after warmup.", choices=SCHEDULER_CHOICES)
    warmup_steps: int = setting(0, "Linear warmup steps from 0 to the learning rate.", min=0, max=100_000)
    max_grad_norm: float = setting(1.0, "Clip the adapter gradient norm; 0 = no clipping.", min=0.0, max=1e6)
    seed: int = setting(42, "Seed for adapter init, data order and dropout: same seed, same adapter.", min=0,
                        max=2**63 - 1)  # fmt: skip
    # ---- data ---------------------------------------------------------------------------------------------
    max_length: int = setting(1024, "Longest training sequence in tokens (prompt + response).", min=8,
                              max=1_048_576)  # fmt: skip
    overlong: str = setting(
        "error",
        "What to do with an example longer than max_length: error (refuse before training, naming the lines), "
        "truncate (cut the end; the count is reported), or drop (skip it; the count is reported).",
        choices=OVERLONG_CHOICES,
    )
    packing: bool = setting(
        False,
        "Pack several examples into each max_length row (fewer padding tokens). Packed examples cannot see each "
        "other: positions restart per example, and transformers masks attention per example from them.",
    )
    chat_template: str = setting(
        "",
        "A Jinja chat template file, for a tokenizer without one (or to replace its own); empty = the "
        "tokenizer's chat_template.",
    )
    system_prompt: str = setting(
        "", "System message put before instruction/input/output records that have none; empty = no system turn."
    )
    # ---- memory / speed -----------------------------------------------------------------------------------
    mixed_precision: str = setting(
        "no", "Compute dtype of the base model: no = fp32, bf16 or fp16 (adapter weights stay fp32).",
        choices=PRECISION_CHOICES,
    )  # fmt: skip
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward: less memory, ~30% slower.")
    # ---- output -------------------------------------------------------------------------------------------
    output_name: str = setting("my_llm_lora", "Adapter folder name inside output_dir.")
    save_steps: int = setting(
        0, "Also save every N steps (folder name gets _sNNNNNN); 0 = only at the end.", min=0, max=1_000_000
    )
    keep_last: int = setting(3, "Keep only the newest N intermediate saves; 0 = keep them all.", min=0, max=10_000)
    resume: bool = setting(True, "Continue from <output_name>.lora_state when one is there (bit-identical on CPU).")
    merge: bool = setting(
        False, "Also write <output_name>_merged: the base model with the adapter merged in (a full model folder)."
    )
    log_every: int = setting(10, "Read the loss back every N steps (a device sync).", min=1, max=10_000,
                             advanced=True)  # fmt: skip

    ALIASES: ClassVar[dict[str, str]] = {
        "lora_rank": "rank",
        "lora_r": "rank",
        "lora_alpha": "alpha",
        "lora_dropout": "dropout",
        "lr": "learning_rate",
        "max_train_steps": "steps",
        "num_train_epochs": "epochs",
        "per_device_train_batch_size": "batch_size",
        "gradient_accumulation_steps": "gradient_accumulation",
        "cutoff_len": "max_length",
        "max_seq_length": "max_length",
        "save_every_n_steps": "save_steps",
        "lr_warmup_steps": "warmup_steps",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        name = self.output_name
        if not name.strip() or any(c in name for c in "/\\\0") or name in (".", ".."):
            raise SettingsError(f"output_name must be a plain folder name, got {name!r}")
        if not self.target_modules():
            raise SettingsError(f"targets must be all_linear, attention or module names, got {self.targets!r}")

    def target_modules(self) -> list[str] | str:
        """peft's `target_modules`: "all-linear", the attention projections, or the listed module names."""
        if self.targets == "all_linear":
            return "all-linear"
        if self.targets == "attention":
            return ["q_proj", "k_proj", "v_proj", "o_proj"]
        return [part.strip() for part in self.targets.split(",") if part.strip()]


@dataclass
class LlmPaths(Settings):
    """Where a language-model run reads its base model and data and writes its adapter (relative to the cwd)."""

    model_type: str = setting("causal_lm", "causal_lm selects a language-model LoRA job.", choices=("causal_lm",))
    base_model: str = setting(
        "",
        "Local Hugging Face model folder (config.json, *.safetensors, tokenizer files): LlamaForCausalLM, "
        "GlmForCausalLM or Glm4ForCausalLM.",
    )
    train_data: str = setting(
        "",
        "A .jsonl file: one record per line, either {instruction, input, output[, system]} or "
        '{"messages": [{"role": ..., "content": ...}, ...]}.',
    )
    output_dir: str = setting("", "Folder for the adapter folder, intermediate saves, the state and the log.")

    ALIASES: ClassVar[dict[str, str]] = {
        "pretrained_model_name_or_path": "base_model",
        "model_name_or_path": "base_model",
        "dataset": "train_data",
        "train_file": "train_data",
    }
    REQUIRED: ClassVar[tuple[str, ...]] = ("base_model", "train_data", "output_dir")
