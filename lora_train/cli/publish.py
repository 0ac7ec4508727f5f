"""`python -m lora_train publish LORA --name purpose_type [--dry-run] ...`: make a release folder from a LoRA file."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from lora_train.release import (
    PublishConfig,
    PublishError,
    is_adapter_folder,
    publish_adapter,
    publish_lora,
    result_summary,
)
from lora_train.settings import SettingsError

DEFAULT_RELEASES_DIR = "releases"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `publish` sub-command; one flag per PublishConfig setting."""
    parser = subparsers.add_parser(
        "publish",
        help="publish a LoRA as a versioned release (model card, hashes, manifest)",
        description="Publish a LoRA file as <name>_v<N>.safetensors with README.md and manifest.json in "
        "<output_dir>/<name>/. Every setting:\n\n" + PublishConfig.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("lora", help="the trained LoRA (.safetensors), or a peft adapter folder (language-model "
                        "LoRA: adapter_model.safetensors + adapter_config.json), published as a zip")  # fmt: skip
    hints = typing.get_type_hints(PublishConfig)
    for spec in PublishConfig.field_specs():
        flag = "--" + spec.name.replace("_", "-")
        if hints[spec.name] is bool:
            parser.add_argument(flag, dest=spec.name, action="store_true", default=None, help=spec.metadata["help"])
        else:
            parser.add_argument(flag, dest=spec.name, default=None, metavar="VALUE", help=spec.metadata["help"])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the config from the flags given, publish, print what was (or would be) written."""
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(PublishConfig) if getattr(args, f.name) is not None
    }
    try:
        cfg = PublishConfig.from_dict(given)
        publish = publish_adapter if is_adapter_folder(args.lora) else publish_lora
        result = publish(cfg, args.lora, cfg.output_dir or DEFAULT_RELEASES_DIR)
    except (PublishError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result_summary(result), indent=2))
        return 0
    verb = "would write" if result.dry_run else "wrote"
    print(f"{result.name} v{result.version}: {verb} in {result.release_dir}")
    for path in result.written:
        print(f"  {path.name}")
    print(f"sha256           {result.sha256}")
    print(f"AutoV2           {result.autov2}")
    if result.sshs_model_hash:  # kohya's hashes: image LoRA files only
        print(f"sshs_model_hash  {result.sshs_model_hash}")
        print(f"sshs_legacy_hash {result.sshs_legacy_hash}")
    if not result.manifest.mirrors:
        print('no mirrors yet: after uploading, add their URLs to manifest.json\'s "mirrors" (or pass --mirrors)')
    return 0
