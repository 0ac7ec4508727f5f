"""The training loop: encode once, then noise -> predict -> loss -> backward -> step, saving as it goes.

The loop knows nothing about ComfyUI. A host (`lora_train.host.comfy_adapter.ComfyHost`, or a pure-torch
stand-in in the tests) encodes the dataset, lends the diffusion model for the session (and restores it after),
predicts the raw model output, and receives progress. See DESIGN.md. The phases live beside it: `step` (one
optimizer step), `run` (adapters, optimizer and the resumable state), `outputs` (saves, previews, the state
kept on Cancel), `batches` (the data order).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_train.dataset import LoraDataset
from lora_train.training.batches import BatchOrder, total_steps
from lora_train.training.block_swap import swapped_blocks
from lora_train.training.checkpointing import gradient_checkpointing
from lora_train.training.compiling import compiled_blocks
from lora_train.training.config import TrainConfig
from lora_train.training.conv_gemm import small_convs_as_gemm
from lora_train.training.data import prepare_data
from lora_train.training.distributed import SINGLE_PROCESS, Distributed
from lora_train.training.host_api import Example, Progress, TrainingError, TrainingHost, TrainingSession
from lora_train.training.outputs import RunFiles, SaveFn
from lora_train.training.previews import sample_due
from lora_train.training.run import Run, build_run
from lora_train.training.step import optimizer_step
from lora_train.training.validation import Validator, best_validation

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced."""

    lora_path: Path
    lora_tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    saved: list[Path] = field(default_factory=list)
    validation_history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def best_validation(self) -> tuple[int, float] | None:
        """(step, loss) of the lowest validation loss, or None when nothing was validated."""
        return best_validation(self.validation_history) if self.validation_history else None


def validate_inputs(cfg: TrainConfig, dataset: LoraDataset) -> None:
    """Refuse what cannot train before any work starts."""
    if len(dataset.items) == 0:
        where = f" in {dataset.root}" if dataset.root else ""
        raise TrainingError(f"the dataset is empty: no images found{where}; add images or check the folder path")
    empty = [str(item.path or f"image {i}") for i, item in enumerate(dataset.items) if not item.caption.strip()]
    if empty and not cfg.trigger_word.strip():
        listed = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise TrainingError(
            f"{len(empty)} image(s) have no caption ({listed}); add .txt captions or a metadata.csv, run Auto-label, "
            "or set trigger_word so every image has at least that"
        )


def train_lora(
    cfg: TrainConfig,
    dataset: LoraDataset,
    host: TrainingHost,
    output_dir: str | Path,
    *,
    save: SaveFn | None = None,
    dist: Distributed = SINGLE_PROCESS,
    reg_dataset: LoraDataset | None = None,
    validation_dataset: LoraDataset | None = None,
) -> TrainResult:
    """Train a LoRA on `dataset` with the model `host` lends; write `<output_dir>/<output_name>.safetensors`.

    With `cfg.resume`, a `<output_name>.lora_state` left by an interrupted run is continued bit-identically.
    With `dist` from a torchrun launch, each process trains on its rows of every global batch of
    batch_size x world_size and only rank 0 writes files (see lora_train.training.distributed).
    `reg_dataset` holds regularisation (class) images, `validation_dataset` images to validate on (besides any
    `validation_split`).
    """
    validate_inputs(cfg, dataset)
    files = RunFiles(cfg, Path(output_dir), host, dataset, dist, save)
    resume_state = files.resume_state()
    data = prepare_data(cfg, dataset, host, files.output_dir, reg_dataset=reg_dataset,
                        validation_dataset=validation_dataset)  # fmt: skip
    files.data = data
    generator = torch.Generator().manual_seed(cfg.seed)
    order = BatchOrder(data.examples, cfg.batch_size * dist.world_size, generator)
    steps = total_steps(cfg, order)
    validator = Validator.create(cfg, data.validation) if data.validation else None
    with host.session(cfg) as session, files.board:
        run = build_run(cfg, session, generator, order, steps)
        dist.broadcast_parameters(run.params)
        if resume_state is not None:
            files.resume(run, resume_state, steps)
        _log_start(run, steps, session)
        model, checkpointing = session.diffusion_model, cfg.gradient_checkpointing or cfg.blocks_to_swap > 0
        # Swapped blocks are wrapped first, so checkpointing's recompute copies their weights in again.
        with (
            _attached(run),
            swapped_blocks(model, cfg.blocks_to_swap, session.device),
            gradient_checkpointing(model, checkpointing),
            small_convs_as_gemm(model, session.device.type == "cpu" and not cfg.compile),
            compiled_blocks(model, cfg.compile, session.device),
        ):
            _train_steps(cfg, run, session, host, data.examples, steps, files, dist, validator)
        tensors = session.file_tensors(run.lora_tensors())
    lora_path, metadata = files.save_final(tensors, run)
    return TrainResult(lora_path, tensors, metadata, run.history, steps, files.saved, run.validation_history)


