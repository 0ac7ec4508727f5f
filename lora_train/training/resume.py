"""Resumable training state: everything needed to continue a run bit-identically (on CPU) after a crash or Cancel.

One file next to the LoRA, `<output_name>.lora_state` (safetensors format; the extension keeps it out of
ComfyUI's LoRA lists): adapter weights, optimizer state, LR-scheduler state, RNG states, the data order still
queued, the step, and fingerprints of the settings and of the base model. Written atomically; no pickle.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_train.fsutil import atomic_write
from lora_train.training.config import TrainConfig

log = logging.getLogger(__name__)

STATE_SUFFIX = ".lora_state"
FORMAT = "lora_train.resume/1"
# Settings that shape the adapter or the data stream: a resume with any of them changed is refused.
STRUCTURAL = (
    "network",
    "rank",
    "alpha",
    "targets",
    "train_text_encoder",
    "batch_size",
    "gradient_accumulation",
    "seed",
    "resolution",
    "loraplus_lr_ratio",
    "validation_split",
    "buckets",
    "bucket_min",
    "bucket_max",
    "bucket_step",
    "bucket_no_upscale",
)


class ResumeError(RuntimeError):
    """The resume state cannot be used; the message says why and what to do."""


def state_path(output_dir: str | Path, output_name: str) -> Path:
    return Path(output_dir) / f"{output_name}{STATE_SUFFIX}"


@dataclass
class ResumeState:
    """What a resumed run restores."""

    step: int
    adapters: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    generator_state: torch.Tensor
    torch_rng_state: torch.Tensor
    order: dict[str, Any]
    config: dict[str, Any]
    base_model: str
    history: list[list[float]]
    validation_history: list[list[float]] = field(default_factory=list)
    ema: dict[str, torch.Tensor] = field(default_factory=dict)  # index -> averaged adapter parameter (ema_decay)

    @classmethod
    def capture(cls, *, optimizer: Any, scheduler: Any, streams: Streams, **fields: Any) -> ResumeState:
        """The state of a run now: its optimizer and schedule, `streams` from `capture_streams`, the other fields."""
        generator_state, torch_rng_state, order = streams
        return cls(
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            generator_state=generator_state,
            torch_rng_state=torch_rng_state,
            order=order,
            **fields,
        )


Streams = tuple[torch.Tensor, torch.Tensor, dict[str, Any]]


def capture_streams(generator: torch.Generator, order: Any) -> Streams:
    """The random streams and data order right now: cheap (two small tensors and the order's position), so a step
    can take them first and rewind to them if it is interrupted."""
    return generator.get_state(), torch.get_rng_state(), order.state_dict()


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        plain["state"][str(index)] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous()
            else:
                plain["state"][str(index)][key] = value
    return tensors, plain


def _join_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_state(path: Path, state: ResumeState) -> None:
    """Write the state atomically (the previous good state stays until the new one is complete)."""
    from safetensors.torch import save

    optimizer_tensors, optimizer_plain = _split_optimizer(state.optimizer)
    tensors = {f"adapter/{k}": v.detach().cpu().contiguous() for k, v in state.adapters.items()}
    tensors.update(optimizer_tensors)
    tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in state.ema.items()})
    tensors["rng/generator"] = state.generator_state.clone()
    tensors["rng/torch"] = state.torch_rng_state.clone()
    metadata = {
        "format": FORMAT,
        "step": str(state.step),
        "optimizer": json.dumps(optimizer_plain),
        "scheduler": json.dumps(state.scheduler),
        "order": json.dumps(state.order),
        "config": json.dumps(state.config, sort_keys=True),
        "base_model": state.base_model,
        "history": json.dumps(state.history),
        "validation_history": json.dumps(state.validation_history),
    }
    with atomic_write(path) as handle:
        handle.write(save(tensors, metadata=metadata))


def load_state(path: Path) -> ResumeState:
    """Read a state file; a damaged or foreign file raises ResumeError naming it."""
    from safetensors import safe_open

    try:  # ordinary tensors even when called from a node (inference mode): the optimizer updates them in place
        with torch.inference_mode(False), safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"unknown format {metadata.get('format')!r}")
        return ResumeState(
            step=int(metadata["step"]),
            adapters={k[len("adapter/") :]: v for k, v in tensors.items() if k.startswith("adapter/")},
            optimizer=_join_optimizer(tensors, json.loads(metadata["optimizer"])),
            scheduler=json.loads(metadata["scheduler"]),
            generator_state=tensors["rng/generator"],
            torch_rng_state=tensors["rng/torch"],
            order=json.loads(metadata["order"]),
            config=json.loads(metadata["config"]),
            base_model=metadata["base_model"],
            history=json.loads(metadata["history"]),
            validation_history=json.loads(metadata.get("validation_history", "[]")),
            ema={k[len("ema/") :]: v for k, v in tensors.items() if k.startswith("ema/")},
        )
    except Exception as exc:  # safetensors, JSON and key errors all mean the same thing here
        raise ResumeError(
            f"the resume state {path} is damaged or not a lora_train state ({exc}); delete it to start over, "
            "or set resume to false"
        ) from exc


def check_compatible(state: ResumeState, cfg: TrainConfig, base_model: str, path: Path) -> None:
    """Refuse a state written for other adapter-shaping settings or another base model, naming the difference."""
    if state.base_model != base_model:
        raise ResumeError(
            f"the resume state {path.name} was written for another base model ({state.base_model}, now "
            f"{base_model}); use a different output_name, delete the state, or set resume to false"
        )
    current = cfg.to_dict()
    defaults = TrainConfig().to_dict()
    for key in STRUCTURAL:
        # A setting newer than the state was at its default when the state was written.
        if state.config.get(key, defaults[key]) != current.get(key):
            raise ResumeError(
                f"cannot resume {path.name}: {key} was {state.config.get(key)!r} and is now {current.get(key)!r}; "
                f"set it back, use a different output_name, or set resume to false to start over"
            )


def prune_intermediate(output_dir: Path, output_name: str, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` intermediate saves (`<name>_sNNNNNN.safetensors`); return deleted."""
    if keep_last <= 0:
        return []
    saves = sorted(output_dir.glob(f"{output_name}_s[0-9][0-9][0-9][0-9][0-9][0-9].safetensors"))
    doomed = saves[:-keep_last]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed
