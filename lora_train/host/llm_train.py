"""Train a LoRA on the LLM behind a ComfyUI CLIP (the Train LLM LoRA node): adapters as forward hooks on ComfyUI's own
decoder layers (the CLIP's modules and keys stay untouched), AdamW on the response tokens' loss, the file written
with the key names ComfyUI's LoraLoader maps to this CLIP, and the CLIP returned with it applied through
ComfyUI's own LoRA path (what LoraLoader at strength_clip 1 does), so Generate Text uses it at once."""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_train.host.llm_clip import (
    ClipLlm,
    check_text_generation,
    collate,
    describe,
    encode_pairs,
    find_llm,
    lora_key_names,
    response_loss,
    target_layers,
    trainable,
)
from lora_train.llm import ClipLoraConfig, PairData
from lora_train.training import AdapterSet, AdapterSpec, make_optimizer, make_scheduler, save_lora

log = logging.getLogger(__name__)

PROGRESS_EVENT = "lora_train.train_progress"


@dataclass
class ClipLoraResult:
    """The saved file, its tensors (as written) and the loss per step."""

    lora_path: Path
    tensors: dict[str, torch.Tensor]
    loss_history: list[tuple[int, float]] = field(default_factory=list)


def batches(count: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Example indices per step: seeded shuffles of every example, consumed in order (epochs run into each other)."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    out = []
    for _ in range(steps):
        batch = []
        while len(batch) < min(batch_size, count):
            if not order:
                order = torch.randperm(count, generator=generator).tolist()
            batch.append(order.pop(0))
        out.append(batch)
    return out


def progress(history: list[tuple[int, float]], total: int, lr: float, started: float) -> dict:
    """The fields of the `lora_train.train_progress` event (what the Train LoRA node's live view draws)."""
    step, loss = history[-1]
    recent = [value for _, value in history[-20:]]
    elapsed = time.time() - started
    return {
        "step": step,
        "total": total,
        "loss": loss,
        "smoothed_loss": sum(recent) / len(recent),  # mean of the last 20 steps
        "lr": lr,
        "elapsed_s": elapsed,
        "eta_s": elapsed / step * (total - step),
    }


def make_adapters(llm: ClipLlm, cfg: ClipLoraConfig, device: torch.device) -> AdapterSet:
    """One adapter per target layer, initialised from `cfg.seed` (torch's global stream is left as it was)."""
    targets = target_layers(llm, cfg.targets)
    names = lora_key_names(llm, list(targets))
    spec = AdapterSpec(rank=cfg.rank, alpha=cfg.alpha, network=cfg.network)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return AdapterSet.create(targets, spec, names.__getitem__, device=device)


def clip_lora_metadata(llm: ClipLlm, cfg: ClipLoraConfig, data: PairData, steps: int, started: float) -> dict:
    """Header metadata: kohya-style `ss_*`, ModelSpec and our settings (all strings), as the image LoRAs carry."""
    finished = datetime.datetime.now(datetime.UTC)
    model_name = type(llm.transformer).__name__
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": repr(float(cfg.alpha)),
        "ss_network_args": json.dumps({"algo": cfg.network}),
        "ss_output_name": cfg.output_name,
        "ss_sd_model_name": model_name,
        "ss_base_model_version": f"comfyui_te:{model_name}",
        "ss_steps": str(steps),
        "ss_learning_rate": str(cfg.learning_rate),
        "ss_seed": str(cfg.seed),
        "ss_num_train_images": str(len(data.pairs)),
        "ss_training_started_at": repr(float(started)),
        "ss_training_finished_at": repr(finished.timestamp()),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{model_name}/{cfg.network}",
        "modelspec.implementation": "https://github.com/comfyanonymous/ComfyUI",
        "modelspec.title": cfg.output_name,
        "modelspec.date": finished.replace(microsecond=0).isoformat(),
        "lora_train.kind": "comfyui_text_encoder_lora",
        "lora_train.base_model": describe(llm.clip.cond_stage_model),
        "lora_train.data_sha256": data.sha256,
        "lora_train.data": json.dumps({"source": data.source, "examples": len(data.pairs)}),
        "lora_train.config": json.dumps(cfg.to_dict(), sort_keys=True),
    }


def train_clip_lora(
    clip,
    data: PairData,
    cfg: ClipLoraConfig,
    loras_dir: Path,
    *,
    report: Callable[[dict], None] | None = None,
) -> ClipLoraResult:
    """Train, save `<loras_dir>/<output_name>.safetensors` and return it. `report` gets the Train LoRA node's
    progress fields (step, total, loss, smoothed_loss, lr, elapsed_s, eta_s) per step; Cancel (or an exception from
    `report`) stops the run and nothing is written."""
    import comfy.model_management as mm

    check_text_generation()
    llm = find_llm(clip)
    examples = encode_pairs(llm, data, cfg)
    started = time.time()
    clip.load_model()  # where ComfyUI runs this CLIP, with any LoRA already applied to it patched in
    device = clip.patcher.load_device
    dtype = llm.execution_dtype(device)
    history: list[tuple[int, float]] = []
    with trainable(llm):
        adapters = make_adapters(llm, cfg, device)
        params = [p for p in adapters.parameters() if p.requires_grad]
        optimizer = make_optimizer("adamw", [{"params": params, "lr": cfg.learning_rate}])
        scheduler = make_scheduler(cfg.lr_scheduler, optimizer, cfg.steps, 0)
        adapters.train()
        with adapters.attached():
            for step, batch in enumerate(batches(len(examples), cfg.batch_size, cfg.steps, cfg.seed), start=1):
                ids, labels = collate([examples[i] for i in batch], llm.pad_token())
                loss = response_loss(llm, ids, labels, device, dtype)
                loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                history.append((step, float(loss.detach())))
                mm.throw_exception_if_processing_interrupted()
                if report is not None:
                    report(progress(history, cfg.steps, scheduler.get_last_lr()[0], started))
    tensors = {k: v.detach().float().cpu() for k, v in adapters.state_dict_kohya().items()}
    path = Path(loras_dir) / f"{cfg.output_name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_lora(path, tensors, clip_lora_metadata(llm, cfg, data, cfg.steps, started))
    log.info("LLM LoRA: %d layers, loss %.4f -> %.4f, %s", len(adapters.adapters), history[0][1], history[-1][1], path)
    return ClipLoraResult(path, tensors, history)


def apply_clip_lora(clip, tensors: dict[str, torch.Tensor], strength: float = 1.0):
    """The CLIP with the LoRA applied through ComfyUI's loader path (LoraLoader's with strength_clip = strength)."""
    import comfy.sd

    return comfy.sd.load_lora_for_models(None, clip, tensors, 0.0, strength)[1]
