"""GPU memory bench of the big families: SDXL and Flux dev (fp8 base weights) LoRA training at 1024 px, our core.

What it measures, per case, each in its own process (clean peak memory): peak VRAM of a whole training run
(torch.cuda.max_memory_allocated, and max_memory_reserved beside it, in GiB; model load, adapters, AdamW state and
activations included), the median seconds per step after `--warmup` steps, the stored weight dtype of the base
model while it trains, and the adapters' dtype. Targets (a 12 GB / 24 GB card holds 12 / 24 GiB): SDXL LoRA
<= 12 GiB, Flux LoRA with an fp8 base <= 24 GiB, and <= 12 GiB with `blocks_to_swap` on a 12 GiB card.

- `sdxl`: a full-size SDXL UNet (ComfyUI's SDXL unet_config: model_channels 320, channel_mult 1,2,4, transformer
  depths 0,0,2,2,10,10, middle 10, context 2048, adm 2816; 2.57 B parameters), bf16 weights.
- `flux_fp8`: a full-size Flux dev (hidden 3072, 19 double + 38 single blocks, context 4096, vec 768, guidance
  embedding; 11.9 B parameters) stored as float8_e4m3fn, as UNETLoader's weight_dtype fp8_e4m3fn loads it
  (`model_options={"dtype": torch.float8_e4m3fn}`): ComfyUI keeps the fp8 weights and casts each layer to bf16
  as it runs. `flux_bf16` (not run by default) is the same model with bf16 weights, for comparison.
- `flux_fp8_swap`: `flux_fp8` on an emulated 12 GiB card, with `blocks_to_swap` 38 (the single blocks live in CPU
  memory and are copied in while they run). The card is emulated twice over: torch may allocate at most 12 GiB
  (torch.cuda.set_per_process_memory_fraction; more is an out-of-memory error, as on the card), and ComfyUI's
  memory manager reserves the rest of the device, so it loads the model partially as it would on that card.
  Compare its peak with `flux_fp8`'s (the resident model): the memory both ways.

- 2026 families (`CASES_2026`, not run by default): `qwen_image_fp8` (Qwen-Image 20.4 B, fp8 base, 1024 px,
  target <= 24 GiB), `flux2_fp8` (Flux 2 dev 32 B, fp8 base, 1024 px, measured), `wan22_5b` (Wan 2.2 TI2V 5B,
  bf16, 480x832 x 49 frames = 13 latent frames, target <= 16 GiB); their text widths are the real encoders'
  (Qwen2.5-VL 3584, Mistral 15360, UMT5 4096) and no encoder is loaded.
    python bench/bench_families_gpu.py --cases qwen_image_fp8,flux2_fp8,wan22_5b   # needs ComfyUI 0.33 (Flux 2)

Weights are seeded random values made straight on the device, tensor by tensor, in the stored dtype (no file is
written), and go through ComfyUI's own UNet loader path (comfy.sd.load_diffusion_model_state_dict: detection,
dtype choice, manual-cast ops), which must detect them as SDXL / Flux. Training is lora_train.training.train_lora
through ComfyHost's session on random latents (128x128 at 1024 px; 4 channels SDXL, 16 Flux) and random
text-encoder outputs of the real widths (SDXL: context [1, 77, 2048] + pooled 1280, with the size conditioning
from the model's own extra_conds; Flux: T5-width context [1, 512, 4096] + pooled 768, guidance 1.0; no text
encoder is ever loaded): batch 1, rank 16 LoRA on the attention targets (fp32 adapters), mixed_precision bf16,
gradient checkpointing on, AdamW.

    python bench/bench_families_gpu.py --comfyui /path/to/ComfyUI            # on a GPU: sdxl, flux_fp8
    python bench/bench_families_gpu.py --cases sdxl,flux_fp8,flux_bf16 --steps 12 --warmup 3
    python bench/bench_families_gpu.py --tiny --cpu   # smoke check: the same path on tiny models, 64 px, CPU

Expected on one H200: ~2-4 minutes for the two default cases (per process: import, random weights and the load
~30-60 s, then 12 steps of ~0.3-0.5 s SDXL, ~1-2 s Flux; each case is stopped after --case-timeout, 270 s).
Run it with a Python that has torch and ComfyUI's requirements; ComfyUI is found from
--comfyui, $COMFYUI_PATH, or this repo's dev host (lora_train.dev.host_builder).
Prints one JSON line per case, then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field

import torch
from bench_train_gpu import SEED, _comfyui, _memory, _reset_peak, _sync, bench_settings, random_state

from lora_train.dev.full_models import FULL_SDXL_UNET
from lora_train.dev.tiny_families import TINY_FLUX2, TINY_WAN
from lora_train.dev.tiny_models import TINY_FLUX, TINY_SDXL_UNET, flux1_params

# FULL_SDXL_UNET: ComfyUI's model_detection SDXL config; the tiny one is the smallest ComfyUI still detects as SDXL.
# Flux dev at full depth with T5-XXL's width for the text input; the tiny one keeps the widths (3072 hidden,
# detection fixes it) with one double block and no single blocks (~0.4 B parameters).
FULL_FLUX = {**TINY_FLUX, "context_in_dim": 4096, "depth": 19, "depth_single_blocks": 38}
SMOKE_FLUX = {**TINY_FLUX, "context_in_dim": 4096}
WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
ADAPTER_DTYPE = torch.float32  # what AdapterSet.create makes (mixed_precision autocasts their matmuls to bf16)
RESULT = "BENCH_RESULT "


@dataclass(frozen=True)
class Case:
    """One model family, its stored weight dtype, and the text-encoder output it trains on."""

    family: str  # the model_config class ComfyUI must detect
    weight_dtype: str  # UNETLoader's weight_dtype (key of WEIGHT_DTYPES)
    context: int  # text-encoder output width
    pooled: int  # pooled vector width
    tokens: int  # text tokens at full size
    target_gib: float | None
    blocks_to_swap: int = 0  # transformer blocks kept in CPU memory (tiny models: at most the blocks they have)
    card_gib: float | None = None  # emulate a card of this size on a larger device


CASES = {
    "sdxl": Case("SDXL", "bf16", 2048, 1280, 77, 12.0),
    "flux_fp8": Case("Flux", "fp8_e4m3fn", 4096, 768, 512, 24.0),
    "flux_bf16": Case("Flux", "bf16", 4096, 768, 512, None),
    "flux_fp8_swap": Case("Flux", "fp8_e4m3fn", 4096, 768, 512, 12.0, blocks_to_swap=38, card_gib=12.0),
}
DEFAULT_CASES = "sdxl,flux_fp8,flux_fp8_swap"


@dataclass(frozen=True)
class ShapedCase(Case):
    """A 2026 family: its own module tree and latent layout ([C, (frames,) h, w], full size and --tiny)."""

    config: dict = field(default_factory=dict)  # the model class's arguments at full size
    tiny_config: dict = field(default_factory=dict)
    latent: tuple = ()
    tiny_latent: tuple = ()
    frames: int = 0  # video: frames of the clip the latent stands for


# Qwen-Image (20.4 B, 60 blocks of width 3072, Qwen2.5-VL text 3584 wide) with an fp8 base at 1024 px: <= 24 GiB.
# Flux 2 dev (32 B: width 6144, 8 double + 48 single blocks, Mistral text 15360 wide) with an fp8 base at 1024 px:
# measured, no target yet. Wan 2.2 TI2V 5B (width 3072, 30 blocks, 48-channel latents at 16x) in bf16 on a
# 480x832 x 49-frame clip (13 latent frames): <= 16 GiB. Text widths are the real encoders'; none is loaded.
CASES_2026 = {
    "qwen_image_fp8": ShapedCase(
        "QwenImage", "fp8_e4m3fn", 3584, 0, 256, 24.0, config={"num_layers": 60}, tiny_config={"num_layers": 1},
        latent=(16, 1, 128, 128), tiny_latent=(16, 1, 8, 8),
    ),
    "flux2_fp8": ShapedCase(
        "Flux2", "fp8_e4m3fn", 15360, 0, 512, None,
        config={**TINY_FLUX2, "hidden_size": 6144, "num_heads": 48, "depth": 8, "depth_single_blocks": 48,
                "context_in_dim": 15360},
        tiny_config={**TINY_FLUX2, "context_in_dim": 15360}, latent=(128, 64, 64), tiny_latent=(128, 4, 4),
    ),
    "wan22_5b": ShapedCase(
        "WAN22_T2V", "bf16", 4096, 0, 512, 16.0,
        config={**TINY_WAN, "dim": 3072, "ffn_dim": 14336, "num_heads": 24, "num_layers": 30, "in_dim": 48,
                "out_dim": 48},
        tiny_config={**TINY_WAN, "num_heads": 1, "in_dim": 48, "out_dim": 48}, latent=(48, 13, 30, 52),
        tiny_latent=(48, 2, 4, 4), frames=49,
    ),
}  # fmt: skip
CASES |= CASES_2026
FULL = {"resolution": 1024, "batch": 1, "rank": 16}
TINY = {"resolution": 64, "batch": 1, "rank": 16, "tokens": 16}


# ---- the model ---------------------------------------------------------------------------------------------------
def _architecture(case: Case, tiny: bool) -> torch.nn.Module:
    """The diffusion model's module tree on the meta device (shapes only, no memory)."""
    import comfy.ops

    ops, meta = comfy.ops.disable_weight_init, torch.device("meta")
    if isinstance(case, ShapedCase):
        return _architecture_2026(case, case.tiny_config if tiny else case.config, ops, meta)
    if case.family == "SDXL":
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        config = TINY_SDXL_UNET if tiny else FULL_SDXL_UNET
        return UNetModel(**config, dtype=torch.bfloat16, device=meta, operations=ops)
    from comfy.ldm.flux.model import Flux

    config = SMOKE_FLUX if tiny else FULL_FLUX
    return Flux(**flux1_params(config, guidance=True), dtype=torch.bfloat16, device=meta, operations=ops)


