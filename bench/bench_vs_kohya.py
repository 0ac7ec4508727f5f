"""CPU bench at real shapes: our trainer core vs kohya sd-scripts on a full-size random-weight SD1.5, in one run.

Both train the same thing (shared/PERF.md): 8 PNGs at 128 px with .txt captions, batch 2, rank 8 / alpha 8 on the
UNet's attention layers (kohya's default set: 192 modules, 3,391,488 parameters), AdamW lr 1e-4 (weight decay
0.01), constant schedule, fp32, max grad norm 1.0, no gradient checkpointing, latents cached. kohya runs its CLIP
text encoder every step; ours encodes the captions once. Each run is a fresh process (its own peak RSS), peers
alternate inside each round, every worker pinned to the same thread count.

Per worker: the time of each optimizer step (a timestamp from a global torch optimizer step post-hook, the same
for both; no trainer code is touched), s/step = median over steps 3..N-1; the FLOPs of step N
(torch.utils.flop_counter.FlopCounterMode, entered in the post-hook of step N-1 and left in that of step N: the
whole step, text encoder and optimizer included); the process's peak RSS (ru_maxrss, model loading included). Each
round also times an fp32 GEMM (2048^2 and 4096^2) on the same threads: the machine's achievable peak, against which
the achieved FLOP/s is given as "MFU".

    python bench/bench_vs_kohya.py [--rounds 2] [--steps 8] [--peers 'ours,kohya']      # from the repo root
    python bench/bench_vs_kohya.py --peers 'ours,ours[compile=true]' --rounds 1         # our settings A/B
    python bench/bench_vs_kohya.py --profile ours                                      # top ops, one worker

kohya is looked for in $LORA_TRAIN_KOHYA, else .cache/kohya (sd-scripts/ and venv/ inside; git-ignored, never
committed). Where it is missing the bench says how to set it up and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BATCH, RANK, RESOLUTION, LR, SEED, THREADS = 2, 8, 128, 1e-4, 0, 2
KOHYA_COMMIT = "48d368fa"
SETUP = f"""kohya sd-scripts is not set up in {{root}}. Set it up once (nothing of it is committed):
  1. source: the public repository kohya-ss/sd-scripts at commit {KOHYA_COMMIT}, extracted to {{root}}/sd-scripts
     (git clone https://github.com/kohya-ss/sd-scripts {{root}}/sd-scripts && git -C {{root}}/sd-scripts checkout
     {KOHYA_COMMIT}; two Windows DLLs and a qwen3 tokenizer may be absent: not needed)
  2. a venv that shares the hosts' torch layer:
     python3.11 -m venv {{root}}/venv
     cp <host venv>/lib/python3.11/site-packages/lora_train_torch_layer.pth {{root}}/venv/lib/python3.11/site-packages/
     {{root}}/venv/bin/pip install accelerate==1.6.0 transformers==4.54.1 diffusers==0.32.1 safetensors==0.4.5 \\
         huggingface-hub==0.34.3 ftfy opencv-python-headless==4.10.0.84 einops==0.7.0 toml voluptuous imagesize \\
         "numpy<2.3" rich sentencepiece
  (or set $LORA_TRAIN_KOHYA to a folder holding sd-scripts/ and venv/). See ../shared/PERF.md."""


# ---- the probe both workers install (no project imports: it also runs inside kohya's venv) ------------------------
def install_step_probe(flop_step: int, result_path: str, profile: bool) -> None:
    """Timestamp every optimizer step; count the FLOPs of step `flop_step` (optionally profile it); write the
    result as JSON to `result_path` when the process exits."""
    import atexit

    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.utils.flop_counter import FlopCounterMode

    stamps: list[float] = []
    cpu_stamps: list[float] = []  # process CPU time: less sensitive to other work on a shared machine
    state: dict = {}

    def post_hook(_optimizer, _args, _kwargs) -> None:
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        if profile and len(stamps) == flop_step - 2:  # the profiled step: N-1
            state["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            state["profiler"].__enter__()
        elif profile and len(stamps) == flop_step - 1 and "profiler" in state:
            state["profiler"].__exit__(None, None, None)
        if len(stamps) == flop_step - 1:  # the counted step: N
            state["counter"] = FlopCounterMode(display=False)
            state["counter"].__enter__()
        elif len(stamps) == flop_step and "counter" in state:
            state["counter"].__exit__(None, None, None)
            state["flops"] = state.pop("counter").get_total_flops()

    def write() -> None:
        result = {
            "stamps": stamps,
            "cpu_stamps": cpu_stamps,
            "flops": state.get("flops"),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "threads": torch.get_num_threads(),
        }
        if "profiler" in state:
            table = state["profiler"].key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
            result["profile"] = table
        Path(result_path).write_text(json.dumps(result))

    register_optimizer_step_post_hook(post_hook)
    atexit.register(write)


# ---- workers -----------------------------------------------------------------------------------------------------
def worker_kohya(args: argparse.Namespace) -> None:
    """kohya's train_network.py, run in this process (its venv) with the probe installed."""
    import runpy

    scripts = Path(args.kohya) / "sd-scripts"
    sys.path.insert(0, str(scripts))
    os.chdir(scripts)
    install_step_probe(args.steps, args.result, args.profile)
    sys.argv = ["train_network.py", *kohya_args(args)]
    runpy.run_path(str(scripts / "train_network.py"), run_name="__main__")


