"""`python -m lora_train caption --input DIR [--output DIR/metadata.csv] [--trigger WORD] [--mode skip] ...`."""

from __future__ import annotations

import argparse
import sys
import typing

from lora_train.dataset import CaptionConfig, CaptionError, DatasetError, auto_label
from lora_train.settings import SettingsError

# Short flags the docs use, mapped to CaptionConfig names; every other setting gets --its-name.
FLAG_NAMES = {"clip_path": "--clip", "csv_path": "--output", "write_sidecars": "--sidecars"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `caption` sub-command; one flag per CaptionConfig setting."""
    parser = subparsers.add_parser(
        "caption",
        help="auto-label a folder of images with CLIP into metadata.csv and/or .txt sidecars",
        description="Rank vocabulary phrases by CLIP similarity for every image and write captions. Settings:\n\n"
        + CaptionConfig.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, metavar="DIR", help="folder of images (searched recursively)")
    hints = typing.get_type_hints(CaptionConfig)
    for spec in CaptionConfig.field_specs():
        flag = FLAG_NAMES.get(spec.name, "--" + spec.name.replace("_", "-"))
        if hints[spec.name] is bool:
            parser.add_argument(flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=None,
                                help=spec.metadata["help"])  # fmt: skip
        else:
            choices = spec.metadata.get("choices")
            parser.add_argument(flag, dest=spec.name, default=None, choices=choices, metavar="VALUE" if not choices
                                else None, help=spec.metadata["help"])  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Label the folder, print the summary; exit code 2 with a message on bad input."""
    given = {f.name: getattr(args, f.name) for f in CaptionConfig.field_specs() if getattr(args, f.name) is not None}
    try:
        cfg = CaptionConfig.from_dict(given)
        result = auto_label(args.input, cfg)
    except (CaptionError, DatasetError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0
