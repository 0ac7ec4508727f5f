"""CLIP encoders from ComfyUI graph objects: a CLIP_VISION (image tower) and a CLIP (text towers).

Read in ComfyUI 0.3.75 (`comfy/clip_vision.py`, `comfy/sd1_clip.py`, `comfy/sd.py`) and checked in
tests/host/test_dataset_nodes.py against transformers on the same weights:
- `clip_vision.encode_image(image)["image_embeds"]` is the projected image embedding (`visual_projection`);
- a CLIP object holds one text tower per tokenizer key (`cond_stage_model.clip_l`, `clip_g`, `clip_h`); each is an
  `SDClipModel` whose pooled output goes through `text_projection` when its `projected_pooled` option is on. SD1.5
  checkpoints turn it off and carry no projection weights, so `encode_from_tokens(..., return_pooled=True)` is
  not the embedding we need; we switch the option on for the one tower we use, then reset it.
Nothing here imports comfy: the objects come in from the graph.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from lora_train.dataset.captioners.encoders import CaptionError, ClipEncoders

if TYPE_CHECKING:
    import torch
    from PIL import Image

MATCHING_PAIRS = (
    "ViT-L/14 vision (768) <-> clip_l, the CLIP-L text encoder of SD1.5/SDXL/SD3/Flux (load clip_l.safetensors "
    "with a Load CLIP node: SD1.5 checkpoints leave out its projection); ViT-H/14 vision (1024, IPAdapter's "
    "clip_vision_h) <-> SD2's OpenCLIP-H text encoder; ViT-bigG/14 vision (1280, clip_vision_g) <-> SDXL's clip_g"
)


def _vision_width(clip_vision: Any) -> int:
    projection = getattr(clip_vision.model, "visual_projection", None)
    weight = getattr(projection, "weight", None)
    if weight is None:
        raise CaptionError("this CLIP_VISION model has no projection to a shared image-text space (not a CLIP model)")
    return int(weight.shape[0])


def text_towers(clip: Any) -> dict[str, tuple[Any, int]]:
    """Tokenizer key -> (text tower, projected width) for every CLIP text tower of a ComfyUI CLIP object."""
    tokens = clip.tokenize("a")
    towers = {}
    for key in tokens:
        tower = getattr(clip.cond_stage_model, f"clip_{key}", None)
        projection = getattr(getattr(tower, "transformer", None), "text_projection", None)
        if projection is not None and hasattr(tower, "set_clip_options"):
            towers[key] = (tower, int(projection.weight.shape[0]))
    return towers


# A loaded CLIP text projection has entries of std ~0.02 (clip_l, clip_g). One that no file filled (SD1.5 and SDXL
# checkpoints leave it out) holds whatever memory it got: often near zero, but after a long session it can be a freed
# tensor's values. The sure sign is torch's version counter: ComfyUI loads weights with copy_, which bumps it, so a
# projection still at version 0 in a tower whose other weights were copied in was never loaded. The value checks
# cover towers loaded another way (assigned tensors, moved or cast after loading).
MIN_PROJECTION_STD = 1e-3
MAX_PROJECTION_ABS = 1e3


def _never_loaded(tower: Any) -> bool:
    """True when the tower's weights were copied in from a file but its text projection was not.

    Unknown (False) for inference tensors, which keep no version counter: a CLIP loaded inside ComfyUI's
    executor is one, and there only the value checks speak.
    """
    projection = tower.transformer.text_projection.weight
    if projection.is_inference():
        return False
    others = (p for name, p in tower.transformer.named_parameters() if not name.startswith("text_projection"))
    return projection._version == 0 and any(not p.is_inference() and p._version > 0 for p in others)


def _check_projection(tower: Any, key: str) -> None:
    """Refuse a projection that was never loaded: left out of the file, non-finite, near-zero or absurdly large."""
    import torch

    weight = tower.transformer.text_projection.weight
    if weight.device.type != "meta" and not _never_loaded(tower):
        values = weight.detach().float()
        finite = bool(torch.isfinite(values).all())
        if finite and float(values.std()) >= MIN_PROJECTION_STD and float(values.abs().max()) <= MAX_PROJECTION_ABS:
            return
    raise CaptionError(
        f"the CLIP text encoder clip_{key} has no text projection weights (SD1.5 and SDXL checkpoints leave them "
        f"out). Load a full text encoder (e.g. clip_l.safetensors) with a Load CLIP node. Matching pairs: "
        f"{MATCHING_PAIRS}"
    )


def comfy_clip_encoders(clip_vision: Any, clip: Any) -> ClipEncoders:
    """Encoders over graph objects; refuses pairs whose embedding widths differ, naming the pairs that match."""
    import torch

    width = _vision_width(clip_vision)
    towers = text_towers(clip)
    match = next((key for key, (_, w) in towers.items() if w == width), None)
    if match is None:
        found = ", ".join(f"clip_{k} ({w})" for k, (_, w) in towers.items()) or "none with a projection"
        raise CaptionError(
            f"CLIP_VISION gives {width}-wide image embeddings but the CLIP's text encoders are {found}: they are "
            f"not two halves of one CLIP model. Matching pairs: {MATCHING_PAIRS}"
        )
    tower, _ = towers[match]
    _check_projection(tower, match)
    size = int(getattr(clip_vision, "image_size", 224))

    @torch.no_grad()
    def encode_images(images: list[Image.Image]) -> torch.Tensor:
        import numpy as np
        from PIL import ImageOps

        # Centre-crop to the model's square here so one batch tensor holds every image (ComfyUI's
        # clip_preprocess then resizes a no-op). Same crop as CLIP's own preprocessing.
        tiles = [
            np.asarray(ImageOps.fit(img.convert("RGB"), (size, size), method=3), dtype=np.float32) for img in images
        ]
        batch = torch.from_numpy(np.stack(tiles) / 255.0)
        return clip_vision.encode_image(batch)["image_embeds"].float().cpu()

    @torch.no_grad()
    def encode_texts(texts: list[str]) -> torch.Tensor:
        clip.load_model()
        pooled = []
        for text in texts:
            tokens = clip.tokenize(text)[match]
            tower.reset_clip_options()
            tower.set_clip_options({"projected_pooled": True})
            try:
                pooled.append(tower.encode_token_weights(tokens)[1].float().cpu()[:1])
            finally:
                tower.reset_clip_options()
        return torch.cat(pooled)

    weight = tower.transformer.text_projection.weight
    digest = hashlib.sha256(weight.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
    return ClipEncoders(encode_images, encode_texts, model_id=f"comfy:clip_{match}:{width}:{digest}")
