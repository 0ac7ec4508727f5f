"""The demo run behind `python -m lora_train demo`: a tiny SD1.5-shaped checkpoint and a red-style dataset,
Load LoRA Dataset -> Train LoRA -> KSampler (plus the same sample without the LoRA) in a real ComfyUI on
loopback, and the LoRA, loss chart and before/after samples copied out. Runs inside the test host's venv."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from lora_train.dev import host_builder
from lora_train.dev.server import ComfyServer
from lora_train.dev.synthetic import write_style_dataset
from lora_train.dev.tiny_models import TINY_SD15_NAME
from lora_train.dev.workflows import train_and_sample

OUTPUT_NAME = "demo_redstyle"


def run_demo(output: Path, steps: int) -> dict[str, str]:
    """Train the demo LoRA for `steps` steps; returns {"lora", "loss_chart", "before", "after"} -> written path."""
    output.mkdir(parents=True, exist_ok=True)
    host = host_builder.setup_host()
    checkpoint = tiny_checkpoint(host)
    dataset = write_style_dataset(output / "dataset")
    base_dir = output / "comfyui"
    shutil.rmtree(base_dir, ignore_errors=True)
    server = ComfyServer(host.comfyui, host.python, base_dir)
    server.prepare()
    (server.models_dir / "checkpoints" / TINY_SD15_NAME).symlink_to(checkpoint)
    workflow = train_and_sample(
        str(dataset),
        steps=steps,
        network="locon",
        targets="all_linear",
        rank=16,
        alpha=8.0,
        learning_rate=5e-3,
        batch_size=4,
        log_every=10,
        output_name=OUTPUT_NAME,
    )
    print(f"starting ComfyUI {host.version} on loopback and training {steps} steps...", flush=True)
    with server:
        result = server.run_workflow(workflow, on_event=_show_progress)
        files = {
            "lora": server.models_dir / "loras" / f"{OUTPUT_NAME}.safetensors",
            "loss_chart": server.view(result.outputs["train"]["images"][0]),
            "before": server.view(result.outputs["before_save"]["images"][0]),
            "after": server.view(result.outputs["after_save"]["images"][0]),
        }
    written = _copy_out(files, output)
    print(json.dumps(written, indent=2))
    print(f"done: the LoRA, its loss chart and before/after samples are in {output.resolve()}")
    return written


def tiny_checkpoint(host: host_builder.Host) -> Path:
    """The seeded tiny SD1.5 checkpoint in the host cache, generated (in the host's Python) on first use."""
    models = host_builder.models_dir()
    checkpoint = models / "checkpoints" / TINY_SD15_NAME
    if not checkpoint.is_file():
        print("generating the tiny SD1.5 checkpoint (seeded, cached)...", flush=True)
        code = (
            "import sys; from lora_train.host.bootstrap import import_comfy; import_comfy(sys.argv[1]);"
            "from lora_train.dev.tiny_models import write_tiny_sd15; write_tiny_sd15(sys.argv[2])"
        )
        subprocess.run([sys.executable, "-c", code, str(host.comfyui), str(models)], check=True)
    return checkpoint


def _show_progress(event: dict) -> None:
    if event.get("type") == "lora_train.train_progress":
        data = event["data"]
        print(
            f"  step {data['step']:>4}/{data['total']}  loss {data['loss']:.4f}  eta {data['eta_s']:.0f}s", flush=True
        )


def _copy_out(files: dict[str, Path | bytes], output: Path) -> dict[str, str]:
    written = {}
    for name, content in files.items():
        target = output / (f"{name}.safetensors" if name == "lora" else f"{name}.png")
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
        written[name] = str(target.resolve())
    return written
