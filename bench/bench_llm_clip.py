"""Train LLM LoRA on a Qwen3-0.6B-family text encoder as ComfyUI builds it: load time, seconds per training step,
Generate Text speed with the LoRA applied.

    python bench/bench_llm_clip.py [--size tiny|full] [--steps 4] [--gen 8] [--gpu]

`tiny` is the tests' 2-block encoder; `full` has Qwen3-0.6B's real depth and widths (596 M parameters, random
weights, fp32 on the CPU; 2.4 GB). Per-step time is (T(last step) - T(first step)) / (steps - 1): the first step also
pays for making ComfyUI's inference-mode weights trainable (one copy of them). Runs inside the pinned 0.33.0 host venv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FULL = {"num_hidden_layers": 28, "intermediate_size": 3072, "num_attention_heads": 16, "num_key_value_heads": 8}
EXAMPLES = [
    {"instruction": "fox", "output": "The quick brown fox jumps."},
    {"instruction": "cat", "output": "A sleepy cat naps."},
    {"instruction": "owl", "output": "Owls hoot at night."},
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--gen", type=int, default=8, help="tokens Generate Text produces at most")
    parser.add_argument("--gpu", action="store_true", help="let ComfyUI pick the GPU (default: CPU)")
    args = parser.parse_args()

    from lora_train.dev import host_builder

    host = host_builder.setup_host()
    if Path(sys.executable).absolute() != host.python.absolute():  # run inside the host venv
        os.execv(str(host.python), [str(host.python), __file__, *sys.argv[1:]])
    from lora_train.host.bootstrap import import_comfy

    import_comfy(host.comfyui, cpu=not args.gpu)
    import torch
    from comfy_extras.nodes_textgen import TextGenerate

    from lora_train.dev.tiny_llm import load_tiny_qwen3_clip
    from lora_train.host.llm_train import apply_clip_lora, train_clip_lora
    from lora_train.llm import ClipLoraConfig, load_pairs

    start = time.perf_counter()
    clip = load_tiny_qwen3_clip(config=FULL if args.size == "full" else None)
    params = sum(p.numel() for p in clip.cond_stage_model.parameters()) / 1e6
    print(f"{args.size}: {params:.0f} M parameters, loaded by ComfyUI in {time.perf_counter() - start:.1f} s")
    cfg = ClipLoraConfig.from_dict({"steps": max(2, args.steps), "learning_rate": 1e-3, "rank": 16, "alpha": 16,
                                    "batch_size": 3, "output_name": "bench_llm"})  # fmt: skip
    marks: list[float] = []
    data = load_pairs("", "\n".join(json.dumps(e) for e in EXAMPLES))
    with tempfile.TemporaryDirectory() as out, torch.inference_mode():
        result = train_clip_lora(clip, data, cfg, Path(out), report=lambda p: marks.append(p["elapsed_s"]))
        per_step = (marks[-1] - marks[0]) / (len(marks) - 1)
        losses = ", ".join(f"{loss:.3f}" for _, loss in result.loss_history)
        print(f"training: first step {marks[0]:.1f} s, then {per_step:.2f} s/step (batch 3); loss {losses}")
        clip_out = apply_clip_lora(clip, result.tensors)
        start = time.perf_counter()
        text = TextGenerate.execute(clip_out, "fox", args.gen, {"sampling_mode": "off"}).args[0]
    print(f"Generate Text with the LoRA: {time.perf_counter() - start:.1f} s for {text!r} (<= {args.gen} tokens)")
    print(f"{os.cpu_count()} CPU threads, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