def _architecture_2026(case: ShapedCase, config: dict, ops, meta: torch.device) -> torch.nn.Module:
    if case.family == "QwenImage":
        from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

        return QwenImageTransformer2DModel(**config, dtype=torch.bfloat16, device=meta, operations=ops)
    if case.family == "Flux2":
        import dataclasses

        from comfy.ldm.flux.model import Flux, FluxParams

        declared = {f.name for f in dataclasses.fields(FluxParams)}
        config = {k: v for k, v in config.items() if k in declared}
        return Flux(**config, dtype=torch.bfloat16, device=meta, operations=ops)
    from comfy.ldm.wan.model import WanModel

    return WanModel(**config, model_type="t2v", dtype=torch.bfloat16, device=meta, operations=ops)


def build_model(case: Case, tiny: bool, device: torch.device):
    """A ModelPatcher of the case's model through ComfyUI's UNet loader path (as UNETLoader with the case's
    weight_dtype loads a file: detection, dtype, manual-cast ops); checks ComfyUI detected the right family."""
    import comfy.sd

    from lora_train.host.comfy_adapter import model_family

    dtype = WEIGHT_DTYPES[case.weight_dtype]
    state = random_state(_architecture(case, tiny), dtype, device)
    parameters = sum(t.numel() for t in state.values())
    try:
        model = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": dtype})
    finally:
        state.clear()  # ComfyUI copied them into its own (offloaded) model: free the device copies now
    if model is None or model_family(model) != case.family:
        found = "nothing" if model is None else model_family(model)
        raise RuntimeError(f"ComfyUI detected the generated {case.family} weights as {found}")
    return model, parameters


