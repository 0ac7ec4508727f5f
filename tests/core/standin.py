"""A pure-torch stand-in for ComfyUI behind the `TrainingHost` protocol, so core tests drive `train_lora` end to end
on the CPU in a second or two.

- "VAE": the image fitted to its bucket (the trainer's own bucket rules) and average-pooled 8x8, so a latent cell
  depends on exactly its 8x8 block of pixels (masked-loss tests rely on that).
- "text encoder": a seeded 8-vector per caption.
- diffusion model: per-pixel MLP blocks (class `SpatialTransformer`, so the default `targets=attention` finds their
  layers) conditioned on the caption vector, over a rectified-flow schedule (sigma = t / 1000, no shift).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lora_train.dataset import fit_to_bucket
from lora_train.training import Example, Progress, training_buckets

LATENT_SCALE = 8
COND_WIDTH = 8


class FlowSampling:
    """The five methods of ComfyUI's `model_sampling` for a rectified-flow model (x_t = (1 - s) x0 + s noise)."""

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return timestep / 1000.0

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * 1000.0

    def percent_to_sigma(self, percent: float) -> float:
        return 1.0 - percent

    def noise_scaling(self, sigma, noise, latent):
        return sigma * noise + (1.0 - sigma) * latent

    def calculate_input(self, sigma, noisy):
        return noisy

    def calculate_denoised(self, sigma, output, noisy):
        return noisy - output * sigma


class SpatialTransformer(nn.Module):
    """One block: a residual per-pixel MLP plus the caption vector."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.context = nn.Linear(COND_WIDTH, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.proj(x) + self.context(context)[:, None, :])


class TinyFlowModel(nn.Module):
    """[B, 3, h, w] latents + [B, 8] caption vectors -> [B, 3, h, w] flow prediction."""

    def __init__(self, width: int = 16, depth: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj_in = nn.Linear(3 + 1, width)
        self.blocks = nn.ModuleList(SpatialTransformer(width) for _ in range(depth))
        self.proj_out = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor, sigmas: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        level = sigmas.reshape(b, 1, 1).expand(b, h * w, 1).to(tokens)
        hidden = self.proj_in(torch.cat([tokens, level], dim=-1))
        for block in self.blocks:
            hidden = block(hidden, context)
        return self.proj_out(hidden).reshape(b, h, w, c).permute(0, 3, 1, 2)


def caption_vector(text: str) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    return torch.randn(COND_WIDTH, generator=torch.Generator().manual_seed(seed))


def encode_image(image, bucket: tuple[int, int]) -> torch.Tensor:
    """The stand-in VAE: fitted pixels in -1..1, average-pooled 8x8 -> [3, h/8, w/8]."""
    pixels = torch.from_numpy(np.asarray(fit_to_bucket(image, bucket), dtype=np.float32) / 127.5 - 1.0)
    return torch.nn.functional.avg_pool2d(pixels.permute(2, 0, 1)[None], LATENT_SCALE)[0]


@dataclass
class StandInSession:
    diffusion_model: nn.Module
    sampling: FlowSampling = field(default_factory=FlowSampling)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def kohya_prefix(self, module_path: str) -> str:
        return "lora_unet_" + module_path.replace(".", "_")

    def fingerprint(self) -> str:
        first = next(iter(self.diffusion_model.parameters()))
        return f"standin:{float(first.flatten()[0]):.6f}"

    def file_tensors(self, tensors):
        return tensors

    def collate(self, conds):
        return torch.stack(conds).to(self.device)

    def predict(self, model_input, sigmas, timesteps, cond, noisy):
        return self.diffusion_model(model_input, sigmas, cond)

    def sample_previews(self, cfg) -> list:
        """One 16x16 preview: the model's output for a grey latent, as colours."""
        from PIL import Image

        latent = torch.zeros(1, 3, 2, 2)
        out = self.diffusion_model(latent, torch.ones(1), caption_vector(cfg.trigger_word)[None])
        colour = tuple(int(v) for v in ((out.mean(dim=(2, 3))[0].tanh() + 1) * 127.5).tolist())
        return [Image.new("RGB", (16, 16), colour)]


class StandInHost:
    """Encodes with the stand-in VAE and text vectors; lends `TinyFlowModel`; records progress."""

    base_model_name = "standin"
    architecture = "flux-1-dev/lora"

    def __init__(self, model: nn.Module | None = None):
        self.model = model or TinyFlowModel()
        self.progress: list[Progress] = []
        self.encoded: list[list[str]] = []  # the captions of each encode_examples call

    def encode_examples(self, dataset, cfg, cache_dir=None) -> list[Example]:
        examples = []
        for item, bucket in zip(dataset.items, training_buckets(dataset.items, cfg), strict=True):
            caption = f"{cfg.trigger_word}, {item.caption}" if cfg.trigger_word else item.caption
            latents = encode_image(item.load(), bucket)
            examples.append(
                Example(latents, caption_vector(caption), caption_vector(""), repeats=item.repeats, caption=caption)
            )
        self.encoded.append([e.caption for e in examples])
        return examples

    @contextlib.contextmanager
    def session(self, cfg):
        self.model.requires_grad_(False)
        yield StandInSession(self.model)

    def check_cancel(self) -> None:
        pass

    def report(self, progress: Progress) -> None:
        self.progress.append(progress)


class Interrupted(Exception):
    """What `CancelAt` raises for Cancel."""


class CancelAt(StandInHost):
    """Cancels once `step` steps have finished (the loop checks for Cancel after every step)."""

    def __init__(self, step: int):
        super().__init__()
        self.cancel_step, self.checks = step, 0

    def check_cancel(self) -> None:
        self.checks += 1
        if self.checks == self.cancel_step:
            raise Interrupted


def write_images(folder, count: int = 4, size: tuple[int, int] = (32, 32), seed: int = 0, caption: str = "a thing"):
    """`count` seeded random RGB pngs with .txt captions in `folder`; returns the folder."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index}.png")
        (folder / f"img{index}.txt").write_text(f"{caption} {index}")
    return folder
