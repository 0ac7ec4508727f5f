"""The command line: `python -m lora_train <command> ...`. One module per sub-command in this package."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil

from lora_train import __version__


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command found in this package."""
    parser = argparse.ArgumentParser(prog="python -m lora_train", description="Train, label, publish and fetch LoRAs.")
    parser.add_argument("--version", action="version", version=f"lora_train {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)
