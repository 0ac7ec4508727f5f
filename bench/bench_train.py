"""Speed and memory: our Train LoRA core vs ComfyUI's built-in TrainLoraNode on the same tiny model, in one run.

Each measurement is a fresh worker process (so peak RSS is its own). Per-step time is (T(long) - T(short)) /
(long - short) steps, so model loading and encoding cancel out. Peers run alternately, several rounds; medians and
ratios are printed. Settings are the same for every peer: batch 2, 64 px, rank 8, fp32, AdamW, no checkpointing.

    python bench/bench_train.py [--rounds 3] [--short 10] [--long 40]   # run from the repo root (any python3)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PEERS = {
    "ours (attention, kohya default)": {"network": "lora", "targets": "attention"},
    "ours (all layers, locon)": {"network": "locon", "targets": "all_linear"},
    "ours (all layers, locon, checkpointing)": {
        "network": "locon",
        "targets": "all_linear",
        "gradient_checkpointing": True,
    },
    "builtin TrainLoraNode": None,
}
BATCH, RANK, RESOLUTION, LR, SEED = 2, 8, 64, 1e-4, 0


class RssPeak:
    """Peak resident memory above the level at start, sampled every 5 ms while training runs (process-wide
    ru_maxrss would be dominated by checkpoint loading, identical for every peer)."""

    def __enter__(self) -> RssPeak:
        import threading

        import psutil

        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def _load(comfyui: str, dataset_dir: str):
    from lora_train.host.bootstrap import import_comfy

    import_comfy(comfyui, cpu=True)
    import comfy.sd
    import torch

    from lora_train.dataset.loading import load_dataset
    from lora_train.dev import host_builder
    from lora_train.dev.tiny_models import TINY_SD15_NAME

    checkpoint = host_builder.models_dir() / "checkpoints" / TINY_SD15_NAME
    with torch.inference_mode():
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(checkpoint))[:3]
    return model, clip, vae, load_dataset(dataset_dir)


def worker_ours(comfyui: str, dataset_dir: str, steps: int, settings: dict) -> tuple[float, float]:
    import tempfile

    import torch

    from lora_train.host.comfy_adapter import ComfyHost
    from lora_train.training import TrainConfig, train_lora

    model, clip, vae, dataset = _load(comfyui, dataset_dir)
    cfg = TrainConfig.from_dict(
        {
            "rank": RANK,
            "alpha": RANK,
            "steps": steps,
            "batch_size": BATCH,
            "resolution": RESOLUTION,
            "learning_rate": LR,
            "seed": SEED,
            "log_every": steps,
            "output_name": "bench",
            **settings,
        }
    )
    host = ComfyHost(model, clip, vae)
    with torch.inference_mode(), tempfile.TemporaryDirectory() as out:
        examples = host.encode_examples(dataset, cfg)  # encoded before the timed span, as for the built-in node
        host.encode_examples = lambda *_: examples
        with RssPeak() as memory:
            start = time.perf_counter()
            train_lora(cfg, dataset, host, out)
            seconds = time.perf_counter() - start
    return seconds, memory.extra_mb


def _with_schema_defaults(node, inputs: dict) -> dict:
    """`inputs` plus the schema default (as a one-item list: the node takes lists) of every input not given, so the
    call fits hosts whose node gained inputs (0.33: quantized_backward, offloading, bucket_mode, ...)."""
    for item in node.define_schema().inputs:
        if item.id not in inputs and getattr(item, "default", None) is not None:
            inputs[item.id] = [item.default]
    return inputs


def worker_builtin(comfyui: str, dataset_dir: str, steps: int) -> tuple[float, float]:
    import numpy as np
    import torch

    model, clip, vae, dataset = _load(comfyui, dataset_dir)
    from comfy_extras.nodes_train import TrainLoraNode

    with torch.inference_mode():
        latents, positive = [], []
        for item in dataset.items:
            pixels = torch.from_numpy(np.asarray(item.load(), dtype=np.float32) / 255.0)[None]
            latents.append({"samples": vae.encode(pixels)})
            cond, pooled = clip.encode_from_tokens(clip.tokenize(item.caption), return_pooled=True)
            positive.append([[cond, {"pooled_output": pooled}]])
        memory = RssPeak().__enter__()
        start = time.perf_counter()  # encoding stays outside the timed span, as for ours
        TrainLoraNode.execute(
            **_with_schema_defaults(
                TrainLoraNode,
                {
                    "model": [model],
                    "latents": latents,
                    "positive": positive,
                    "batch_size": [BATCH],
                    "steps": [steps],
                    "grad_accumulation_steps": [1],
                    "learning_rate": [LR],
                    "rank": [RANK],
                    "optimizer": ["AdamW"],
                    "loss_function": ["MSE"],
                    "seed": [SEED],
                    "training_dtype": ["fp32"],
                    "lora_dtype": ["fp32"],
                    "algorithm": ["LoRA"],
                    "gradient_checkpointing": [False],
                    "existing_lora": ["[None]"],
                },
            )
        )
        seconds = time.perf_counter() - start
        memory.__exit__()
    return seconds, memory.extra_mb


def run_worker(name: str, steps: int, comfyui: str, python: str, dataset_dir: str) -> tuple[float, float]:
    """(seconds, peak RSS MB above the pre-training level) of one worker process."""
    out = subprocess.run(
        [python, __file__, "--worker", name, "--steps", str(steps), "--comfyui", comfyui, "--dataset", dataset_dir],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["seconds"], result["peak_rss_mb"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--short", type=int, default=10)
    parser.add_argument("--long", type=int, default=40)
    parser.add_argument("--worker")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--comfyui")
    parser.add_argument("--dataset")
    args = parser.parse_args()
    if args.worker:
        settings = PEERS[args.worker]
        if settings is None:
            seconds, extra_mb = worker_builtin(args.comfyui, args.dataset, args.steps)
        else:
            seconds, extra_mb = worker_ours(args.comfyui, args.dataset, args.steps, settings)
        print(json.dumps({"seconds": seconds, "peak_rss_mb": extra_mb}))
        return 0

    from lora_train.dev import host_builder

    host = host_builder.setup_host()
    if Path(sys.executable).absolute() != host.python.absolute():  # run the orchestrator in the host venv too
        os.execv(str(host.python), [str(host.python), __file__, *sys.argv[1:]])
    from lora_train.dev.synthetic import write_style_dataset

    if not (host_builder.models_dir() / "checkpoints").is_dir():
        subprocess.run([sys.executable, "tests/run.py", "tests/host/test_wiring.py", "-q"], cwd=REPO, check=True)
    dataset_dir = str(write_style_dataset(host_builder.cache_dir() / "bench_dataset"))
    per_step: dict[str, list[float]] = {name: [] for name in PEERS}
    peaks: dict[str, list[float]] = {name: [] for name in PEERS}
    for round_index in range(args.rounds):
        for name in PEERS:  # alternate peers inside each round
            short, _ = run_worker(name, args.short, str(host.comfyui), str(host.python), dataset_dir)
            long, peak = run_worker(name, args.long, str(host.comfyui), str(host.python), dataset_dir)
            per_step[name].append((long - short) / (args.long - args.short))
            peaks[name].append(peak)
            print(
                f"round {round_index + 1}: {name}: {per_step[name][-1]:.4f} s/step, training memory +{peak:.0f} MB",
                flush=True,
            )
    builtin = "builtin TrainLoraNode"
    base_step, base_peak = statistics.median(per_step[builtin]), statistics.median(peaks[builtin])
    print(
        f"\nbatch {BATCH}, {RESOLUTION} px, rank {RANK}, fp32, AdamW, {os.cpu_count()} CPU threads; median of "
        f"{args.rounds} rounds; per-step = (T({args.long}) - T({args.short})) / {args.long - args.short}"
    )
    print(f"{'peer':<42} {'s/step':>8} {'steps/s':>8} {'+MB':>8} {'speed x':>8} {'memory x':>9}")
    for name in PEERS:
        step, peak = statistics.median(per_step[name]), statistics.median(peaks[name])
        print(
            f"{name:<42} {step:>8.4f} {1 / step:>8.2f} {peak:>8.0f} {base_step / step:>8.2f} {peak / base_peak:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
