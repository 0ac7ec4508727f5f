"""GPU bench at real size: our trainer core vs ComfyUI's built-in TrainLoraNode on a full-size SD1.5 UNet.

The UNet is built here with ComfyUI's own classes and seeded random weights (SD1.5 shape: model_channels 320,
channel_mult 1,2,4,4, two ResBlocks per level, one transformer per attention block, middle block; 859.5 M
parameters), loaded through ComfyUI's UNet loader path, and trained on random latents and text embeddings (speed
does not depend on the values): bf16, 512 px (64x64 latents), batch 4, rank 16, AdamW. Each peer runs in its own
process (clean peak memory). Reported per peer: steps/s, images/s, peak VRAM (torch.cuda.max_memory_allocated),
FLOPs of one step (torch.utils.flop_counter.FlopCounterMode: recomputation included when checkpointing), achieved
TFLOP/s and MFU against the accelerator's dense bf16 peak (H200: ~990 TFLOP/s; --peak-tflops to change).
Per-step time: ours is the median interval between step timestamps after `--warmup` steps (robust to stalls);
the built-in node, which reports no steps, is (T(2n) - T(n)) / n, so its set-up cancels.

    python bench/bench_train_gpu.py [--steps 30] [--peers ours,ours_ckpt,builtin]
    python bench/bench_train_gpu.py --tiny --cpu      # smoke check: tiny UNet, 64 px, a few steps, on the CPU

Run it with a Python that has torch and ComfyUI's requirements; ComfyUI is found from --comfyui, $COMFYUI_PATH,
or this repo's dev host (lora_train.dev.host_builder).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lora_train.dev.tiny_models import TINY_SD15_UNET  # noqa: E402  (after the repo is importable)

# SD1.5's UNet in ComfyUI's UNetModel arguments (the tiny one's, at full depth): attention at the first three
# levels, none at the fourth; UNetModel pops transformer_depth_output from the end.
FULL_SD15_UNET = {
    **TINY_SD15_UNET,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
}
# Settings per mode: (resolution px, batch, rank, steps default).
FULL = {"resolution": 512, "batch": 4, "rank": 16}
TINY = {"resolution": 64, "batch": 2, "rank": 4}
PEERS = {
    "ours": {"network": "lora", "targets": "attention"},
    "ours_ckpt": {"network": "lora", "targets": "attention", "gradient_checkpointing": True},
    "builtin": None,
}
SEED, LR, TOKENS = 0, 1e-4, 77


def bench_settings(sizes: dict, **settings) -> dict:
    """TrainConfig values of a bench run: the mode's sizes, bf16, a loss read every step."""
    return {
        "rank": sizes["rank"],
        "alpha": sizes["rank"],
        "batch_size": sizes["batch"],
        "resolution": sizes["resolution"],
        "learning_rate": LR,
        "seed": SEED,
        "mixed_precision": "bf16",
        "log_every": 1,
        "output_name": "bench",
        **settings,
    }


# ---- the model ---------------------------------------------------------------------------------------------------
def build_model(tiny: bool, device_is_cpu: bool):
    """A ModelPatcher of a seeded random SD1.5-shaped UNet, through ComfyUI's UNet loader path (bf16 weights)."""
    import comfy.ops
    import comfy.sd
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from lora_train.dev.tiny_models import _init_

    config = TINY_SD15_UNET if tiny else FULL_SD15_UNET
    unet = UNetModel(**config, operations=comfy.ops.disable_weight_init)
    _init_(unet, torch.Generator().manual_seed(SEED))
    state = {k: v.to(torch.bfloat16) for k, v in unet.state_dict().items()}
    del unet
    model = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": torch.bfloat16})
    if model is None:
        raise RuntimeError("ComfyUI did not recognise the generated UNet as a diffusion model")
    return model


def random_inputs(count: int, resolution: int):
    """`count` latents [1, 4, h, w] and text embeddings [1, 77, 768] from a fixed seed."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    side = resolution // 8
    latents = [torch.randn(1, 4, side, side, generator=generator) for _ in range(count)]
    contexts = [torch.randn(1, TOKENS, 768, generator=generator) for _ in range(count)]
    return latents, contexts


# ---- peers -------------------------------------------------------------------------------------------------------
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flops(run_one_step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run_one_step()
    return float(counter.get_total_flops())


def worker_ours(settings: dict, sizes: dict, steps: int, warmup: int) -> dict:
    """Our loop (lora_train.training.train_lora) through ComfyHost's session, on random encoded inputs."""
    import torch

    from lora_train.dataset import dataset_from_images
    from lora_train.host.comfy_adapter import ComfyHost
    from lora_train.training import Example, TrainConfig, train_lora

    model, device = _load(sizes)
    latents, contexts = random_inputs(2 * sizes["batch"], sizes["resolution"])

    class BenchHost(ComfyHost):
        """ComfyHost without CLIP/VAE: the 'encoded' dataset is random latents and embeddings."""

        def __init__(self, *args):
            super().__init__(*args)
            self.stamps: list[tuple[int, float]] = []

        def encode_examples(self, dataset, cfg, cache_dir=None):
            with torch.inference_mode(False):
                return [
                    Example(lat[0].clone(), self.model_conds({"cross_attn": ctx}, lat), self.model_conds(
                        {"cross_attn": torch.zeros_like(ctx)}, lat))
                    for lat, ctx in zip(latents, contexts, strict=True)
                ]  # fmt: skip

        def report(self, progress) -> None:
            self.stamps.append((progress.step, time.perf_counter()))

    dataset = dataset_from_images(torch.zeros(1, 8, 8, 3), ["bench"])
    values = bench_settings(sizes, **settings)
    sentinel = object()  # ComfyHost wants a CLIP and a VAE; BenchHost never uses them
    with tempfile.TemporaryDirectory() as out, torch.inference_mode():
        one_step = TrainConfig.from_dict(values | {"steps": 1})
        flops = _flops(lambda: train_lora(one_step, dataset, BenchHost(model, sentinel, sentinel), out))
        _reset_peak(device)
        host = BenchHost(model, sentinel, sentinel)
        train_lora(TrainConfig.from_dict(values | {"steps": steps}), dataset, host, out)
    intervals = [b - a for (_, a), (_, b) in zip(host.stamps[warmup - 1 :], host.stamps[warmup:], strict=False)]
    return {"s_per_step": statistics.median(intervals), "flops": flops, **_memory(device)}


