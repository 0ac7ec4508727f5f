"""The mutable pieces of one run (adapters, optimizer, schedule, scaler, random streams, data order, step) and the
resumable state they make: built fresh, snapshotted on save or interrupt, restored on resume."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lora_train.training.batches import BatchOrder
from lora_train.training.config import TrainConfig
from lora_train.training.ema import AdapterEMA, ema_applied
from lora_train.training.host_api import TrainingError, TrainingSession
from lora_train.training.networks import AdapterSet, AdapterSpec, find_targets
from lora_train.training.optim import make_optimizer, make_scheduler
from lora_train.training.precision import compute_precision
from lora_train.training.resume import ResumeState, Streams, capture_streams
from lora_train.training.targets import target_filter

LORAPLUS_NETWORKS = ("lora", "locon", "dora")


@dataclass
class Run:
    """The mutable pieces of one run (what a resume state captures)."""

    adapter_sets: list[AdapterSet]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    generator: torch.Generator
    order: BatchOrder
    base_model: str = ""  # the session's fingerprint: a resume state only continues on the same model
    step: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)
    validation_history: list[tuple[int, float]] = field(default_factory=list)
    ema: AdapterEMA | None = None

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def lora_tensors(self) -> dict[str, torch.Tensor]:
        """What is saved as the LoRA: the adapters, or their moving average when `ema_decay` is on."""
        with ema_applied(self.ema):
            return lora_state_dict(self.adapter_sets)

    def stream_state(self) -> Streams:
        """The random streams and data order right now."""
        return capture_streams(self.generator, self.order)

    def snapshot(self, cfg: TrainConfig, streams: Streams | None = None) -> ResumeState:
        """The resumable state at this step; `streams` from `stream_state()` rewinds the random draws."""
        return ResumeState.capture(
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            streams=streams or self.stream_state(),
            step=self.step,
            adapters=lora_state_dict(self.adapter_sets),
            config=cfg.to_dict(),
            base_model=self.base_model,
            history=[list(point) for point in self.history],
            validation_history=[list(point) for point in self.validation_history],
            ema=self.ema.state_tensors() if self.ema is not None else {},
        )

    def restore(self, state: ResumeState) -> None:
        """Continue from `state` (checked compatible by the caller)."""
        for adapter_set in self.adapter_sets:
            prefixes = set(adapter_set.prefixes.values())
            adapter_set.load_state_dict_kohya(
                {k: v for k, v in state.adapters.items() if k.split(".", 1)[0] in prefixes}
            )
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.generator.set_state(state.generator_state)
        torch.set_rng_state(state.torch_rng_state)
        self.order.load_state_dict(state.order)
        self.step = state.step
        self.history = [(int(s), float(v)) for s, v in state.history]
        self.validation_history = [(int(s), float(v)) for s, v in state.validation_history]
        if self.ema is not None and state.ema:
            self.ema.load_state_tensors(state.ema, updates=state.step)
        elif self.ema is not None:  # the state was written without EMA: the average starts from here
            self.ema = AdapterEMA(self.params, self.ema.decay)


def lora_state_dict(adapter_sets) -> dict[str, torch.Tensor]:
    """All adapter sets' kohya tensors, detached to fp32 CPU (what is saved and applied)."""
    return {
        key: value.detach().float().cpu().contiguous()
        for adapter_set in adapter_sets
        for key, value in adapter_set.state_dict_kohya().items()
    }


def build_run(
    cfg: TrainConfig, session: TrainingSession, generator: torch.Generator, order: BatchOrder, steps: int
) -> Run:
    """Adapters (seeded), optimizer, schedule, scaler and EMA for a fresh run."""
    base_model = session.fingerprint()
    targets = find_targets(session.diffusion_model, target_filter(cfg, session.diffusion_model))
    if not targets:
        raise TrainingError(f"no layers matched targets={cfg.targets!r} in this model; try targets=all_linear")
    torch.manual_seed(cfg.seed)
    spec = AdapterSpec(
        rank=cfg.rank,
        alpha=cfg.alpha,
        dropout=cfg.dropout,
        network=cfg.network,
        rank_dropout=cfg.rank_dropout,
        module_dropout=cfg.module_dropout,
    )
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
        group
        for adapter_set, lr in zip(adapter_sets, lrs, strict=True)
        for group in param_groups(adapter_set, lr, cfg.loraplus_lr_ratio)
    ]
    optimizer = make_optimizer(cfg.optimizer, groups, cfg.weight_decay)
    scheduler = make_scheduler(cfg.lr_scheduler, optimizer, steps, cfg.warmup_steps)
    precision = compute_precision(cfg.mixed_precision, session.device.type, explain=True)
    scaler = torch.amp.GradScaler(session.device.type, enabled=precision == "fp16")
    run = Run(adapter_sets, optimizer, scheduler, scaler, generator, order, base_model=base_model)
    if cfg.ema_decay > 0:
        run.ema = AdapterEMA(run.params, cfg.ema_decay)
    return run


def param_groups(adapter_set: AdapterSet, lr: float, loraplus_lr_ratio: float = 0.0) -> list[dict[str, Any]]:
    """The optimizer groups of one adapter set: all at `lr`, or with LoRA+ (arXiv 2402.12354; kohya's
    loraplus_lr_ratio) the up (B) matrices at `lr * loraplus_lr_ratio` in a group of their own."""
    named = [(name, p) for name, p in adapter_set.named_parameters() if p.requires_grad]
    if loraplus_lr_ratio <= 0:
        return [{"params": [p for _, p in named], "lr": lr}]
    if adapter_set.spec.network not in LORAPLUS_NETWORKS:
        raise TrainingError(
            f"loraplus_lr_ratio works on networks with up/down matrices ({', '.join(LORAPLUS_NETWORKS)}), not "
            f"{adapter_set.spec.network!r}; set loraplus_lr_ratio to 0 or pick one of those networks"
        )
    up = [p for name, p in named if ".lora_up." in name]
    rest = [p for name, p in named if ".lora_up." not in name]
    return [{"params": rest, "lr": lr}, {"params": up, "lr": lr * loraplus_lr_ratio}]
