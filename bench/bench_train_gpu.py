"""GPU bench at real size: MFU of our trainer core on full-size SD1.5 and SDXL UNets, with and without `compile`,
and the speed against ComfyUI's built-in TrainLoraNode (SD1.5).

Models are built with ComfyUI's own classes (SD1.5: model_channels 320, channel_mult 1,2,4,4, 859.5 M parameters;
SDXL: ComfyUI's SDXL unet_config, 2.57 B), seeded random weights made tensor by tensor on the device in bf16, loaded
through ComfyUI's UNet loader path (which must detect SD15 / SDXL), and trained on random latents and text-encoder
outputs of the real widths (speed does not depend on the values): bf16 autocast, rank 16 LoRA on the attention
targets, AdamW. Cases: `sd15` = 512 px (64x64 latents), batch 4; `sdxl` = 1024 px (128x128 latents), batch 1
(context [1, 77, 2048] + pooled 1280, size conditioning from the model's extra_conds). Each peer runs in its own
process (clean peak memory). Reported per case and peer: steps/s, images/s, peak VRAM (max_memory_allocated), the
FLOPs of one training step (torch.utils.flop_counter.FlopCounterMode over one eager step: forward, backward,
optimizer; recomputation included when checkpointing; the compiled peer does the same work, so it is counted
eagerly too), achieved TFLOP/s and MFU = achieved / the accelerator's dense bf16 peak (H200: ~990 TFLOP/s;
--peak-tflops). Target: >= 40% MFU on SD1.5.
Per-step time: ours is the median interval between step timestamps after `--warmup` steps (robust to stalls; the
compiled peer compiles during its first steps, inside the warm-up); the built-in node, which reports no steps, is
(T(2n) - T(n)) / n, so its set-up cancels.

    python bench/bench_train_gpu.py [--cases sd15,sdxl] [--peers ours,ours_compile] [--steps 30]
    python bench/bench_train_gpu.py --cases sd15 --peers ours,ours_compile,ours_ckpt,builtin
    python bench/bench_train_gpu.py --tiny --cpu      # smoke check: tiny UNets, 64 px, a few steps, on the CPU

Run it with a Python that has torch and ComfyUI's requirements; ComfyUI is found from --comfyui, $COMFYUI_PATH,
or this repo's dev host (lora_train.dev.host_builder).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lora_train.dev.full_models import FULL_SD15_UNET, FULL_SDXL_UNET  # noqa: E402  (after the repo is importable)
from lora_train.dev.tiny_models import TINY_SD15_UNET, TINY_SDXL_UNET  # noqa: E402

# Per case: UNet config (full, tiny), sizes (full, tiny), text-encoder output widths, the family ComfyUI detects.
CASES = {
    "sd15": {
        "unet": (FULL_SD15_UNET, TINY_SD15_UNET),
        "sizes": ({"resolution": 512, "batch": 4, "rank": 16}, {"resolution": 64, "batch": 2, "rank": 4}),
        "context": 768,
        "pooled": None,
        "family": "SD15",
    },
    "sdxl": {
        "unet": (FULL_SDXL_UNET, TINY_SDXL_UNET),
        "sizes": ({"resolution": 1024, "batch": 1, "rank": 16}, {"resolution": 64, "batch": 1, "rank": 4}),
        "context": 2048,
        "pooled": 1280,
        "family": "SDXL",
    },
}
PEERS = {
    "ours": {"network": "lora", "targets": "attention"},
    "ours_compile": {"network": "lora", "targets": "attention", "compile": True},
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
def random_state(module: Any, dtype: Any, device: Any) -> dict[str, Any]:
    """Seeded random weights for `module`'s state dict, made on `device` tensor by tensor in the stored `dtype`
    (fp8 included): fan-in scaled normals, zero biases, unit norm scales. One generator per tensor name, so a
    tensor's values do not depend on the others (nor on the model's depth)."""
    import torch

    state = {}
    for name, shape in ((n, t.shape) for n, t in module.state_dict().items()):
        if name.endswith("bias"):
            value = torch.zeros(shape, device=device)
        elif len(shape) <= 1:
            value = torch.ones(shape, device=device)
        else:
            generator = torch.Generator(device).manual_seed(SEED * 2**32 + zlib.crc32(name.encode()))
            value = torch.randn(shape, generator=generator, device=device).mul_(1 / math.sqrt(math.prod(shape[1:])))
        state[name] = value.to(dtype)
    return state


def build_model(case: dict, tiny: bool, device):
    """A ModelPatcher of a seeded random UNet of the case, through ComfyUI's UNet loader path (bf16 weights made
    tensor by tensor on `device`: fan-in scaled normals, unit 1-D weights, zero biases)."""
    import comfy.ops
    import comfy.sd
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from lora_train.host.comfy_adapter import model_family

    config = case["unet"][1 if tiny else 0]
    meta = UNetModel(**config, dtype=torch.bfloat16, device=torch.device("meta"),
                     operations=comfy.ops.disable_weight_init)  # fmt: skip
    state = random_state(meta, torch.bfloat16, device)
    model = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": torch.bfloat16})
    state.clear()
    if model is None or model_family(model) != case["family"]:
        found = "nothing" if model is None else model_family(model)
        raise RuntimeError(f"ComfyUI detected the generated {case['family']} UNet as {found}")
    return model


def random_inputs(case: dict, count: int, resolution: int):
    """`count` latents [1, 4, h, w] and text-encoder outputs (context [1, 77, width], pooled) from a fixed seed."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    side = resolution // 8
    latents = [torch.randn(1, 4, side, side, generator=generator) for _ in range(count)]
    texts = []
    for _ in range(count):
        text = {"cross_attn": torch.randn(1, TOKENS, case["context"], generator=generator)}
        if case["pooled"]:
            text["pooled_output"] = torch.randn(1, case["pooled"], generator=generator)
        texts.append(text)
    return latents, texts


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


