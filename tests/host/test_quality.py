"""Quality: a LoRA trained on a strong style moves sampled latents toward that style (CPU, under two minutes).

The tiny checkpoint's VAE is random, so the style is measured where the model works: in latent space. The
"colour" of a latent is its per-channel mean; the style is the dataset's mean latent colour. Margin: the distance
from sampled to style colour must drop by at least 40% against the base model at the same seeds (measured: ~58%).
"""

import numpy as np
import pytest
import torch

from lora_train.dataset.loading import load_dataset
from lora_train.host.comfy_adapter import ComfyHost, apply_lora
from lora_train.training import train_lora
from lora_train.training.config import TrainConfig

pytestmark = [pytest.mark.host, pytest.mark.slow]
SEEDS = (0, 1, 2)


def _latent_colour_distance(model, clip, target: torch.Tensor, seed: int) -> float:
    import nodes

    with torch.inference_mode():
        positive = nodes.CLIPTextEncode().encode(clip, "redstyle, a circle")[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = {"samples": torch.zeros(2, 4, 8, 8)}
        samples = nodes.common_ksampler(model, seed, 12, 1.0, "euler", "normal", positive, negative, latent)[0]
    return (samples["samples"].mean(dim=(0, 2, 3)) - target).norm().item()


def test_lora_moves_samples_toward_the_trained_style(tiny_checkpoint, style_dataset_dir, tmp_path):
    model, clip, vae = tiny_checkpoint
    dataset = load_dataset(style_dataset_dir)
    with torch.inference_mode():
        pixels = [torch.from_numpy(np.asarray(item.load(), dtype=np.float32) / 255.0)[None] for item in dataset.items]
        style = torch.cat([vae.encode(p) for p in pixels]).mean(dim=(0, 2, 3))
    base = [_latent_colour_distance(model, clip, style, seed) for seed in SEEDS]

    cfg = TrainConfig.from_dict(
        {
            "network": "locon",
            "targets": "all_linear",
            "rank": 16,
            "alpha": 8,
            "steps": 300,
            "batch_size": 4,
            "resolution": 64,
            "learning_rate": 5e-3,
            "log_every": 50,
            "seed": 1,
            "output_name": "quality",
        }
    )
    with torch.inference_mode():
        result = train_lora(cfg, dataset, ComfyHost(model, clip, vae), tmp_path)
    losses = [loss for _, loss in result.loss_history]
    assert losses[-1] < 0.5 * losses[0], f"loss did not fall: {losses}"

    trained_model, trained_clip = apply_lora(model, clip, result.lora_tensors, 1.0, 0.0)
    after = [_latent_colour_distance(trained_model, trained_clip, style, seed) for seed in SEEDS]
    ratio = float(np.mean(after) / np.mean(base))
    assert ratio <= 0.6, f"style distance only fell to {ratio:.2f} of the base model's ({base} -> {after})"