def worker_builtin(sizes: dict, steps: int) -> dict:
    """ComfyUI's TrainLoraNode (LoRA, bf16 training dtype, fp32 LoRA weights) on the same model and inputs."""
    import torch
    from comfy_extras.nodes_train import TrainLoraNode

    model, device = _load(sizes)
    latents, contexts = random_inputs(2 * sizes["batch"], sizes["resolution"])
    positive = [[[ctx, {"pooled_output": None}]] for ctx in contexts]

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            TrainLoraNode.execute(
                model=[model], latents=[{"samples": lat} for lat in latents], positive=positive,
                batch_size=[sizes["batch"]], steps=[n], grad_accumulation_steps=[1], learning_rate=[LR],
                rank=[sizes["rank"]], optimizer=["AdamW"], loss_function=["MSE"], seed=[SEED],
                training_dtype=["bf16"], lora_dtype=["fp32"], algorithm=["LoRA"], gradient_checkpointing=[False],
                existing_lora=["[None]"],
            )  # fmt: skip
        _sync(device)
        return time.perf_counter() - start

    flops = _flops(lambda: run(1))
    run(max(1, steps // 4))  # warm-up (kernel selection, allocator)
    _reset_peak(device)
    short, long = run(steps), run(2 * steps)
    return {"s_per_step": (long - short) / steps, "flops": flops, **_memory(device)}


def _load(sizes: dict):
    import comfy.model_management as mm

    model = build_model(sizes["tiny"], sizes["cpu"])
    mm.load_models_gpu([model])
    return model, mm.get_torch_device()


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _memory(device) -> dict:
    import torch

    peak_vram = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"peak_vram_gib": peak_vram, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


# ---- driver ------------------------------------------------------------------------------------------------------
def run_worker(name: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--comfyui", args.comfyui] + (["--tiny"] if args.tiny else []) + (["--cpu"] if args.cpu else [])
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _comfyui(explicit: str | None) -> str:
    if explicit or os.environ.get("COMFYUI_PATH"):
        return explicit or os.environ["COMFYUI_PATH"]
    from lora_train.dev import host_builder

    return str(host_builder.setup_host().comfyui)


def report(results: dict[str, dict], sizes: dict, args: argparse.Namespace) -> None:
    images = sizes["batch"]
    print(
        f"\n{'tiny' if args.tiny else 'full-size'} SD1.5 UNet, bf16, {sizes['resolution']} px, batch {images}, "
        f"rank {sizes['rank']}, AdamW, {args.steps} steps; MFU vs {args.peak_tflops:.0f} TFLOP/s dense bf16"
    )
    header = f"{'peer':<10} {'steps/s':>8} {'img/s':>8} {'GFLOP/step':>11} {'TFLOP/s':>8} {'MFU %':>6} "
    print(header + f"{'peak VRAM GiB':>14} {'peak RSS GiB':>13} {'speed x builtin':>16}")
    base = results.get("builtin", {}).get("s_per_step")
    for name, result in results.items():
        step = result["s_per_step"]
        tflops = result["flops"] / step / 1e12
        vram = f"{result['peak_vram_gib']:.2f}" if result["peak_vram_gib"] is not None else "n/a"
        ratio = f"{base / step:.2f}" if base else "n/a"
        print(
            f"{name:<10} {1 / step:>8.2f} {images / step:>8.2f} {result['flops'] / 1e9:>11.1f} {tflops:>8.3f} "
            f"{100 * tflops / args.peak_tflops:>6.2f} {vram:>14} {result['peak_rss_gib']:>13.2f} {ratio:>16}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny UNet at 64 px, batch 2, rank 4 (smoke check)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny: the smoke check)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30, or 4 with --tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 5, or 1 with --tiny)")
    parser.add_argument("--peers", default="ours,ours_ckpt,builtin", help=f"comma list of {', '.join(PEERS)}")
    parser.add_argument("--peak-tflops", type=float, default=990.0, help="dense bf16 peak for MFU (H200: ~990)")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, else this repo's dev host)")
    parser.add_argument("--worker", choices=list(PEERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (4 if args.tiny else 30)
    args.warmup = args.warmup or (1 if args.tiny else 5)
    sizes = {**(TINY if args.tiny else FULL), "tiny": args.tiny, "cpu": args.cpu}
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")

    if args.worker:
        from lora_train.host.bootstrap import import_comfy

        import_comfy(args.comfyui, cpu=args.cpu or None)
        settings = PEERS[args.worker]
        if settings is None:
            result = worker_builtin(sizes, args.steps)
        else:
            result = worker_ours(settings, sizes, args.steps, args.warmup)
        print(json.dumps(result))
        return 0

    args.comfyui = _comfyui(args.comfyui)
    peers = list(dict.fromkeys(p.strip() for p in args.peers.split(",") if p.strip()))
    unknown = [p for p in peers if p not in PEERS]
    if unknown or not peers:
        parser.error(f"unknown peer(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(PEERS)}")
    results = {}
    for name in peers:
        results[name] = run_worker(name, args)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    report(results, sizes, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