def random_encoded(latent_channels: int, resolution: int, tokens: int, case: Case):
    """One latent [1, C, h, w], a context [1, tokens, width] and a pooled vector [1, width], from a fixed seed."""
    generator = torch.Generator().manual_seed(SEED)
    side = resolution // 8
    if isinstance(case, ShapedCase):
        shape = case.tiny_latent if resolution < 256 else case.latent
    else:
        shape = (latent_channels, side, side)
    latent = torch.randn(1, *shape, generator=generator)
    context = torch.randn(1, tokens, case.context, generator=generator)
    pooled = torch.randn(1, case.pooled, generator=generator) if case.pooled else None
    return latent, {"cross_attn": context, "pooled_output": pooled}


# ---- the worker --------------------------------------------------------------------------------------------------
def emulate_card(card_gib: float, device: torch.device) -> None:
    """Make `device` behave as a card of `card_gib` GiB: torch allocates no more, ComfyUI plans for no more."""
    import comfy.model_management as mm

    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, card_gib * 2**30 / total), device)
    mm.EXTRA_RESERVED_VRAM += max(0, total - int(card_gib * 2**30))
    print(f"emulating a {card_gib:g} GiB card on a {total / 2**30:.0f} GiB device", file=sys.stderr)


def _dtypes_gib(module: torch.nn.Module) -> dict[str, float]:
    """GiB of the module's parameters by stored dtype."""
    out: dict[str, float] = {}
    for p in module.parameters():
        key = str(p.dtype).removeprefix("torch.")
        out[key] = out.get(key, 0.0) + p.numel() * p.element_size() / 2**30
    return {k: round(v, 3) for k, v in out.items()}


