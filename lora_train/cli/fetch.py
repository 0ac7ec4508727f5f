"""`python -m lora_train fetch URL... [--sha256 HEX] [--dest LORAS_DIR]`: the Fetch LoRA node from a shell."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from lora_train.fetch import FetchConfig, FetchError, FetchProgress, fetch_lora
from lora_train.settings import SettingsError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `fetch` sub-command."""
    parser = subparsers.add_parser(
        "fetch",
        help="download a LoRA (links, mirrors, hf:// links or a release manifest) into a loras folder",
        description="Fetch a LoRA: links are tried in order (the rest are mirrors); a single .json link or file is "
        "a release manifest. Partial downloads resume; files are hash-checked and validated before they appear.",
        epilog="Every setting:\n\n" + FetchConfig.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("urls", nargs="+", metavar="URL", help="link(s) to the same file, or one manifest")
    parser.add_argument("--sha256", default="", help="expected sha256 of the file")
    parser.add_argument("--dest", type=Path, default=Path("."), help="the loras folder to save into (default: .)")
    parser.add_argument("--subfolder", default="", help="folder inside --dest")
    parser.add_argument("--version", default="", help="manifest release (default: latest)")
    parser.add_argument("--allow-private", action="store_true", help="allow loopback/LAN addresses")
    parser.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.pt/.bin pickle files (unsafe)")
    parser.add_argument(
        "--trusted-keys",
        default="",
        metavar="PATH",
        help="folder of trusted publishers' .pub keys (or one .pub file) to verify manifests with",
    )
    parser.add_argument(
        "--signature-policy",
        default="warn",
        choices=("warn", "refuse"),
        help="unsigned or untrusted manifests: warn (default) or refuse; bad signatures are refused",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other setting")
    parser.set_defaults(func=run)


def _progress_printer(stream: TextIO) -> Callable[[FetchProgress], None]:
    def show(report: FetchProgress) -> None:
        total = f"/{report.total / 1e6:.1f}" if report.total else ""
        eta = f", {report.eta_s:.0f} s left" if report.eta_s is not None else ""
        line = f"{report.status}: {report.downloaded / 1e6:.1f}{total} MB at {report.speed_bps / 1e6:.1f} MB/s{eta}"
        end = "\r" if stream.isatty() and report.status == "downloading" else "\n"
        print(f"{line:<72}", end=end, file=stream, flush=True)

    return show


def run(args: argparse.Namespace) -> int:
    """Fetch, print the saved path; errors go to stderr with exit code 1."""
    values = {"urls": "\n".join(args.urls), "sha256": args.sha256, "subfolder": args.subfolder,
              "version": args.version, "allow_private_addresses": args.allow_private,
              "allow_pickle": args.allow_pickle, "trusted_keys": args.trusted_keys,
              "signature_policy": args.signature_policy}  # fmt: skip
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"--set wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        values[key.strip()] = value
    try:
        cfg = FetchConfig.from_dict(values)
        result = fetch_lora(cfg, args.dest, progress=_progress_printer(sys.stderr))
    except (SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{result.status}: {result.path}  (lora_name {result.lora_name}, sha256 {result.sha256})")
    if result.signature:
        print(f"signature {result.signature}")
    return 0
