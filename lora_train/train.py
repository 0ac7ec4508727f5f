"""The training loop: encode once, then noise -> predict -> loss -> backward -> step, saving as it goes.

The loop knows nothing about ComfyUI. A host (`lora_train.host.comfy_adapter.ComfyHost`, or a pure-torch
stand-in in the tests) encodes the dataset, lends the diffusion model for the session (and restores it after),
predicts the raw model output, and receives progress. See DESIGN.md.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lora_train.captions import kept_tags, training_captions
from lora_train.checkpointing import gradient_checkpointing
from lora_train.config import TrainConfig
from lora_train.data import LoraDataset
from lora_train.distributed import SINGLE_PROCESS, Distributed
from lora_train.losses import diffusion_batch, sample_noise, sample_sigmas, training_loss
from lora_train.optim import make_optimizer, make_scheduler
from lora_train.previews import sample_due, sample_path, write_previews

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message names the setting, file or step."""


@dataclass
class Example:
    """One cached training example: model-space latents and the host's encoded conditioning for its caption."""

    latents: torch.Tensor  # [C, h, w], already through the model's process_latent_in
    cond: Any
    empty_cond: Any = None  # the empty caption's conditioning, for caption dropout
    repeats: int = 1
    caption: str = ""  # as trained (trigger word included), for text-encoder training
    size: dict[str, int] | None = None  # the host's size conditioning (SDXL: original size, crop, target)


@dataclass
class Progress:
    """What the host is told every `log_every` steps."""

    step: int
    total: int
    loss: float
    smoothed_loss: float
    lr: float
    eta_s: float
    elapsed_s: float


class TrainingSession(Protocol):
    """The diffusion model lent for training; created by `TrainingHost.session()`."""

    diffusion_model: torch.nn.Module
    sampling: Any
    device: torch.device

    def kohya_prefix(self, module_path: str) -> str: ...
    def fingerprint(self) -> str: ...
    def file_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def collate(self, conds: list[Any]) -> Any: ...
    def predict(
        self, model_input: torch.Tensor, sigmas: torch.Tensor, timesteps: torch.Tensor, cond: Any, noisy: torch.Tensor
    ) -> torch.Tensor: ...


class TrainingHost(Protocol):
    """What the loop needs from the world around it."""

    base_model_name: str
    architecture: str

    def encode_examples(
        self, dataset: LoraDataset, cfg: TrainConfig, cache_dir: Path | None = None
    ) -> list[Example]: ...
    def session(self, cfg: TrainConfig) -> contextlib.AbstractContextManager[TrainingSession]: ...
    def check_cancel(self) -> None: ...
    def report(self, progress: Progress) -> None: ...


@dataclass
class TrainResult:
    """What a run produced."""

    lora_path: Path
    lora_tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    saved: list[Path] = field(default_factory=list)


# ---- targets -------------------------------------------------------------------------------------------------
# "attention" targets: every linear layer inside these blocks (kohya's defaults: UNet transformer blocks for
# SD1/2/XL, the joint blocks of SD3's MMDiT, Flux's double- and single-stream blocks).
ATTENTION_CONTAINERS = (
    "SpatialTransformer",
    "SpatialVideoTransformer",
    "Transformer2DModel",
    "JointBlock",
    "DoubleStreamBlock",
    "SingleStreamBlock",
)
CONV_CONTAINERS = ("ResBlock", "Downsample", "Upsample", "VideoResBlock")


def target_filter(cfg: TrainConfig, root: torch.nn.Module) -> Callable[[str, torch.nn.Module], bool]:
    """Which layers of `root` get adapters, as `include(path, module)` for `network.find_targets`."""
    attention = [n for n, m in root.named_modules() if type(m).__name__ in ATTENTION_CONTAINERS]
    conv = [n for n, m in root.named_modules() if type(m).__name__ in CONV_CONTAINERS]
    with_convs = cfg.targets == "attention_and_conv" or cfg.network == "locon"

    def inside(path: str, prefixes: list[str]) -> bool:
        return any(path.startswith(p + ".") for p in prefixes)

    def include(path: str, module: torch.nn.Module) -> bool:
        is_conv = isinstance(module, torch.nn.Conv2d)
        is_pointwise = isinstance(module, torch.nn.Linear) or (is_conv and tuple(module.kernel_size) == (1, 1))
        if is_pointwise and (cfg.targets == "all_linear" or inside(path, attention)):
            return True
        return with_convs and is_conv and inside(path, conv)

    return include