def inspect_training(diffusion_model: torch.nn.Module, case: Case) -> dict:
    """While training runs: the base weights' stored dtypes and the attached adapters' dtypes (asserted)."""
    linear = {m.weight.dtype for m in diffusion_model.modules() if isinstance(m, torch.nn.Linear)}
    hooks = [h for m in diffusion_model.modules() for h in m._forward_hooks.values() if hasattr(h, "adapter")]
    adapter = {p.dtype for h in hooks for p in h.adapter.parameters()}
    trainable = sum(p.numel() for h in hooks for p in h.adapter.parameters() if p.requires_grad)
    expected = WEIGHT_DTYPES[case.weight_dtype]
    assert hooks, "no adapters are attached to the model during training"
    assert linear == {expected}, f"base Linear weights are stored as {linear} during training, not {expected}"
    assert adapter == {ADAPTER_DTYPE}, f"adapters are {adapter}, not {ADAPTER_DTYPE}"
    if expected in FP8:
        print(f"[{case.family}] during training: every Linear weight is stored as {expected}", file=sys.stderr)
    return {
        "stored_dtypes_gib": _dtypes_gib(diffusion_model),
        "linear_weight_dtype": str(expected).removeprefix("torch."),
        "adapter_dtype": str(ADAPTER_DTYPE).removeprefix("torch."),
        "adapters": len(hooks),
        "adapter_params_m": round(trainable / 1e6, 2),
    }


def worker(case: Case, sizes: dict, steps: int, warmup: int) -> dict:
    """Build and load the case's model, train it with our core, measure."""
    import comfy.model_management as mm

    from lora_train.dataset import dataset_from_images
    from lora_train.host.comfy_adapter import ComfyHost
    from lora_train.training import Example, TrainConfig, train_lora

    device = mm.get_torch_device()
    if case.card_gib and device.type == "cuda":
        emulate_card(case.card_gib, device)
    started = time.perf_counter()
    with torch.inference_mode():  # as UNETLoader runs
        model, parameters = build_model(case, sizes["tiny"], device)
    mm.soft_empty_cache()
    loaded = time.perf_counter()
    latent, text_out = random_encoded(model.model.latent_format.latent_channels, sizes["resolution"],
                                      sizes["tokens"], case)  # fmt: skip

    class BenchHost(ComfyHost):
        """ComfyHost without CLIP/VAE: the 'encoded' dataset is one random latent and text-encoder output."""

        stamps: list[float]
        checks: dict

        def encode_examples(self, dataset, cfg, cache_dir=None):
            self.guidance = cfg.guidance
            with torch.inference_mode(False):
                return [Example(latent[0].clone(), self.model_conds(text_out, latent))]

        def report(self, progress) -> None:
            if not self.stamps:
                self.checks = inspect_training(self.model.model.diffusion_model, case) | {"first_loss": progress.loss}
            self.stamps.append(time.perf_counter())

    clip = types.SimpleNamespace(patcher=None)  # ComfyHost wants a CLIP and a VAE; nothing here uses them
    host = BenchHost(model, clip, types.SimpleNamespace())
    host.stamps = []
    values = bench_settings(sizes, optimizer="adamw", gradient_checkpointing=True, steps=steps)
    if case.blocks_to_swap:
        from lora_train.training import transformer_blocks

        blocks = len(transformer_blocks(model.model.diffusion_model))
        values["blocks_to_swap"] = min(case.blocks_to_swap, blocks)
    dataset = dataset_from_images(torch.zeros(1, 8, 8, 3), ["bench"])
    _reset_peak(device)
    with tempfile.TemporaryDirectory() as out, torch.inference_mode():
        result = train_lora(TrainConfig.from_dict(values), dataset, host, out)
    _sync(device)
    finished = time.perf_counter()
    intervals = [b - a for a, b in zip(host.stamps[warmup - 1 :], host.stamps[warmup:], strict=False)]
    memory = _memory(device)
    reserved = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None
    peak = memory["peak_vram_gib"]
    base = model.model
    return {
        "family": case.family,
        "params_b": round(parameters / 1e9, 3),
        "weight_dtype": case.weight_dtype,
        "compute_dtype": str(base.manual_cast_dtype or base.get_dtype()).removeprefix("torch."),
        **host.checks,
        "last_loss": result.loss_history[-1][1],
        "s_per_step": statistics.median(intervals),
        "steps": steps,
        "load_s": round(loaded - started, 1),
        "train_s": round(finished - loaded, 1),
        **memory,
        "peak_reserved_gib": reserved,
        "target_gib": case.target_gib,
        "blocks_to_swap": values.get("blocks_to_swap", 0),
        "card_gib": case.card_gib,
        "within_target": None if peak is None or case.target_gib is None else peak <= case.target_gib,
        "device": str(device),
    }


