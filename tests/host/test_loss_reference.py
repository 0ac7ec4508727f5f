"""Our noise/target recipe, read from ComfyUI's model_sampling, equals diffusers' DDPMScheduler for SD1.5."""

import pytest
import torch

from lora_train.losses import diffusion_batch, min_snr_weight, training_loss

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

    batch = diffusion_batch(_sampling(prediction), latents, noise, timesteps.float())

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
    batch = diffusion_batch(_sampling(prediction), torch.zeros(4, 4, 2, 2), torch.ones(4, 4, 2, 2), timesteps.float())
    torch.testing.assert_close(min_snr_weight(batch, 5.0), expected.float(), rtol=1e-4, atol=1e-6)