# ---- data order ----------------------------------------------------------------------------------------------
class BatchOrder:
    """Seeded epochs over examples (with repeats); a batch never mixes latent shapes (aspect buckets)."""

    def __init__(self, examples: list[Example], batch_size: int, generator: torch.Generator):
        self.shapes = [tuple(e.latents.shape) for e in examples]
        self.repeats = [max(1, e.repeats) for e in examples]
        self.batch_size = batch_size
        self.generator = generator
        self.epoch = 0
        self._queue: list[list[int]] = []

    def batches_per_epoch(self) -> int:
        counts: dict[tuple, int] = {}
        for shape, repeats in zip(self.shapes, self.repeats, strict=True):
            counts[shape] = counts.get(shape, 0) + repeats
        return sum(math.ceil(n / self.batch_size) for n in counts.values())

    def _new_epoch(self) -> None:
        by_shape: dict[tuple, list[int]] = {}
        for index, (shape, repeats) in enumerate(zip(self.shapes, self.repeats, strict=True)):
            by_shape.setdefault(shape, []).extend([index] * repeats)
        batches = []
        for indices in by_shape.values():
            perm = torch.randperm(len(indices), generator=self.generator).tolist()
            shuffled = [indices[i] for i in perm]
            batches += [shuffled[i : i + self.batch_size] for i in range(0, len(shuffled), self.batch_size)]
        order = torch.randperm(len(batches), generator=self.generator).tolist()
        self._queue = [batches[i] for i in order]
        self.epoch += 1

    def next(self) -> list[int]:
        if not self._queue:
            self._new_epoch()
        return self._queue.pop(0)

    def state_dict(self) -> dict:
        """Epoch and the batches still queued (the shared generator's state is saved by the caller)."""
        return {"epoch": self.epoch, "queue": [list(batch) for batch in self._queue]}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._queue = [list(batch) for batch in state["queue"]]


