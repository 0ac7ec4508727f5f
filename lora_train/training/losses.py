"""Noise, timesteps, targets and loss weights, read from the host model's own sampling object.

`sampling` is ComfyUI's `model_sampling` (or anything with the same five methods): `sigma(t)`, `timestep(sigma)`,
`noise_scaling(sigma, noise, latent)`, `calculate_input(sigma, noisy)` and `calculate_denoised(sigma, output,
noisy)`. Every family ComfyUI knows (eps, v-prediction, flow) writes its denoised estimate as an affine function
of the raw model output, `x0 = a + b * output`. So the training target is the output that would give back the
clean latents, `(latents - a) / b`, without a per-family formula: eps models get the noise, v models get v, flow
models get noise - x0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DiffusionBatch:
    """One noised batch: what the model sees and what it should output."""

    sigmas: torch.Tensor  # [B]
    timesteps: torch.Tensor  # [B], the model's own timestep for each sigma
    model_input: torch.Tensor  # calculate_input(sigma, noisy)
    target: torch.Tensor  # the raw output that denoises back to the latents
    x0_coefficient: torch.Tensor  # b in x0 = a + b * output, per sample [B]
    snr: torch.Tensor  # signal-to-noise ratio per sample [B]


def _per_sample(sigmas: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigmas.reshape(-1, *([1] * (like.ndim - 1)))


TIMESTEP_DISTRIBUTIONS = ("auto", "uniform", "logit_normal")


def is_flow(sampling) -> bool:
    """True for flow-matching models (SD3, Flux, ...): their forward process interpolates latents and noise, so the
    signal scale falls below 1 as sigma grows (eps/v models keep the latents whole and add scaled noise)."""
    half = torch.full((1, 1), 0.5)
    return float(sampling.noise_scaling(half, torch.zeros(1, 1), torch.ones(1, 1))) < 0.999


def sample_sigmas(
    sampling,
    batch: int,
    generator: torch.Generator,
    distribution: str = "auto",
    mean: float = 0.0,
    std: float = 1.0,
    num_timesteps: int = 1000,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Training noise levels drawn the way the model family trains, mapped through the model's own schedule.

    - eps / v models, `uniform` (their `auto`): integer timesteps uniform in [0, 1000), sigma = `sampling.sigma(t)`
      (the DDPM training distribution).
    - flow models: a time u in (0, 1) is drawn, `logit_normal` (their `auto`: u = sigmoid(N(mean, std)), the
      distribution SD3's paper recommends, mean 0 std 1) or `uniform`; then sigma = `percent_to_sigma(1 - u)`,
      which applies the model's own timestep shift: SD3's `shift * u / (1 + (shift - 1) * u)` (shift 3.0) or
      Flux's `e^mu / (e^mu + 1/u - 1)` (mu 1.15 for dev, shift 1 = none for schnell). A ModelSampling* node
      placed before training changes that shift, as it does for sampling.
    The draws come from `generator` on the CPU; the sigmas are computed on `device` (where the model's schedule
    lives), so nothing is read back from the device.
    """
    if distribution not in TIMESTEP_DISTRIBUTIONS:
        choices = ", ".join(TIMESTEP_DISTRIBUTIONS)
        raise ValueError(f"timestep distribution must be one of {choices}, got {distribution!r}")
    flow = is_flow(sampling)
    if distribution == "auto":
        distribution = "logit_normal" if flow else "uniform"
    if distribution == "uniform" and not flow:
        timesteps = torch.randint(0, num_timesteps, (batch,), generator=generator).float()
        return sampling.sigma(timesteps.to(device)).float()
    if distribution == "uniform":
        u = torch.rand(batch, generator=generator)
    else:
        u = torch.sigmoid(mean + std * torch.randn(batch, generator=generator))
    u = u.clamp(1e-5, 1.0 - 1e-5)  # both ends are degenerate (no noise, or pure noise where eps models blow up)
    return sigmas_at(sampling, u, num_timesteps, device, flow=flow)