def kohya_args(args: argparse.Namespace) -> list[str]:
    work = Path(args.work)
    return [
        f"--pretrained_model_name_or_path={work / 'random_sd15_full.safetensors'}",
        f"--train_data_dir={work / 'data'}",
        "--caption_extension=.txt",
        f"--output_dir={args.out}",
        "--output_name=bench",
        f"--tokenizer_cache_dir={work / 'tokenizer'}",
        "--network_module=networks.lora",
        f"--network_dim={RANK}",
        f"--network_alpha={RANK}",
        "--network_train_unet_only",
        "--cache_latents",
        "--optimizer_type=AdamW",
        "--optimizer_args",
        "weight_decay=0.01",
        f"--learning_rate={LR}",
        "--lr_scheduler=constant",
        "--mixed_precision=no",
        "--max_grad_norm=1.0",
        f"--resolution={RESOLUTION}",
        f"--train_batch_size={BATCH}",
        f"--max_train_steps={args.steps}",
        "--max_data_loader_n_workers=0",
        f"--seed={SEED}",
        "--save_model_as=safetensors",
    ]


def worker_ours(args: argparse.Namespace) -> None:
    """Our core through ComfyHost (what the Train LoRA node runs), on the checkpoint ComfyUI loaded."""
    sys.path.insert(0, args.checkout)
    from lora_train.host.bootstrap import import_comfy

    import_comfy(args.comfyui, cpu=True)
    import comfy.sd
    import torch

    from lora_train.dataset import load_dataset
    from lora_train.host.comfy_adapter import ComfyHost
    from lora_train.training import TrainConfig, train_lora

    install_step_probe(args.steps, args.result, args.profile)
    work = Path(args.work)
    with torch.inference_mode():  # as ComfyUI runs nodes
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(work / "random_sd15_full.safetensors"))[:3]
    values = {
        "rank": RANK,
        "alpha": RANK,
        "targets": "attention",
        "network": "lora",
        "steps": args.steps,
        "batch_size": BATCH,
        "resolution": RESOLUTION,
        "learning_rate": LR,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "mixed_precision": "no",
        "seed": SEED,
        "log_every": args.steps,
        "output_name": "bench",
        "buckets": False,
        **json.loads(args.settings or "{}"),
    }
    with torch.inference_mode():
        train_lora(
            TrainConfig.from_dict(values), load_dataset(str(work / "data")), ComfyHost(model, clip, vae), args.out
        )