def _log_start(run: Run, steps: int, session: TrainingSession) -> None:
    adapters = sum(len(a.module_paths) for a in run.adapter_sets)
    params = sum(p.numel() for p in run.params)
    log.info("training %d adapters (%d params) for %d steps on %s", adapters, params, steps, session.device)


@contextlib.contextmanager
def _attached(run: Run) -> Iterator[None]:
    """The adapters' hooks on the lent model for the duration; always taken off again."""
    for adapter_set in run.adapter_sets:
        adapter_set.attach()
    try:
        yield
    finally:
        for adapter_set in run.adapter_sets:
            adapter_set.detach()


def _train_steps(
    cfg: TrainConfig,
    run: Run,
    session: TrainingSession,
    host: TrainingHost,
    examples: list[Example],
    steps: int,
    files: RunFiles,
    dist: Distributed,
    validator: Validator | None = None,
) -> None:
    """The step loop: one optimizer step, then Cancel, validation, report, save and previews when each is due."""
    meter = LossMeter(cfg, steps, files.started, session.device, dist, run.history)
    report = files.reporter(host)
    while run.step < steps:
        lr = run.scheduler.get_last_lr()[0]
        # Cancel (ComfyUI raises it inside any op, mid-step) or Ctrl-C: keep a resumable state of the last finished
        # step. Weights and optimizer only change at the end of a step; the random streams and the data order are
        # taken back to where that step began.
        with files.state_kept_on_interrupt(run, streams=run.stream_state()):
            meter.add(optimizer_step(cfg, run, session, examples, dist))
        run.step += 1
        with files.state_kept_on_interrupt(run):
            host.check_cancel()
        validation = validator.measure_if_due(run, session, steps) if validator else None
        meter.report_if_due(run, report, lr, validation)
        if cfg.save_steps and run.step % cfg.save_steps == 0 and run.step < steps:
            files.save_intermediate(run, session)
        if dist.is_main and sample_due(cfg.sample_every, run.step, steps):
            files.write_previews(run, session, steps)


class LossMeter:
    """The loss between reports. One host<->device sync every `log_every` steps, not every step (on the CPU,
    where a sync costs nothing, every step, so a non-finite loss stops the run at once)."""

    def __init__(self, cfg: TrainConfig, steps: int, started: float, device: torch.device, dist: Distributed, history):
        self.cfg, self.steps, self.started, self.device, self.dist = cfg, steps, started, device, dist
        self.running = torch.zeros((), device=device)
        self.smoothed = history[-1][1] if history else None
        self.window_start, self.window_steps = time.time(), 0

    def add(self, step_loss: torch.Tensor) -> None:
        self.running += step_loss
        self.window_steps += 1

    def report_if_due(self, run: Run, report: Callable[[Progress], None], lr: float, validation: float | None) -> None:
        """Check the loss is finite and, every `log_every` steps, at the end and with a validation loss, append it
        and report it."""
        done, log_every = run.step, self.cfg.log_every
        report_due = done % log_every == 0 or done == self.steps or validation is not None
        if not (report_due or self.device.type == "cpu"):
            return
        mean_loss = float(self.dist.mean(self.running)) / self.window_steps
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"the loss became {mean_loss} by step {done} (lr {lr:.3g}, mixed_precision="
                f"{self.cfg.mixed_precision}); lower learning_rate, or use bf16/no instead of fp16. "
                "No LoRA was written for this step; the last good save is kept."
            )
        if not report_due:
            return
        self.smoothed = mean_loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * mean_loss
        run.history.append((done, mean_loss))
        rate = (time.time() - self.window_start) / self.window_steps
        now = time.time()
        eta = rate * (self.steps - done)
        report(Progress(done, self.steps, mean_loss, self.smoothed, lr, eta, now - self.started, validation))
        self.running.zero_()
        self.window_start, self.window_steps = time.time(), 0
