"""Image-to-video models (Wan 2.1 I2V; Wan 2.2 A14B I2V, which ComfyUI detects as Wan T2V with 36 input channels):
each clip's first frame is its start image, given to the model as ComfyUI's WanImageToVideo node gives it: the VAE
encoding of that frame followed by grey frames (`concat_latent_image`) and a mask marking the first latent frame as
given (`concat_mask`); the model's own `concat_cond` turns them into its extra input channels. A still trains as a
one-frame clip whose start image is itself. Wan 2.1 I2V also reads CLIP vision features of the start image
(`clip_vision_output`, as CLIPVisionEncode gives them to WanImageToVideo): the CLIP vision model must be given."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lora_train.training import TrainingError

# What the start-image latents are encoded from (part of their latent-cache key).
START_PREPARE = "first frame then grey 0.5 frames, as WanImageToVideo (start_image v1)"


def takes_start_image(model) -> bool:
    """Whether the model is a Wan image-to-video model: its patch embedding takes the noise, a 4-channel mask and
    the start image's latents (2 x latent channels + 4)."""
    base = model.model
    if type(base).__name__ != "WAN21":  # camera, VACE, S2V, ... subclasses take other conditioning
        return False
    in_channels = base.diffusion_model.patch_embedding.weight.shape[1]
    return in_channels == 2 * base.latent_format.latent_channels + 4


def reads_clip_vision(model) -> bool:
    """Whether the model embeds CLIP vision features of the start image (Wan 2.1 I2V's `img_emb`)."""
    return getattr(model.model.diffusion_model, "img_emb", None) is not None


def check_clip_vision(model, family: str, clip_vision) -> None:
    """A model that reads CLIP vision features trains only with the CLIP vision model; refused before any work."""
    if clip_vision is None and reads_clip_vision(model):
        raise TrainingError(
            f"{family} also reads CLIP vision features of each clip's start image: connect a Load CLIP Vision "
            "(clip_vision_h) to Train LoRA's clip_vision input, as for WanImageToVideo. Nothing was trained."
        )


def start_image_note(family: str) -> str:
    """The log line saying how this image-to-video model is trained."""
    return f"{family} takes a start image: each clip's first frame is given as WanImageToVideo gives it"


def start_video(pixels: np.ndarray) -> np.ndarray:
    """The frames WanImageToVideo encodes for a start image: the clip's first frame, then grey (0.5) frames."""
    video = np.full_like(pixels, 0.5)
    video[0] = pixels[0]
    return video


def start_conds(start_latents: torch.Tensor) -> dict[str, Any]:
    """`concat_latent_image` and `concat_mask` (0 on the first latent frame: given; 1 elsewhere: to generate)."""
    mask = torch.ones((1, 1, *start_latents.shape[2:]), dtype=start_latents.dtype)
    mask[:, :, :1] = 0.0
    return {"concat_latent_image": start_latents, "concat_mask": mask}


def with_start_image(text_out: dict[str, Any], start: dict[str, Any] | None) -> dict[str, Any]:
    """The text encoder's output plus the example's start-image conditioning (fresh tensors for autograd)."""
    if not start:
        return text_out
    return {**text_out, **{k: v.clone() if torch.is_tensor(v) else v for k, v in start.items()}}
