"""Auto-label throughput: images/s through `caption_images` at batch 1 vs batch N, same model, same images.

    python bench/bench_caption.py [--size tiny|vit-l] [--images 64] [--batch 16] [--repeats 5] [--device cpu]

`tiny` is the seeded 2-layer test CLIP (CPU); `vit-l` is a CLIP ViT-L/14 of real size with random weights (for a
GPU). Runs alternate between the two batch sizes so machine load hits both alike; medians and the ratio are
printed. The vocabulary's text embeddings are computed once before timing (they are cached in real runs too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_train.dataset.autolabel import CaptionConfig, caption_images, load_vocabulary, text_embeddings
from lora_train.dataset.captioners.hf_clip import load_hf_clip
from lora_train.dev import host_builder


def write_vit_l(folder: Path, tokenizer_dir: Path) -> Path:
    """openai/clip-vit-large-patch14's shapes (428 M parameters) with random weights, saved as a HF folder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    config = CLIPConfig(
        text_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "max_position_embeddings": 77, "eos_token_id": 49407},
        vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                       "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
        projection_dim=768,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(str(folder))
    CLIPTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(
        str(folder)
    )
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "vit-l"), default="tiny")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from lora_train.dev.tiny_clip import write_tiny_hf_clip

    tokenizer_dir = host_builder.setup_host().comfyui / "comfy" / "sd1_tokenizer"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clip"
        if args.size == "tiny":
            write_tiny_hf_clip(folder, tokenizer_dir, seed=3)
        else:
            write_vit_l(folder, tokenizer_dir)
        encoders = load_hf_clip(folder, device=args.device)
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 255, (256, 320, 3), dtype=np.uint8)) for _ in range(args.images)]
        cfg = CaptionConfig(threshold=-1.0)
        started = time.perf_counter()
        text_embeddings(encoders, load_vocabulary(cfg.vocabularies), cfg.template)
        vocab_seconds = time.perf_counter() - started
        times: dict[int, list[float]] = {1: [], args.batch: []}
        for _ in range(args.repeats):
            for batch in times:
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                started = time.perf_counter()
                caption_images(images, encoders, cfg.replace(batch_size=batch))
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[batch].append(time.perf_counter() - started)
    rates = {batch: args.images / statistics.median(seconds) for batch, seconds in times.items()}
    print(f"model {args.size} on {args.device}, torch threads {torch.get_num_threads()}, {args.images} images "
          f"256x320, {args.repeats} alternating runs; vocabulary ({len(load_vocabulary(cfg.vocabularies).phrases)} "
          f"phrases) encoded once in {vocab_seconds:.2f} s")  # fmt: skip
    for batch, rate in rates.items():
        print(f"batch {batch:4d}: {rate:8.1f} images/s (median of {args.repeats})")
    print(f"ratio batch {args.batch} / batch 1: {rates[args.batch] / rates[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
