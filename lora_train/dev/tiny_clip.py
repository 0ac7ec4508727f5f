"""A tiny, seeded Hugging Face CLIP folder for tests and benches (random weights: rankings are arbitrary but fixed).

Text and vision towers share one width and the projection is square, so the same weights also load into
ComfyUI's own CLIP classes (whose text projection is square) for the cross-check in the host tests.
"""

from __future__ import annotations

from pathlib import Path

TINY_WIDTH = 32


def write_tiny_hf_clip(folder: str | Path, tokenizer_dir: str | Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Save a CLIPModel (2 layers, width 32) + the given CLIP tokenizer + an image processor into `folder`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    layers = {"hidden_size": TINY_WIDTH, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**layers, "vocab_size": 49408, "max_position_embeddings": 77, "eos_token_id": 49407},
        vision_config={**layers, "image_size": image_size, "patch_size": 8},
        projection_dim=TINY_WIDTH,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(str(folder))
    crop = {"height": image_size, "width": image_size}
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=crop).save_pretrained(str(folder))
    return folder
