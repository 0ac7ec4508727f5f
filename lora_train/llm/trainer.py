"""The language-model LoRA run: check everything (model folder, data, template, lengths, resume state) before any
weight is loaded or any file written; then rows -> forward -> response-token loss -> backward -> step, saving the
adapter folder and the resumable state every `save_steps`, and the final adapter (and merged model) at the end."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_train.llm.adapters import (
    adapter_metadata,
    attach_adapters,
    save_adapter_folder,
    save_merged,
    trainable_parameters,
)
from lora_train.llm.batches import collate, summed_token_loss, trained_tokens
from lora_train.llm.config import LlmPaths, LlmTrainConfig
from lora_train.llm.data import ConversationData, load_conversations
from lora_train.llm.model import BaseModelInfo, check_quantization, inspect_base_model, load_base_model, load_tokenizer
from lora_train.llm.render import EncodingReport, TokenRow, encode_all, pack_rows, resolve_chat_template
from lora_train.llm.state import LlmRun, RowOrder, check_compatible
from lora_train.training import (
    SINGLE_PROCESS,
    Distributed,
    Progress,
    ResumeState,
    TrainingError,
    load_state,
    make_optimizer,
    make_scheduler,
    save_state,
    state_path,
)

log = logging.getLogger(__name__)
ReportFn = Callable[[Progress], None]


@dataclass
class LlmTrainResult:
    """What a run produced."""

    adapter_dir: Path
    merged_dir: Path | None
    steps: int
    metadata: dict[str, str]
    report: EncodingReport
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list)
    model: Any = None  # the trained peft model (adapters attached), for callers that use it at once


@dataclass
class Prepared:
    """Everything checked before training: nothing loaded onto a device yet, nothing written."""

    info: BaseModelInfo
    tokenizer: Any
    data: ConversationData
    rows: list[TokenRow]
    report: EncodingReport
    resume_state: ResumeState | None
    state_file: Path


def prepare(cfg: LlmTrainConfig, paths: LlmPaths, device_type: str = "cpu") -> Prepared:
    """Check the model folder, quantization, data, chat template and lengths, and read a resume state if any."""
    info = inspect_base_model(paths.base_model)
    check_quantization(cfg, device_type)
    data = load_conversations(paths.train_data, cfg.system_prompt)
    tokenizer = load_tokenizer(info)
    template = resolve_chat_template(tokenizer, cfg.chat_template, info.path)
    rows, report = encode_all(tokenizer, template, data.conversations, data.path, cfg.max_length, cfg.overlong)
    if cfg.packing:
        rows = pack_rows(rows, cfg.max_length)
        report.rows = len(rows)
    log.info("%s: %s", data.path.name, report.summary())
    state_file = state_path(Path(paths.output_dir).expanduser(), cfg.output_name)
    resume_state = load_state(state_file) if cfg.resume and state_file.is_file() else None
    return Prepared(info, tokenizer, data, rows, report, resume_state, state_file)


def total_steps(cfg: LlmTrainConfig, order: RowOrder) -> int:
    """`steps`, or `epochs` worth of global batches divided by gradient accumulation."""
    if cfg.epochs > 0:
        return max(1, cfg.epochs * order.batches_per_epoch() // cfg.gradient_accumulation)
    return cfg.steps


def train_causal_lm(
    cfg: LlmTrainConfig,
    paths: LlmPaths,
    *,
    dist: Distributed = SINGLE_PROCESS,
    device_type: str = "cpu",
    report: ReportFn | None = None,
    prepared: Prepared | None = None,
) -> LlmTrainResult:
    """Train a LoRA/DoRA adapter on `paths.base_model` with `paths.train_data`; write `<output_dir>/<output_name>/`.

    With torchrun, each process trains its rows of every global batch and only rank 0 writes files. `prepared`:
    the result of `prepare` when the caller already checked the inputs.
    """
    prepared = prepared or prepare(cfg, paths, device_type)
    output_dir = Path(paths.output_dir).expanduser()
    device = torch.device("cuda", dist.local_rank) if device_type == "cuda" else torch.device("cpu")
    model = attach_adapters(load_base_model(prepared.info, cfg, device), cfg, prepared.info)
    if cfg.gradient_checkpointing:
        _enable_checkpointing(model)
    model.train()
    run = _build_run(cfg, model, prepared, dist)
    if prepared.resume_state is not None:
        check_compatible(prepared.resume_state, run, cfg, prepared.state_file)
        run.restore(prepared.resume_state)
        log.info("resuming %s at step %d", prepared.state_file.name, run.step)
    steps = total_steps(cfg, run.order)
    writer = _Writer(cfg, output_dir, prepared, dist)
    log.info("training %d adapter tensors (%d params) for %d steps on %s", len(run.params),
             sum(p.numel() for p in run.params.values()), steps, device)  # fmt: skip
    _train_steps(cfg, run, model, prepared, steps, writer, dist, device, report)
    adapter_dir, metadata = writer.save_final(model, run)
    merged = None
    if cfg.merge and dist.is_main:
        merged = save_merged(
            prepared.info, cfg, adapter_dir, prepared.tokenizer, output_dir / f"{cfg.output_name}_merged"
        )
    return LlmTrainResult(adapter_dir, merged, run.step, metadata, prepared.report, run.history, writer.saved, model)


def _enable_checkpointing(model: Any) -> None:
    """Recompute each decoder layer in backward (non-reentrant: the frozen base's inputs need no grad)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _build_run(cfg: LlmTrainConfig, model: Any, prepared: Prepared, dist: Distributed) -> LlmRun:
    params = trainable_parameters(model)
    dist.broadcast_parameters(params.values())
    generator = torch.Generator().manual_seed(cfg.seed)
    order = RowOrder(len(prepared.rows), cfg.batch_size * dist.world_size, generator)
    optimizer = make_optimizer(cfg.optimizer, [{"params": list(params.values()), "lr": cfg.learning_rate}],
                               cfg.weight_decay)  # fmt: skip
    scheduler = make_scheduler(cfg.lr_scheduler, optimizer, total_steps(cfg, order), cfg.warmup_steps)
    device_type = next(iter(params.values())).device.type
    scaler = torch.amp.GradScaler(device_type, enabled=cfg.mixed_precision == "fp16")
    return LlmRun(params, optimizer, scheduler, scaler, generator, order, prepared.info.fingerprint,
                  prepared.data.sha256)  # fmt: skip


def optimizer_step(
    cfg: LlmTrainConfig, run: LlmRun, model: Any, rows: list[TokenRow], pad_id: int, dist: Distributed, device
) -> torch.Tensor:
    """One optimizer step over gradient_accumulation global batches; returns this rank's share of the mean loss
    per trained token (`dist.mean` of it is the global batch's)."""
    total = torch.zeros((), device=device)
    for _ in range(cfg.gradient_accumulation):
        global_rows = [rows[i] for i in run.order.next()]
        mine = [global_rows[i] for i in dist.rows(len(global_rows))]
        if not mine:  # a short last batch may leave a rank without rows: it contributes zero gradients
            continue
        batch = collate(mine, pad_id, cfg.packing, device)
        scale = dist.world_size / trained_tokens(global_rows) / cfg.gradient_accumulation
        loss = summed_token_loss(model, batch) * scale
        run.scaler.scale(loss).backward()
        total += loss.detach()
    params = list(run.params.values())
    dist.average_gradients(params)
    run.scaler.unscale_(run.optimizer)
    if cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return total


def _train_steps(cfg, run, model, prepared, steps, writer, dist, device, report) -> None:
    """The step loop: step, check the loss, report, save when due; any interrupt leaves a resumable state."""
    pad_id = prepared.tokenizer.pad_token_id or 0
    running, window, started, first_step = torch.zeros((), device=device), 0, time.time(), run.step
    smoothed = run.history[-1][1] if run.history else None
    while run.step < steps:
        lr = run.scheduler.get_last_lr()[0]
        with writer.state_kept_on_interrupt(run, run.stream_state()):
            running += optimizer_step(cfg, run, model, prepared.rows, pad_id, dist, device)
        run.step, window = run.step + 1, window + 1
        due = run.step % cfg.log_every == 0 or run.step == steps
        if due or device.type == "cpu":  # a sync: on the CPU it is free, so a non-finite loss stops at once
            loss = float(dist.mean(running)) / window
            if not math.isfinite(loss):
                raise TrainingError(f"the loss became {loss} at step {run.step} (lr {lr:.3g}); lower learning_rate "
                                    "or use bf16 instead of fp16. The last good save is kept.")  # fmt: skip
            if due:
                smoothed = loss if smoothed is None else 0.9 * smoothed + 0.1 * loss
                run.history.append((run.step, loss))
                elapsed = time.time() - started
                if report is not None and dist.is_main:
                    eta = elapsed / max(1, run.step - first_step) * (steps - run.step)
                    report(Progress(run.step, steps, loss, smoothed, lr, eta, elapsed))
                running.zero_()
                window = 0
        if cfg.save_steps and run.step % cfg.save_steps == 0 and run.step < steps:
            with writer.state_kept_on_interrupt(run, None):
                writer.save_intermediate(model, run)


class _Writer:
    """Rank 0's files: intermediate adapter folders (newest keep_last kept), the state, the final adapter."""

    def __init__(self, cfg: LlmTrainConfig, output_dir: Path, prepared: Prepared, dist: Distributed):
        self.cfg, self.output_dir, self.prepared, self.dist = cfg, output_dir, prepared, dist
        self.saved: list[Path] = []
        self.started = time.time()

    def metadata(self, steps: int) -> dict[str, str]:
        report = self.prepared.report
        summary = {"file": self.prepared.data.path.name, "examples": report.examples, "rows": report.rows,
                   "tokens": report.tokens, "trained_tokens": report.trained_tokens,
                   "truncated": len(report.truncated), "dropped": len(report.dropped)}  # fmt: skip
        return adapter_metadata(self.cfg, self.prepared.info, self.prepared.data.sha256, summary, steps, self.started)

    def state_kept_on_interrupt(self, run: LlmRun, streams: tuple | None):
        return _KeepState(self, run, streams)

    def save_intermediate(self, model: Any, run: LlmRun) -> None:
        if not self.dist.is_main:
            return
        folder = self.output_dir / f"{self.cfg.output_name}_s{run.step:06d}"
        save_adapter_folder(model, folder, self.metadata(run.step))
        save_state(self.prepared.state_file, run.snapshot(self.cfg))
        self.saved.append(folder)
        if self.cfg.keep_last:
            saves = sorted(self.output_dir.glob(f"{self.cfg.output_name}_s[0-9][0-9][0-9][0-9][0-9][0-9]"))
            for old in saves[: -self.cfg.keep_last]:
                shutil.rmtree(old, ignore_errors=True)

    def save_final(self, model: Any, run: LlmRun) -> tuple[Path, dict[str, str]]:
        folder = self.output_dir / self.cfg.output_name
        metadata = self.metadata(run.step)
        if self.dist.is_main:
            save_adapter_folder(model, folder, metadata)
            self.saved.append(folder)
            self.prepared.state_file.unlink(missing_ok=True)
            log.info("saved %s after %d steps in %.1fs", folder, run.step, time.time() - self.started)
        return folder, metadata


class _KeepState:
    """On Ctrl-C or any error inside, rank 0 writes the resumable state (random streams rewound to `streams`)."""

    def __init__(self, writer: _Writer, run: LlmRun, streams: tuple | None):
        self.writer, self.run, self.streams = writer, run, streams

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is not None and self.writer.dist.is_main:
            save_state(self.writer.prepared.state_file, self.run.snapshot(self.writer.cfg, self.streams))
            log.info("kept a resumable state in %s at step %d", self.writer.prepared.state_file, self.run.step)
        return False