# ---- driver ------------------------------------------------------------------------------------------------------
def run_case(name: str, args: argparse.Namespace) -> dict:
    """The case in a process of its own (its stderr passes through; its last result line is the answer)."""
    command = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--comfyui", args.comfyui] + (["--tiny"] if args.tiny else []) + (["--cpu"] if args.cpu else [])
    try:
        out = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=args.case_timeout)
    except subprocess.TimeoutExpired:
        return {"case": name, "error": f"timed out after {args.case_timeout} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT)]
    if out.returncode != 0 or not lines:
        return {"case": name, "error": f"worker exited with {out.returncode} (its stderr is above)"}
    return {"case": name, **json.loads(lines[-1][len(RESULT) :])}


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def report(results: list[dict], sizes: dict, args: argparse.Namespace) -> None:
    print(
        f"\n{'tiny' if args.tiny else 'full-size'} models, {sizes['resolution']} px, batch {sizes['batch']}, rank "
        f"{sizes['rank']}, bf16 autocast, gradient checkpointing, AdamW, {args.steps} steps (median after "
        f"{args.warmup}); peak VRAM = torch.cuda.max_memory_allocated, GiB"
    )
    print(
        f"{'case':<14} {'params B':>8} {'weights':>10} {'compute':>8} {'adapters':>9} {'s/step':>8} "
        f"{'peak VRAM GiB':>13} {'reserved GiB':>12} {'target GiB':>10} {'ok':>4} {'peak RSS GiB':>13}"
    )
    for r in results:
        if "error" in r:
            print(f"{r['case']:<14} ERROR: {r['error']}")
            continue

        target = "n/a" if r["target_gib"] is None else f"{r['target_gib']:.0f}"
        ok = {None: "n/a", True: "yes", False: "NO"}[r["within_target"]]
        print(
            f"{r['case']:<14} {r['params_b']:>8.3f} {r['weight_dtype']:>10} {r['compute_dtype']:>8} "
            f"{r['adapter_dtype']:>9} {r['s_per_step']:>8.3f} {_gib(r['peak_vram_gib']):>13} "
            f"{_gib(r['peak_reserved_gib']):>12} {target:>10} {ok:>4} {r['peak_rss_gib']:>13.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--tiny", action="store_true", help="tiny models at 64 px (smoke check)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny: the smoke check)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 12, or 3 with --tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 3, or 1 with --tiny)")
    parser.add_argument("--case-timeout", type=int, default=270, help="seconds one case may take (default 270)")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, else this repo's dev host)")
    parser.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.tiny else 12)
    args.warmup = args.warmup or (1 if args.tiny else 3)
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")
    sizes = {**FULL, **(TINY if args.tiny else {}), "tiny": args.tiny}

    if args.worker:
        from lora_train.host.bootstrap import import_comfy

        import_comfy(args.comfyui, cpu=args.cpu or None)
        case = CASES[args.worker]
        sizes.setdefault("tokens", case.tokens)
        print(RESULT + json.dumps(worker(case, sizes, args.steps, args.warmup)), flush=True)
        return 0

    names = list(dict.fromkeys(c.strip() for c in args.cases.split(",") if c.strip()))
    unknown = [c for c in names if c not in CASES]
    if unknown or not names:
        parser.error(f"unknown case(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(CASES)}")
    args.comfyui = _comfyui(args.comfyui)
    results = []
    for name in names:
        results.append(run_case(name, args))
        print(json.dumps(results[-1]), flush=True)
    report(results, sizes, args)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
