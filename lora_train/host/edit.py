"""Edit models (Qwen-Image-Edit, Flux Kontext, Flux 2 with reference images): each training image's control/source
image (`<stem>_control.*` beside it) is VAE-encoded once and given to the model as ComfyUI's edit nodes give it,
`reference_latents` in the conditioning (the model's own extra_conds turn it into `ref_latents`)."""

from __future__ import annotations

from typing import Any

from lora_train.dataset import ImageItem, LoraDataset
from lora_train.training import TrainingError

# Qwen-Image-Edit 2511 marks itself with this reference method (ComfyUI's detection); earlier edit releases have
# the base model's shapes, so only the control images tell them apart.
EDIT_ONLY_REF_METHODS = ("index_timestep_zero",)


def takes_references(model) -> bool:
    """Whether the model reads reference latents (ComfyUI counts their memory: `memory_usage_factor_conds`)."""
    return "ref_latents" in getattr(model.model, "memory_usage_factor_conds", ())


def check_references(model, family: str, dataset: LoraDataset) -> None:
    """Control images only for models that read them, and for all images or none; an edit-only model needs them.
    Refused by file before any work."""
    controls = [item for item in dataset.items if item.control_path is not None]
    ref_method = getattr(model.model.model_config, "unet_config", {}).get("default_ref_method")
    if not controls:
        if ref_method in EDIT_ONLY_REF_METHODS:
            raise TrainingError(
                f"{family} here is an edit model (reference method {ref_method}): every training image needs its "
                "control/source image beside it as <image name>_control.png (or .jpg/.webp). None were found."
            )
        return
    if not takes_references(model):
        raise TrainingError(
            f"{controls[0].control_path}: a control image, but {family} takes no reference images. Remove the "
            "_control files or connect an edit model (Qwen-Image-Edit, Flux Kontext, Flux 2)."
        )
    missing = [item for item in dataset.items if item.control_path is None]
    if missing:
        raise TrainingError(
            f"{missing[0].path}: no control image beside it ({len(missing)} image(s) lack one); an edit LoRA "
            "trains on pairs: add <image name>_control.png for each, or remove the images without one."
        )


def control_item(item: ImageItem) -> ImageItem | None:
    """The control image as an item of its own (encoded and cached as training images are)."""
    if item.control_path is None:
        return None
    return ImageItem("", item.control_path)


def with_references(text_out: dict[str, Any], references: list | None) -> dict[str, Any]:
    """The text encoder's output plus the example's reference latents (fresh tensors for autograd)."""
    if not references:
        return text_out
    return {**text_out, "reference_latents": [latent.clone() for latent in references]}
