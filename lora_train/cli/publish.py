"""`python -m lora_train publish LORA --name purpose_type [--to DEST ...] [--sign KEY] [--dry-run] ...`: make a
release folder from a LoRA file and upload it; `--release DIR --to DEST` uploads an existing release again;
`--release DIR --resign` renews its presigned links."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Callable
from pathlib import Path

from lora_train.release import PublishConfig, PublishError, is_adapter_folder, publish_adapter, result_summary
from lora_train.settings import SettingsError

DEFAULT_RELEASES_DIR = "releases"
# Settings with a flag of their own (repeatable, or shorter) instead of the generated --<name>.
SPECIAL_FLAGS = {"destinations": ("--to",), "sign_key": ("--sign", "--sign-key"), "link_expiry": ("--expires",)}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `publish` sub-command; one flag per PublishConfig setting."""
    parser = subparsers.add_parser(
        "publish",
        help="publish a LoRA as a versioned release (model card, hashes, manifest), upload it, sign it",
        description="Publish a LoRA file as <name>_v<N>.safetensors with README.md and manifest.json in "
        "<output_dir>/<name>/, then upload it to each --to destination (folder, webdav://, s3://, hf://). Every "
        "setting:\n\n" + PublishConfig.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("lora", nargs="?", help="the trained LoRA (.safetensors), or a peft adapter folder "
                        "(language-model LoRA: adapter_model.safetensors + adapter_config.json), published as a "
                        "zip; omit with --release")  # fmt: skip
    hints = typing.get_type_hints(PublishConfig)
    for spec in PublishConfig.field_specs():
        flags = SPECIAL_FLAGS.get(spec.name, ("--" + spec.name.replace("_", "-"),))
        if spec.name == "destinations":
            parser.add_argument(*flags, dest=spec.name, action="append", default=None, metavar="DEST",
                                help=spec.metadata["help"] + " Repeat --to for each destination.")  # fmt: skip
        elif hints[spec.name] is bool:
            parser.add_argument(*flags, dest=spec.name, action="store_true", default=None, help=spec.metadata["help"])
        else:
            parser.add_argument(*flags, dest=spec.name, default=None, metavar="VALUE", help=spec.metadata["help"])
    parser.add_argument("--release", type=Path, metavar="DIR", help="an existing release folder: upload its newest "
                        "(or --version) release to --to, or renew its links with --resign")  # fmt: skip
    parser.add_argument("--resign", action="store_true", help="renew the presigned links in --release's manifest "
                        "(no file is uploaded again), re-sign it, and upload the manifest")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def _progress_bars() -> Callable[[str, str, int, int], None]:
    """One tqdm bar per (destination, file) on stderr."""
    from tqdm import tqdm

    bars: dict[tuple[str, str], typing.Any] = {}

    def show(dest: str, name: str, sent: int, total: int) -> None:
        bar = bars.get((dest, name))
        if bar is None:
            kind = dest.split(" ", 1)[0]
            bar = bars[(dest, name)] = tqdm(total=total, desc=f"{kind}: {name}", unit="B", unit_scale=True,
                                            file=sys.stderr, leave=False)  # fmt: skip
        bar.update(sent - bar.n)
        if sent >= total:
            bar.close()

    return show


def run(args: argparse.Namespace) -> int:
    """Build the config from the flags given, publish and/or upload, print what was (or would be) written."""
    from lora_train.upload import UploadError

    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(PublishConfig) if getattr(args, f.name) is not None
    }
    try:
        cfg = PublishConfig.from_dict(given)
        if args.release is not None or args.resign:
            return _existing_release(args, cfg)
        if not args.lora:
            raise PublishError("give the LoRA file to publish (or --release DIR to upload an existing release)")
        from lora_train.upload import publish_and_upload

        progress = _progress_bars() if cfg.destinations else None
        publish = publish_adapter if is_adapter_folder(args.lora) else None
        result, uploaded = publish_and_upload(cfg, args.lora, cfg.output_dir or DEFAULT_RELEASES_DIR,
                                              progress=progress, publish=publish)  # fmt: skip
    except (PublishError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UploadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        body = result_summary(result)
        body["uploaded"] = _upload_summary(uploaded)
        print(json.dumps(body, indent=2))
        return 0
    _print_release(result)
    _print_upload(uploaded)
    if not result.manifest.mirrors and uploaded is None:
        print('no mirrors yet: upload with --to DEST, or add their URLs to manifest.json\'s "mirrors" (--mirrors)')
    return 0


def _existing_release(args: argparse.Namespace, cfg: PublishConfig) -> int:
    """`--release DIR --to DEST` (upload again) or `--release DIR --resign` (renew links)."""
    from lora_train.upload import distribute_release, parse_destination, renew_links

    if args.release is None:
        raise PublishError("--resign needs --release DIR (the release folder whose manifest to renew)")
    if args.lora:
        raise PublishError("give either a LoRA file to publish or --release DIR, not both")
    if args.resign:
        uploaded = renew_links(args.release, expires=args.link_expiry, sign_key=cfg.sign_key,
                               progress=_progress_bars())  # fmt: skip
    else:
        destinations = [parse_destination(spec, default_expires=cfg.link_expiry) for spec in cfg.destinations]
        uploaded = distribute_release(args.release, destinations, version=cfg.version or None,
                                      sign_key=cfg.sign_key, progress=_progress_bars())  # fmt: skip
    if args.json:
        print(json.dumps(_upload_summary(uploaded), indent=2))
    else:
        _print_upload(uploaded)
    return 0


def _upload_summary(uploaded) -> dict | None:
    if uploaded is None:
        return None
    return {"version": uploaded.version, "uploaded": uploaded.uploaded, "manifest_links": uploaded.manifest_links,
            "signature_links": uploaded.signature_links}  # fmt: skip


def _print_release(result) -> None:
    verb = "would write" if result.dry_run else "wrote"
    print(f"{result.name} v{result.version}: {verb} in {result.release_dir}")
    for path in result.written:
        print(f"  {path.name}")
    print(f"sha256           {result.sha256}")
    print(f"AutoV2           {result.autov2}")
    if result.sshs_model_hash:  # kohya's hashes: image LoRA files only
        print(f"sshs_model_hash  {result.sshs_model_hash}")
        print(f"sshs_legacy_hash {result.sshs_legacy_hash}")


def _print_upload(uploaded) -> None:
    if uploaded is None:
        return
    print(f"uploaded v{uploaded.version}: {len(uploaded.uploaded)} file(s), each verified")
    for dest, link in uploaded.manifest_links.items():
        print(f"manifest at {dest.split(' ', 1)[0]}: {link}")
        if dest in uploaded.signature_links:
            print(f"  signature: {uploaded.signature_links[dest]}")