def worker_ours(case: dict, settings: dict, sizes: dict, steps: int, warmup: int) -> dict:
    """Our loop (lora_train.training.train_lora) through ComfyHost's session, on random encoded inputs."""
    import torch

    from lora_train.dataset import dataset_from_images
    from lora_train.host.comfy_adapter import ComfyHost
    from lora_train.training import Example, TrainConfig, train_lora

    model, device = _load(case, sizes)
    latents, texts = random_inputs(case, 2 * sizes["batch"], sizes["resolution"])

    class BenchHost(ComfyHost):
        """ComfyHost without CLIP/VAE: the 'encoded' dataset is random latents and text-encoder outputs."""

        def __init__(self, *args):
            super().__init__(*args)
            self.stamps: list[tuple[int, float]] = []

        def encode_examples(self, dataset, cfg, cache_dir=None):
            empty = {k: torch.zeros_like(v) for k, v in texts[0].items()}
            with torch.inference_mode(False):
                return [Example(lat[0].clone(), self.model_conds(text, lat), self.model_conds(empty, lat))
                        for lat, text in zip(latents, texts, strict=True)]  # fmt: skip

        def report(self, progress) -> None:
            self.stamps.append((progress.step, time.perf_counter()))

    dataset = dataset_from_images(torch.zeros(1, 8, 8, 3), ["bench"])
    values = bench_settings(sizes, **settings)
    sentinel = object()  # ComfyHost wants a CLIP and a VAE; BenchHost never uses them
    with tempfile.TemporaryDirectory() as out, torch.inference_mode():
        one_step = TrainConfig.from_dict(values | {"steps": 1, "compile": False})  # the same work, counted eagerly
        flops = _flops(lambda: train_lora(one_step, dataset, BenchHost(model, sentinel, sentinel), out))
        _reset_peak(device)
        host = BenchHost(model, sentinel, sentinel)
        train_lora(TrainConfig.from_dict(values | {"steps": steps}), dataset, host, out)
    intervals = [b - a for (_, a), (_, b) in zip(host.stamps[warmup - 1 :], host.stamps[warmup:], strict=False)]
    return {"s_per_step": statistics.median(intervals), "flops": flops, **_memory(device)}


def worker_builtin(case: dict, sizes: dict, steps: int) -> dict:
    """ComfyUI's TrainLoraNode (LoRA, bf16 training dtype, fp32 LoRA weights) on the same model and inputs."""
    import torch
    from comfy_extras.nodes_train import TrainLoraNode

    model, device = _load(case, sizes)
    latents, texts = random_inputs(case, 2 * sizes["batch"], sizes["resolution"])
    positive = [[[text["cross_attn"], {"pooled_output": text.get("pooled_output")}]] for text in texts]

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


def _load(case: dict, sizes: dict):
    import comfy.model_management as mm

    device = mm.get_torch_device()
    model = build_model(case, sizes["tiny"], device)
    mm.load_models_gpu([model])
    return model, device


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _memory(device) -> dict:
    import torch

    peak_vram = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"peak_vram_gib": peak_vram, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


