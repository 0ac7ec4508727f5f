"""`python -m lora_train keygen NAME [--dir FOLDER]`: make an Ed25519 key pair for signing releases."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lora_train.release import SigningError, generate_key

DEFAULT_KEYS_DIR = Path("~/.config/lora_train/keys")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `keygen` sub-command."""
    parser = subparsers.add_parser(
        "keygen",
        help="make an Ed25519 key pair to sign releases with (publish --sign KEY)",
        description="Writes NAME.key (private, mode 600: keep it secret, back it up) and NAME.pub (share it: "
        "people who fetch your releases put it in their trusted keys folder).",
    )
    parser.add_argument("name", help="key name, e.g. your handle; it becomes the signer name in manifests")
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_KEYS_DIR, help=f"where to write (default {DEFAULT_KEYS_DIR})"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the key pair; print where it went and the key id."""
    try:
        private_path, public_path, public = generate_key(args.dir.expanduser(), args.name)
    except SigningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"private key  {private_path}  (secret: publish --sign {private_path})")
    print(f"public key   {public_path}  (share it; fetchers add it to their trusted keys)")
    print(f"key id       {public.key_id}")
    return 0
