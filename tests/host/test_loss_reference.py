"""Our noise/target recipe, read from ComfyUI's model_sampling, equals independent references: diffusers'
DDPMScheduler for eps/v models (SD1.5, SD2-v, SDXL), the rectified-flow formulas for SD3 and Flux."""

import math
from types import SimpleNamespace

import pytest
import torch

from lora_train.training.losses import diffusion_batch, is_flow, min_snr_weight, sample_sigmas, training_loss

pytestmark = pytest.mark.host


def _sampling(prediction: str):
    import comfy.model_sampling as ms

    kind = {"epsilon": ms.EPS, "v_prediction": ms.V_PREDICTION}[prediction]

    class Sampling(ms.ModelSamplingDiscrete, kind):
        pass

    return Sampling()  # SD1.5 defaults: "linear" betas 0.00085-0.012 over 1000 steps (diffusers' scaled_linear)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_loss_matches_diffusers_ddpm_reference(comfy_lib, prediction):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type=prediction,
    )
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(6, 4, 8, 8, generator=gen)
    noise = torch.randn(6, 4, 8, 8, generator=gen)
    timesteps = torch.tensor([0, 1, 250, 500, 998, 999])
    pred = torch.randn(6, 4, 8, 8, generator=gen)

    sampling = _sampling(prediction)
    batch = diffusion_batch(sampling, latents, noise, sampling.sigma(timesteps.float()))

    ref_input = scheduler.add_noise(latents, noise, timesteps)
    ref_target = noise if prediction == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    assert torch.equal(batch.timesteps, timesteps.float())
    torch.testing.assert_close(batch.model_input, ref_input, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(batch.target, ref_target, atol=2e-5, rtol=1e-5)
    ref_loss = torch.nn.functional.mse_loss(pred, ref_target)
    torch.testing.assert_close(training_loss(pred, batch), ref_loss, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_the_papers_formulas(comfy_lib, prediction):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    timesteps = torch.tensor([0, 100, 500, 999])
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    expected = torch.clamp(snr, max=5.0) / (snr if prediction == "epsilon" else snr + 1)
    sampling = _sampling(prediction)
    sigmas = sampling.sigma(timesteps.float())
    batch = diffusion_batch(sampling, torch.zeros(4, 4, 2, 2), torch.ones(4, 4, 2, 2), sigmas)
    torch.testing.assert_close(min_snr_weight(batch, 5.0), expected.float(), rtol=1e-4, atol=1e-6)


# ---- flow matching (SD3, Flux) ---------------------------------------------------------------------------------
def _flow_sampling(family: str):
    """ComfyUI's model_sampling of SD3 (discrete flow, shift 3, timestep = 1000 sigma) or Flux dev (mu 1.15)."""
    import comfy.model_sampling as ms

    base = {"sd3": ms.ModelSamplingDiscreteFlow, "flux": ms.ModelSamplingFlux}[family]

    class Sampling(base, ms.CONST):
        pass

    settings = {"sd3": {"shift": 3.0, "multiplier": 1000}, "flux": {"shift": 1.15}}[family]
    return Sampling(SimpleNamespace(sampling_settings=settings))


def _shifted(family: str, u: torch.Tensor) -> torch.Tensor:
    """The families' published timestep shifts, written out independently of ComfyUI."""
    if family == "sd3":  # SD3 paper, eq. 23: t_m = s t_n / (1 + (s - 1) t_n), s = 3
        return 3.0 * u / (1 + 2.0 * u)
    return math.exp(1.15) / (math.exp(1.15) + (1 / u - 1))  # Flux: time_shift(mu, 1, t), mu = 1.15


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_loss_matches_rectified_flow_reference(comfy_lib, family):
    sampling = _flow_sampling(family)
    assert is_flow(sampling)
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(5, 16, 8, 8, generator=gen)
    noise = torch.randn(5, 16, 8, 8, generator=gen)
    pred = torch.randn(5, 16, 8, 8, generator=gen)
    u = torch.tensor([0.02, 0.25, 0.5, 0.75, 0.98])
    sigmas = _shifted(family, u)

    batch = diffusion_batch(sampling, latents, noise, sigmas)

    s = sigmas.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(batch.model_input, (1 - s) * latents + s * noise, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(batch.target, noise - latents, atol=2e-5, rtol=1e-5)  # velocity: x1 - x0
    torch.testing.assert_close(batch.timesteps, sigmas * (1000.0 if family == "sd3" else 1.0))
    torch.testing.assert_close(training_loss(pred, batch), torch.nn.functional.mse_loss(pred, noise - latents))
    # Min-SNR in output space: the x0 error of a velocity error e is sigma * e, and SNR = ((1 - s) / s)^2.
    snr = ((1 - sigmas) / sigmas) ** 2
    torch.testing.assert_close(min_snr_weight(batch, 5.0), torch.clamp(snr, max=5.0) * sigmas**2, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_sigmas_are_logit_normal_through_the_models_shift(comfy_lib, family):
    sampling = _flow_sampling(family)
    sigmas = sample_sigmas(sampling, 8, torch.Generator().manual_seed(3), "auto")
    u = torch.sigmoid(torch.randn(8, generator=torch.Generator().manual_seed(3)))  # the draw, made independently
    torch.testing.assert_close(sigmas, _shifted(family, u).float(), atol=1e-6, rtol=1e-5)

    many = sample_sigmas(sampling, 20000, torch.Generator().manual_seed(4), "logit_normal", mean=0.5, std=0.8)
    unshifted = {"sd3": many / (3.0 - 2.0 * many), "flux": 1 / (1 + math.exp(1.15) * (1 / many - 1))}[family]
    logits = torch.logit(unshifted.double())
    assert abs(float(logits.mean()) - 0.5) < 0.03 and abs(float(logits.std()) - 0.8) < 0.03
    assert 0 < float(many.min()) and float(many.max()) < 1


def test_eps_models_keep_uniform_integer_timesteps(comfy_lib):
    sampling = _sampling("epsilon")
    assert not is_flow(sampling)
    sigmas = sample_sigmas(sampling, 4000, torch.Generator().manual_seed(5), "auto")
    timesteps = sampling.timestep(sigmas)
    assert torch.equal(timesteps, timesteps.round()) and int(timesteps.min()) == 0 and int(timesteps.max()) == 999
    assert abs(float(timesteps.float().mean()) - 499.5) < 15