def sigmas_at(
    sampling,
    u: torch.Tensor,
    num_timesteps: int = 1000,
    device: torch.device | str = "cpu",
    *,
    flow: bool | None = None,
) -> torch.Tensor:
    """The model's sigmas at times `u` in (0, 1) (1 = pure noise), through its own schedule and shift."""
    flow = is_flow(sampling) if flow is None else flow
    if not flow:  # what percent_to_sigma(1 - u) computes for a discrete schedule, without a read-back per sample
        return sampling.sigma((u * (num_timesteps - 1)).to(device)).float()
    # Flow schedules map times to sigmas in plain Python arithmetic (no device tensor involved).
    sigmas = [float(sampling.percent_to_sigma(1.0 - float(x))) for x in u]
    return torch.tensor(sigmas, dtype=torch.float32).to(device)


def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise like `latents`, plus an optional per-channel offset (Crosslabs' noise offset)."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    if noise_offset:
        offset = torch.randn((latents.shape[0], latents.shape[1]) + (1,) * (latents.ndim - 2), generator=generator)
        noise = noise + noise_offset * offset.to(latents)
    return noise


def diffusion_batch(sampling, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> DiffusionBatch:
    """Noise `latents` at noise levels `sigmas` the way the host model's sampling does, and derive the target."""
    sigmas = sigmas.to(latents)
    sig = _per_sample(sigmas, latents)
    noisy = sampling.noise_scaling(sig, noise, latents)
    model_input = sampling.calculate_input(sig, noisy)
    offset = sampling.calculate_denoised(sig, torch.zeros_like(noisy), noisy)
    coefficient = sampling.calculate_denoised(sig, torch.ones_like(noisy), noisy) - offset
    target = (latents - offset) / coefficient
    # Signal and noise scales of the forward process give the SNR for any family (VP: 1/sigma^2; flow: ((1-s)/s)^2).
    signal = sampling.noise_scaling(sig, torch.zeros_like(noisy[:, :1]), torch.ones_like(noisy[:, :1]))
    noise_scale = sampling.noise_scaling(sig, torch.ones_like(noisy[:, :1]), torch.zeros_like(noisy[:, :1]))
    snr = (signal / noise_scale).flatten(1)[:, 0] ** 2
    b = coefficient.flatten(1)[:, 0]
    return DiffusionBatch(sigmas, sampling.timestep(sigmas).float(), model_input, target, b, snr)


def min_snr_weight(batch: DiffusionBatch, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (arXiv 2303.09556) in the model's output space.

    The paper weights the x0 loss by min(SNR, gamma); an output-space error e is an x0 error b * e, so the output
    loss gets min(SNR, gamma) * b^2. That is min(SNR, g)/SNR for eps and min(SNR, g)/(SNR + 1) for v, as kohya uses.
    """
    return torch.clamp(batch.snr, max=gamma) * batch.x0_coefficient**2


def _huber(pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    return F.huber_loss(pred, target, reduction="none", delta=delta)


def _smooth_l1(pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    return F.smooth_l1_loss(pred, target, reduction="none", beta=delta)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "mse": lambda pred, target, _delta: F.mse_loss(pred, target, reduction="none"),
    "l1": lambda pred, target, _delta: F.l1_loss(pred, target, reduction="none"),
    "huber": _huber,
    "smooth_l1": _smooth_l1,
}


def training_loss(
    pred: torch.Tensor,
    batch: DiffusionBatch,
    *,
    loss: str = "mse",
    delta: float = 0.1,
    min_snr_gamma: float = 0.0,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar loss: elementwise loss in output space (times `mask` [B, 1, h, w], kohya's masked loss: mean over
    all elements, masked ones counting zero), mean per sample, optional min-SNR weights and per-sample `weights`
    (prior_loss_weight), batch mean."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    per_element = LOSSES[loss](pred.float(), batch.target.float(), delta)
    if mask is not None:
        per_element = per_element * mask.float()
    per_sample = per_element.flatten(1).mean(dim=1)
    if min_snr_gamma > 0:
        per_sample = per_sample * min_snr_weight(batch, min_snr_gamma)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()