# ---- helpers -------------------------------------------------------------------------------------------------
AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def total_steps(cfg: TrainConfig, order: BatchOrder) -> int:
    """Optimizer steps for the run: `steps`, or `epochs` worth of batches divided by gradient accumulation."""
    if cfg.epochs > 0:
        return max(1, cfg.epochs * order.batches_per_epoch() // cfg.gradient_accumulation)
    return cfg.steps


def _adapter_spec(cfg: TrainConfig):
    from lora_train.network import AdapterSpec

    return AdapterSpec(rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, network=cfg.network)


def lora_state_dict(adapter_sets) -> dict[str, torch.Tensor]:
    """All adapter sets' kohya tensors, detached to fp32 CPU (what is saved and applied)."""
    return {
        key: value.detach().float().cpu().contiguous()
        for adapter_set in adapter_sets
        for key, value in adapter_set.state_dict_kohya().items()
    }


@contextlib.contextmanager
def explain_write_errors(path: Path, saved: list[Path], state_file: Path) -> Iterator[None]:
    """Turn a failed write of `path` (disk full, no permission) into a TrainingError that says what is kept."""
    try:
        yield
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        kept = f"the last good save {saved[-1].name} is intact" if saved else "nothing was saved before"
        resume = f"; {state_file.name} lets the next run resume" if state_file.is_file() else ""
        raise TrainingError(
            f"could not write {path.name} in {path.parent}: {reason}. Nothing half-written was left: {kept}{resume}. "
            "Free space there (or pick another output folder) and queue the run again."
        ) from exc


# ---- the loop ------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """The mutable pieces of one run (what a resume state captures)."""

    adapter_sets: list
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    generator: torch.Generator
    order: BatchOrder
    step: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def _build_run(
    cfg: TrainConfig, session: TrainingSession, generator: torch.Generator, order: BatchOrder, steps: int
) -> Run:
    """Adapters (seeded), optimizer, schedule and scaler for a fresh run."""
    from lora_train.network import AdapterSet, find_targets

    targets = find_targets(session.diffusion_model, target_filter(cfg, session.diffusion_model))
    if not targets:
        raise TrainingError(f"no layers matched targets={cfg.targets!r} in this model; try targets=all_linear")
    torch.manual_seed(cfg.seed)
    spec = _adapter_spec(cfg)
    adapter_sets = [AdapterSet.create(targets, spec, key_prefix_for=session.kohya_prefix, device=session.device)]
    lrs = [cfg.learning_rate]
    if cfg.train_text_encoder:
        te_targets = session.text_encoder_targets()
        if not te_targets:
            raise TrainingError("train_text_encoder is on, but this model's text encoder has no layers to adapt")
        adapter_sets.append(
            AdapterSet.create(te_targets, spec, key_prefix_for=session.kohya_te_prefix, device=session.device)
        )
        lrs.append(cfg.text_encoder_lr)
    groups = [
        {"params": [p for p in s.parameters() if p.requires_grad], "lr": lr}
        for s, lr in zip(adapter_sets, lrs, strict=True)
    ]
    optimizer = make_optimizer(cfg.optimizer, groups, cfg.weight_decay)
    scheduler = make_scheduler(cfg.lr_scheduler, optimizer, steps, cfg.warmup_steps)
    scaler = torch.amp.GradScaler(session.device.type, enabled=cfg.mixed_precision == "fp16")
    return Run(adapter_sets, optimizer, scheduler, scaler, generator, order)


def _stream_state(run: Run) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The random streams and data order right now (cheap: two small tensors and a list of index lists)."""
    return run.generator.get_state(), torch.get_rng_state(), run.order.state_dict()


def _snapshot(run: Run, cfg: TrainConfig, base_model: str, streams: tuple | None = None):
    from lora_train.resume import ResumeState

    generator_state, torch_rng_state, order = streams or _stream_state(run)
    return ResumeState(
        step=run.step,
        adapters=lora_state_dict(run.adapter_sets),
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(),
        generator_state=generator_state,
        torch_rng_state=torch_rng_state,
        order=order,
        config=cfg.to_dict(),
        base_model=base_model,
        history=[list(point) for point in run.history],
    )


def _restore(run: Run, state) -> None:
    for adapter_set in run.adapter_sets:
        mine = {k: v for k, v in state.adapters.items() if k.split(".", 1)[0] in set(adapter_set.prefixes.values())}
        adapter_set.load_state_dict_kohya(mine)
    run.optimizer.load_state_dict(state.optimizer)
    run.scheduler.load_state_dict(state.scheduler)
    run.generator.set_state(state.generator_state)
    torch.set_rng_state(state.torch_rng_state)
    run.order.load_state_dict(state.order)
    run.step = state.step
    run.history = [(int(s), float(v)) for s, v in state.history]


def _batch_cond(cfg: TrainConfig, session: TrainingSession, picked: list, texts: list[str] | None, latents):
    """The batch's conditioning: the cached embeddings, or `texts` encoded now (text-encoder training: with
    gradients through its adapters; shuffled captions: frozen, under no_grad)."""
    if texts is None:
        return session.collate([example.empty_cond if drop else example.cond for example, drop in picked])
    with contextlib.nullcontext() if cfg.train_text_encoder else torch.no_grad():
        return session.encode_captions(texts, latents, [example.size for example, _ in picked])


def _optimizer_step(
    cfg: TrainConfig, run: Run, session: TrainingSession, examples: list[Example], dist: Distributed
) -> torch.Tensor:
    """One optimizer step over `gradient_accumulation` batches; returns the (device) loss, not synced.

    Random draws (caption dropout, noise, timesteps) cover the global batch on every rank, in the same order as a
    single process; this rank then keeps its rows of it (see lora_train.distributed).
    """
    autocast_dtype = AUTOCAST[cfg.mixed_precision]
    device = session.device
    total = torch.zeros((), device=device)
    for _ in range(cfg.gradient_accumulation):
        indices = run.order.next()
        drop = (torch.rand(len(indices), generator=run.generator) < cfg.caption_dropout).tolist()
        texts = None
        if cfg.train_text_encoder or cfg.shuffle_captions:  # captions encoded per step, not from the cache
            keep = kept_tags(cfg.keep_tokens, cfg.trigger_word)
            captions = [examples[i].caption for i in indices]
            texts = training_captions(captions, drop, run.generator, keep=keep, shuffle=cfg.shuffle_captions)
        global_latents = torch.stack([examples[i].latents for i in indices])
        noise = sample_noise(global_latents, run.generator, cfg.noise_offset)
        sigmas = sample_sigmas(
            session.sampling,
            len(indices),
            run.generator,
            cfg.timestep_sampling,
            cfg.logit_mean,
            cfg.logit_std,
            device=device,
        )
        rows = dist.rows(len(indices))
        if not rows:  # a short last batch: this rank adds a zero gradient
            continue
        share = dist.loss_weight(len(rows), len(indices))
        latents, noise, sigmas = global_latents[rows].to(device), noise[rows].to(device), sigmas[rows]
        picked = [(examples[indices[r]], drop[r]) for r in rows]
        cond = _batch_cond(cfg, session, picked, None if texts is None else [texts[r] for r in rows], latents)
        batch = diffusion_batch(session.sampling, latents, noise, sigmas)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            pred = session.predict(batch.model_input, batch.sigmas, batch.timesteps, cond, noise)
        loss = training_loss(pred, batch, loss=cfg.loss, delta=cfg.huber_delta, min_snr_gamma=cfg.min_snr_gamma)
        loss = loss * share / cfg.gradient_accumulation
        run.scaler.scale(loss).backward()
        total += loss.detach()
    dist.average_gradients(run.params)
    if cfg.max_grad_norm > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    return total


def train_lora(
    cfg: TrainConfig,
    dataset: LoraDataset,
    host: TrainingHost,
    output_dir: str | Path,
    *,
    save: Callable[[Path, dict[str, torch.Tensor], dict[str, str]], None] | None = None,
    dist: Distributed = SINGLE_PROCESS,
) -> TrainResult:
    """Train a LoRA on `dataset` with the model `host` lends; write `<output_dir>/<output_name>.safetensors`.

    With `cfg.resume`, a `<output_name>.lora_state` left by an interrupted run is continued bit-identically.
    With `dist` from a torchrun launch, each process trains on its rows of every global batch of
    batch_size x world_size and only rank 0 writes files (see lora_train.distributed).
    """
    from lora_train.lora_io import build_metadata, save_lora
    from lora_train.resume import check_compatible, load_state, prune_intermediate, state_path
    from lora_train.resume import save_state as write_state

    save = dist.main_only(save or save_lora)
    save_state = dist.main_only(write_state)
    validate_inputs(cfg, dataset)
    output_dir = Path(output_dir)
    state_file = state_path(output_dir, cfg.output_name)
    resume_state = load_state(state_file) if cfg.resume and state_file.is_file() else None
    started = time.time()
    if cfg.cache_latents_to_disk:
        from lora_train.latent_cache import cache_folder

        examples = host.encode_examples(dataset, cfg, cache_dir=cache_folder(output_dir))
    else:
        examples = host.encode_examples(dataset, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = BatchOrder(examples, cfg.batch_size * dist.world_size, generator)
    steps = total_steps(cfg, order)
    saved: list[Path] = []

    def metadata(step: int) -> dict[str, str]:
        return build_metadata(
            cfg.to_dict(),
            base_model_name=host.base_model_name,
            architecture=host.architecture,
            network=cfg.network,
            rank=cfg.rank,
            alpha=cfg.alpha,
            steps=step,
            epochs=order.epoch,
            dataset=dataset,
            started_at=started,
            title=cfg.output_name,
            trigger_words=cfg.trigger_word,
        )

    with host.session(cfg) as session:
        base_model = session.fingerprint()
        run = _build_run(cfg, session, generator, order, steps)
        dist.broadcast_parameters(run.params)
        if resume_state is not None:
            check_compatible(resume_state, cfg, base_model, state_file)
            _restore(run, resume_state)
            log.info("resuming %s at step %d of %d", state_file.name, run.step, steps)
        log.info(
            "training %d adapters (%d params) for %d steps on %s",
            sum(len(a.module_paths) for a in run.adapter_sets),
            sum(p.numel() for p in run.params),
            steps,
            session.device,
        )
        running = torch.zeros((), device=session.device)
        smoothed = run.history[-1][1] if run.history else None
        window_start, window_steps = time.time(), 0
        for adapter_set in run.adapter_sets:
            adapter_set.attach()
        try:
            with gradient_checkpointing(session.diffusion_model, cfg.gradient_checkpointing):
                while run.step < steps:
                    lr = run.scheduler.get_last_lr()[0]
                    # Cancel (ComfyUI raises it inside any op, mid-step) or Ctrl-C: keep a resumable state of the
                    # last finished step. Weights and optimizer only change at the end of a step; the random
                    # streams and the data order are taken back to where that step began.
                    step_start = _stream_state(run)
                    try:
                        running += _optimizer_step(cfg, run, session, examples, dist)
                    except BaseException:
                        save_state(state_file, _snapshot(run, cfg, base_model, streams=step_start))
                        raise
                    run.step += 1
                    window_steps += 1
                    try:
                        host.check_cancel()
                    except BaseException:
                        save_state(state_file, _snapshot(run, cfg, base_model))
                        raise
                    done = run.step
                    # One host<->device sync every log_every steps, not every step (or every step on the CPU).
                    if done % cfg.log_every == 0 or done == steps or session.device.type == "cpu":
                        mean_loss = float(dist.mean(running)) / window_steps
                        if not math.isfinite(mean_loss):
                            raise TrainingError(
                                f"the loss became {mean_loss} by step {done} (lr {lr:.3g}, mixed_precision="
                                f"{cfg.mixed_precision}); lower learning_rate, or use bf16/no instead of fp16. "
                                "No LoRA was written for this step; the last good save is kept."
                            )
                        if done % cfg.log_every == 0 or done == steps:
                            smoothed = mean_loss if smoothed is None else 0.9 * smoothed + 0.1 * mean_loss
                            run.history.append((done, mean_loss))
                            rate = (time.time() - window_start) / window_steps
                            host.report(
                                Progress(
                                    done, steps, mean_loss, smoothed, lr, rate * (steps - done), time.time() - started
                                )
                            )
                            running.zero_()
                            window_start, window_steps = time.time(), 0
                    if cfg.save_steps and done % cfg.save_steps == 0 and done < steps:
                        path = output_dir / f"{cfg.output_name}_s{done:06d}.safetensors"
                        with explain_write_errors(path, saved, state_file):
                            save(path, session.file_tensors(lora_state_dict(run.adapter_sets)), metadata(done))
                            save_state(state_file, _snapshot(run, cfg, base_model))
                        saved.append(path)
                        if dist.is_main:
                            prune_intermediate(output_dir, cfg.output_name, cfg.keep_last)
                    if dist.is_main and sample_due(cfg.sample_every, done, steps):
                        preview = sample_path(output_dir, cfg.output_name, done, 0)
                        with explain_write_errors(preview, saved, state_file):
                            write_previews(session, host, run.adapter_sets, cfg, output_dir, done, steps)
            tensors = session.file_tensors(lora_state_dict(run.adapter_sets))
        finally:
            for adapter_set in run.adapter_sets:
                adapter_set.detach()

    final_metadata = metadata(steps)
    lora_path = output_dir / f"{cfg.output_name}.safetensors"
    with explain_write_errors(lora_path, saved, state_file):
        save(lora_path, tensors, final_metadata)
    saved.append(lora_path)
    if dist.is_main:
        state_file.unlink(missing_ok=True)  # finished: the next run with this name starts fresh
    log.info("saved %s after %d steps in %.1fs", lora_path, steps, time.time() - started)
    return TrainResult(lora_path, tensors, final_metadata, run.history, steps, saved)