# ---- driver ------------------------------------------------------------------------------------------------------
def run_worker(case: str, name: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--cases", case, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--comfyui", args.comfyui]  # fmt: skip
    command += (["--tiny"] if args.tiny else []) + (["--cpu"] if args.cpu else [])
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        return {"error": f"worker {case}/{name} failed: {out.stderr.strip().splitlines()[-1:]}", "stderr": out.stderr}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _comfyui(explicit: str | None) -> str:
    if explicit or os.environ.get("COMFYUI_PATH"):
        return explicit or os.environ["COMFYUI_PATH"]
    from lora_train.dev import host_builder

    return str(host_builder.setup_host().comfyui)


def case_sizes(case: str, tiny: bool) -> dict:
    return {**CASES[case]["sizes"][1 if tiny else 0], "tiny": tiny}


def report(results: dict[tuple[str, str], dict], args: argparse.Namespace) -> None:
    print(f"\n{'tiny' if args.tiny else 'full-size'} UNets, bf16 autocast, rank-16 LoRA on attention, AdamW, "
          f"{args.steps} steps (median after {args.warmup}); MFU vs {args.peak_tflops:.0f} TFLOP/s bf16")  # fmt: skip
    header = f"{'case':<6} {'px':>5} {'batch':>5} {'peer':<13} {'steps/s':>8} {'img/s':>7} {'GFLOP/step':>11} "
    print(header + f"{'TFLOP/s':>8} {'MFU %':>6} {'peak VRAM GiB':>14} {'peak RSS GiB':>13} {'x builtin':>10}")
    for (case, name), result in results.items():
        sizes = case_sizes(case, args.tiny)
        if "error" in result:
            print(f"{case:<6} {sizes['resolution']:>5} {sizes['batch']:>5} {name:<13} ERROR {result['error']}")
            continue
        step = result["s_per_step"]
        tflops = result["flops"] / step / 1e12
        vram = f"{result['peak_vram_gib']:.2f}" if result["peak_vram_gib"] is not None else "n/a"
        base = results.get((case, "builtin"), {}).get("s_per_step")
        ratio = f"{base / step:.2f}" if base else "n/a"
        print(f"{case:<6} {sizes['resolution']:>5} {sizes['batch']:>5} {name:<13} {1 / step:>8.2f} "
              f"{sizes['batch'] / step:>7.2f} {result['flops'] / 1e9:>11.1f} {tflops:>8.3f} "
              f"{100 * tflops / args.peak_tflops:>6.2f} {vram:>14} {result['peak_rss_gib']:>13.2f} "
              f"{ratio:>10}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="sd15,sdxl", help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--peers", default="ours,ours_compile", help=f"comma list of {', '.join(PEERS)}")
    parser.add_argument("--tiny", action="store_true", help="tiny UNets at 64 px (smoke check)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny: the smoke check)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30, or 4 with --tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 5, or 2 with --tiny)")
    parser.add_argument("--peak-tflops", type=float, default=990.0, help="dense bf16 peak for MFU (H200: ~990)")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, else this repo's dev host)")
    parser.add_argument("--worker", choices=list(PEERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (4 if args.tiny else 30)
    args.warmup = args.warmup or (2 if args.tiny else 5)
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")
    cases = list(dict.fromkeys(c.strip() for c in args.cases.split(",") if c.strip()))
    peers = list(dict.fromkeys(p.strip() for p in args.peers.split(",") if p.strip()))
    unknown = [c for c in cases if c not in CASES] + [p for p in peers if p not in PEERS]
    if unknown or not cases or not peers:
        parser.error(f"unknown case/peer {', '.join(unknown) or '(none)'}: cases {', '.join(CASES)}; "
                     f"peers {', '.join(PEERS)}")  # fmt: skip

    if args.worker:
        from lora_train.host.bootstrap import import_comfy

        import_comfy(args.comfyui, cpu=args.cpu or None)
        case, sizes = CASES[cases[0]], case_sizes(cases[0], args.tiny)
        settings = PEERS[args.worker]
        if settings is None:
            result = worker_builtin(case, sizes, args.steps)
        else:
            result = worker_ours(case, settings, sizes, args.steps, args.warmup)
        print(json.dumps(result))
        return 0

    args.comfyui = _comfyui(args.comfyui)
    results = {}
    for case in cases:
        for name in peers:
            results[(case, name)] = run_worker(case, name, args)
            shown = {k: v for k, v in results[(case, name)].items() if k != "stderr"}
            print(f"{case} {name}: {json.dumps(shown)}", flush=True)
    report(results, args)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
