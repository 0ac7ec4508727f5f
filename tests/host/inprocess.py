"""Training in the test process (no server), for families whose tiny models load only in-process."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lora_train.dataset.loading import load_dataset
from lora_train.host.comfy_adapter import ComfyHost
from lora_train.training import train_lora
from lora_train.training.config import TrainConfig


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


# A short run that still moves a tiny model's output: 3 steps of rank 4 at 64 px.
SHORT_RUN = {"rank": 4, "alpha": 4, "steps": 3, "batch_size": 1, "resolution": 64, "learning_rate": 1e-3}


def train_logged(model, text, vae, dataset_dir: Path, out_dir: Path, output_name: str) -> tuple:
    """(TrainResult, the run's `lora_train` log lines as one text): SHORT_RUN trained on (MODEL, CLIP, VAE) under
    inference mode, as the Train LoRA node runs it, into `out_dir`/`output_name`.safetensors."""
    cfg = TrainConfig.from_dict({**SHORT_RUN, "output_name": output_name})
    logger, handler = logging.getLogger("lora_train"), _Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with torch.inference_mode():
            result = train_lora(cfg, load_dataset(dataset_dir), ComfyHost(model, text, vae), out_dir)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return result, "\n".join(handler.lines)


def sample_tiny(model, text, prompt: str = "redstyle, a circle", seed: int = 7) -> torch.Tensor:
    """KSampler's computation on `model` (ComfyUI's own sampler): euler, 2 steps, CFG 4, 64 px, `prompt` against
    the empty negative encoded by `text` (a CLIP or its stand-in)."""
    import comfy.sample

    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros([1, 4, 8, 8]))
    noise = comfy.sample.prepare_noise(latent, seed)
    positive = text.encode_from_tokens_scheduled(text.tokenize(prompt))
    negative = text.encode_from_tokens_scheduled(text.tokenize(""))
    with torch.inference_mode():
        return comfy.sample.sample(
            model, noise, 2, 4.0, "euler", "normal", positive, negative, latent, disable_pbar=True, seed=seed
        )


def assert_diffusers_adds_the_same_updates(transformer, pipeline, lora_path: Path) -> None:
    """diffusers' loader (`pipeline.lora_state_dict` into `transformer`, built on the meta device at the tiny
    model's sizes) adapts exactly the file's modules, each with the update B @ A that ComfyUI's loader adds."""
    from safetensors.torch import load_file

    transformer = transformer.to_empty(device="cpu")  # weights are irrelevant to what the LoRA adds
    transformer.load_lora_adapter(pipeline.lora_state_dict(str(lora_path)), prefix="transformer", adapter_name="t")
    tensors = load_file(str(lora_path))
    modules = {k[len("transformer.") : -len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight")}
    adapted = {name: m for name, m in transformer.named_modules() if "t" in getattr(m, "lora_A", {})}
    assert set(adapted) == modules, sorted(set(adapted) ^ modules)[:5]
    for name in sorted(modules):
        expected = tensors[f"transformer.{name}.lora_B.weight"] @ tensors[f"transformer.{name}.lora_A.weight"]
        torch.testing.assert_close(adapted[name].get_delta_weight("t"), expected)
