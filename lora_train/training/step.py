"""One optimizer step: draw the batch, noise and noise levels, predict, loss, backward (over gradient accumulation),
then clip, step and schedule."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from lora_train.training.captions import kept_tags, training_captions
from lora_train.training.config import TrainConfig
from lora_train.training.distributed import Distributed
from lora_train.training.host_api import Example, TrainingSession
from lora_train.training.losses import diffusion_batch, sample_noise, sample_sigmas, training_loss
from lora_train.training.masks import batch_mask
from lora_train.training.precision import compute_precision
from lora_train.training.run import Run

AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def batch_cond(cfg: TrainConfig, session: TrainingSession, picked: list, texts: list[str] | None, latents) -> Any:
    """The batch's conditioning: the cached embeddings, or `texts` encoded now (text-encoder training: with
    gradients through its adapters; shuffled captions: frozen, under no_grad)."""
    if texts is None:
        return session.collate([example.empty_cond if drop else example.cond for example, drop in picked])
    with contextlib.nullcontext() if cfg.train_text_encoder else torch.no_grad():
        return session.encode_captions(texts, latents, [example.size for example, _ in picked])


def _step_captions(cfg: TrainConfig, run: Run, examples: list[Example], indices: list[int], drop: list[bool]):
    """Captions to encode this step (text-encoder training or shuffled tags), or None to use the cached ones."""
    if not (cfg.train_text_encoder or cfg.shuffle_captions):
        return None
    keep = kept_tags(cfg.keep_tokens, cfg.trigger_word)
    captions = [examples[i].caption for i in indices]
    return training_captions(captions, drop, run.generator, keep=keep, shuffle=cfg.shuffle_captions)


def _batch_loss(
    cfg: TrainConfig, run: Run, session: TrainingSession, examples: list[Example], dist: Distributed
) -> torch.Tensor | None:
    """Draw the next global batch and return this rank's share of its loss (None when it has no rows of it).

    Random draws (caption dropout, noise, timesteps) cover the global batch on every rank, in the same order as a
    single process; this rank then keeps its rows of it (see lora_train.training.distributed).
    """
    device = session.device
    indices = run.order.next()
    drop = (torch.rand(len(indices), generator=run.generator) < cfg.caption_dropout).tolist()
    texts = _step_captions(cfg, run, examples, indices, drop)
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
        return None
    latents, noise, sigmas = global_latents[rows].to(device), noise[rows].to(device), sigmas[rows]
    picked = [(examples[indices[r]], drop[r]) for r in rows]
    cond = batch_cond(cfg, session, picked, None if texts is None else [texts[r] for r in rows], latents)
    loss = predicted_loss(cfg, session, [example for example, _ in picked], latents, noise, sigmas, cond)
    return loss * dist.loss_weight(len(rows), len(indices))


def predicted_loss(
    cfg: TrainConfig,
    session: TrainingSession,
    batch_examples: list[Example],
    latents: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any,
) -> torch.Tensor:
    """Noise `latents`, predict, and the loss (masks and per-example weights of `batch_examples` applied)."""
    batch = diffusion_batch(session.sampling, latents, noise, sigmas)
    autocast_dtype = AUTOCAST[compute_precision(cfg.mixed_precision, latents.device.type)]
    with torch.autocast(latents.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        pred = session.predict(batch.model_input, batch.sigmas, batch.timesteps, cond, noise)
    weights = [example.loss_weight for example in batch_examples]
    return training_loss(
        pred,
        batch,
        loss=cfg.loss,
        delta=cfg.huber_delta,
        min_snr_gamma=cfg.min_snr_gamma,
        mask=batch_mask(batch_examples, latents),
        weights=None if all(w == 1.0 for w in weights) else torch.tensor(weights),
    )


def optimizer_step(
    cfg: TrainConfig, run: Run, session: TrainingSession, examples: list[Example], dist: Distributed
) -> torch.Tensor:
    """One optimizer step over `gradient_accumulation` batches; returns the (device) loss, not synced."""
    total = torch.zeros((), device=session.device)
    for _ in range(cfg.gradient_accumulation):
        loss = _batch_loss(cfg, run, session, examples, dist)
        if loss is None:
            continue
        loss = loss / cfg.gradient_accumulation
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
    if run.ema is not None:
        run.ema.update()
    return total