def worker_gemm(args: argparse.Namespace) -> None:
    """Best fp32 GEMM rate (FLOP/s) over 2048^2 and 4096^2 on this process's threads."""
    import torch

    best = 0.0
    for n in (2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        for _ in range(3):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    Path(args.result).write_text(json.dumps({"flops_per_s": best}))


# ---- driver ------------------------------------------------------------------------------------------------------
def kohya_root() -> Path:
    return Path(os.environ.get("LORA_TRAIN_KOHYA") or REPO / ".cache" / "kohya")


def kohya_missing(root: Path) -> str | None:
    """Why the kohya peer cannot run, or None."""
    if not (root / "sd-scripts" / "train_network.py").is_file():
        return f"{root / 'sd-scripts' / 'train_network.py'} is missing"
    python = root / "venv" / "bin" / "python"
    if not python.is_file():
        return f"{python} is missing"
    check = subprocess.run([str(python), "-c", "import torch, accelerate, transformers, diffusers, cv2, toml"],
                           capture_output=True, text=True)  # fmt: skip
    if check.returncode != 0:
        return f"its venv cannot import kohya's requirements: {check.stderr.strip().splitlines()[-1:]}"
    return None


def prepare_work(work: Path, host_python: str, comfyui: str) -> None:
    """The random checkpoint, the dataset (kohya's `N_name` folder, which our loader reads too) and kohya's
    offline CLIP tokenizer (ComfyUI's copy, model_max_length 77). What needs torch or PIL runs in the host's python:
    this process may be any python3."""
    checkpoint = work / "random_sd15_full.safetensors"
    if not checkpoint.is_file():
        subprocess.run([host_python, "-m", "lora_train.dev.full_models", str(checkpoint), "--comfyui", comfyui],
                       cwd=REPO, check=True)  # fmt: skip
    data = work / "data" / "1_style"
    write = "import sys; from lora_train.dev.synthetic import write_style_dataset as w; "
    write += "w(sys.argv[1], count=8, size=int(sys.argv[2]))"
    subprocess.run([host_python, "-c", write, str(data), str(RESOLUTION)], cwd=REPO, check=True)
    tokenizer = work / "tokenizer" / "openai_clip-vit-large-patch14"
    if not (tokenizer / "tokenizer_config.json").is_file():
        tokenizer.mkdir(parents=True, exist_ok=True)
        source = Path(comfyui) / "comfy" / "sd1_tokenizer"
        for item in source.iterdir():
            (tokenizer / item.name).write_bytes(item.read_bytes())
        config = json.loads((tokenizer / "tokenizer_config.json").read_text())
        config["model_max_length"] = 77
        (tokenizer / "tokenizer_config.json").write_text(json.dumps(config))


def _value(text: str):
    """A --peers setting value: JSON numbers and booleans, else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_peer(spec: str) -> tuple[str, str, dict]:
    """'ours', 'kohya', 'ours@CHECKOUT' (another checkout of this project, e.g. the code before a change) or
    'ours[key=value,...]' -> (kind, checkout, our settings)."""
    match = re.fullmatch(r"(ours|kohya)(?:@([^\[]+))?(?:\[(.*)\])?", spec.strip())
    if not match:
        raise ValueError(f"peer {spec!r}: use ours, kohya, ours@CHECKOUT or ours[key=value,...]")
    kind, checkout = match.group(1), match.group(2) or str(REPO)
    pairs = [pair.partition("=") for pair in filter(None, (match.group(3) or "").split(","))]
    settings = {key.strip(): _value(value.strip()) for key, _, value in pairs}
    if kind == "kohya" and (settings or match.group(2)):
        raise ValueError("a checkout and settings apply to ours only")
    if not (Path(checkout) / "lora_train").is_dir():
        raise ValueError(f"peer {spec!r}: {checkout} is not a checkout of this project (no lora_train/ in it)")
    return kind, str(Path(checkout).resolve()), settings


def run_worker(kind: str, args: argparse.Namespace, python: str, checkout: str = str(REPO),
               settings: dict | None = None) -> dict:  # fmt: skip
    """Run one worker process; its result dict."""
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": checkout}
    with tempfile.TemporaryDirectory() as out:
        result = Path(out) / "result.json"
        command = [python, __file__, "--worker", kind, "--result", str(result), "--work", str(args.work),
                   "--out", out, "--steps", str(args.steps), "--comfyui", args.comfyui, "--checkout", checkout,
                   "--kohya", str(args.kohya), "--settings", json.dumps(settings or {})]  # fmt: skip
        command += ["--profile"] if args.profile else []
        run = subprocess.run(command, capture_output=True, text=True, cwd=checkout, env=env)
        if run.returncode != 0 or not result.is_file():
            raise RuntimeError(f"worker {kind} failed ({run.returncode}):\n{(run.stdout + run.stderr)[-4000:]}")
        return json.loads(result.read_text())


def step_time(stamps: list[float], steps: int, profiled: bool, pick=statistics.median) -> float:
    """Median of the step intervals from step 3 to step N-1 (step N is the FLOP-counted one; with --profile, N-1 is
    the profiled one and left out too)."""
    intervals = [stamps[i] - stamps[i - 1] for i in range(2, steps - (2 if profiled else 1))]
    return pick(intervals)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="steps per worker (>= 5); timed: 3..N-1")
    parser.add_argument("--peers", default="ours,kohya", help="comma list of ours, kohya, ours[key=value,...]")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads per worker (default 2)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of the counted step")
    parser.add_argument("--kohya", default=None, help="folder with sd-scripts/ and venv/ ($LORA_TRAIN_KOHYA)")
    for hidden in ("--worker", "--result", "--work", "--out", "--comfyui", "--settings", "--checkout"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        {"ours": worker_ours, "kohya": worker_kohya, "gemm": worker_gemm}[args.worker](args)
        return 0
    if args.steps < 5:
        parser.error("--steps must be at least 5 (steps 3..N-1 are timed, step N counted)")
    args.kohya = Path(args.kohya) if args.kohya else kohya_root()
    peers = [p.strip() for p in re.split(r",(?![^\[]*\])", args.peers) if p.strip()]
    parsed = {p: parse_peer(p) for p in peers}
    if any(kind == "kohya" for kind, *_ in parsed.values()):
        missing = kohya_missing(args.kohya)
        if missing:
            print(f"error: {missing}\n" + SETUP.format(root=args.kohya), file=sys.stderr)
            return 2
    sys.path.insert(0, str(REPO))
    from lora_train.dev import host_builder

    host = host_builder.setup_host()
    args.comfyui, host_python = str(host.comfyui), str(host.python)
    args.work = args.kohya / "work"
    prepare_work(args.work, host_python, args.comfyui)
    pythons = {"ours": host_python, "kohya": str(args.kohya / "venv" / "bin" / "python")}
    results: dict[str, list[dict]] = {p: [] for p in peers}
    gemm: list[float] = []
    for round_index in range(args.rounds):
        gemm.append(run_worker("gemm", args, host_python)["flops_per_s"])
        for peer in peers:
            kind, checkout, settings = parsed[peer]
            result = run_worker(kind, args, pythons[kind], checkout, settings)
            result["s_per_step"] = step_time(result["stamps"], args.steps, args.profile)
            result["cpu_s_per_step"] = step_time(result["cpu_stamps"], args.steps, args.profile)
            result["min_s_per_step"] = step_time(result["stamps"], args.steps, args.profile, min)
            results[peer].append(result)
            print(f"round {round_index + 1}: {peer}: {result['s_per_step']:.3f} s/step "
                  f"(fastest {result['min_s_per_step']:.3f}, process CPU {result['cpu_s_per_step']:.3f} s), peak RSS "
                  f"{result['peak_rss_gib']:.2f} GiB, {(result['flops'] or 0) / 1e9:.1f} GFLOP/step, "
                  f"GEMM {gemm[-1] / 1e9:.1f} GFLOP/s", flush=True)  # fmt: skip
            if args.profile and result.get("profile"):
                print(result["profile"], flush=True)
    report(results, max(gemm), args)
    return 0


def report(results: dict[str, list[dict]], peak: float, args: argparse.Namespace) -> None:
    """The table: medians over rounds; speed and memory relative to kohya; MFU against the measured GEMM peak."""
    print(f"\nfull-size random SD1.5, {RESOLUTION} px, batch {BATCH}, rank {RANK}, attention targets, AdamW, fp32, "
          f"{args.threads} thread(s); median over {args.rounds} round(s); s/step: median of steps "
          f"3..{args.steps - 1} (fastest: the quickest of them; CPU: process CPU time); GEMM peak "
          f"{peak / 1e9:.1f} GFLOP/s")  # fmt: skip

    def median(peer: str, key: str) -> float:
        return statistics.median(r[key] or 0 for r in results[peer])

    keys = ("s_per_step", "min_s_per_step", "peak_rss_gib")
    base = {key: median("kohya", key) for key in keys} if "kohya" in results else {}
    print(f"{'peer':<30} {'s/step':>7} {'fastest':>7} {'CPU s':>6} {'peak RSS GiB':>12} {'GFLOP/step':>10} "
          f"{'MFU %':>6} {'x kohya':>8} {'x kohya (fastest)':>17} {'RSS x kohya':>11}")  # fmt: skip
    for peer in results:
        step, fastest, rss = median(peer, "s_per_step"), median(peer, "min_s_per_step"), median(peer, "peak_rss_gib")
        flops = median(peer, "flops")
        speed = f"{base['s_per_step'] / step:.2f}" if base else "n/a"
        speed_fastest = f"{base['min_s_per_step'] / fastest:.2f}" if base else "n/a"
        memory = f"{rss / base['peak_rss_gib']:.2f}" if base else "n/a"
        print(f"{peer:<30} {step:>7.3f} {fastest:>7.3f} {median(peer, 'cpu_s_per_step'):>6.2f} {rss:>12.2f} "
              f"{flops / 1e9:>10.1f} {100 * flops / fastest / peak:>6.1f} {speed:>8} {speed_fastest:>17} "
              f"{memory:>11}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
