"""Publish a peft adapter folder (a language-model LoRA: `adapter_model.safetensors` + `adapter_config.json`) as a
release, the way `publish_lora` publishes a single file: `<name>_v<N>.zip` holding the folder `<name>_v<N>/`
(weights with the release metadata, adapter config, model card), byte-reproducible, plus the release folder's
`README.md` and `manifest.json`. `fetch` unpacks such a zip back into a folder in the loras folder.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

from lora_train.fsutil import atomic_write_text, sha256_file
from lora_train.release import manifest as mf
from lora_train.release.model_card import training_summary
from lora_train.release.publish import (
    ZIP_DATE,
    PublishConfig,
    PublishError,
    PublishResult,
    check_name,
    checked_tensors,
    choose_version,
    commit,
    existing_versions,
    load_previous,
    next_manifest,
    read_lora,
    release_metadata,
    staging,
    tensor_data_sha256,
)
from lora_train.safetensors_file import write_with_metadata

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_folder(path: str | os.PathLike) -> bool:
    """A folder holding a peft adapter's two files."""
    folder = Path(path)
    return folder.is_dir() and (folder / ADAPTER_WEIGHTS).is_file() and (folder / ADAPTER_CONFIG).is_file()


def read_adapter_config(folder: Path) -> dict:
    """The folder's adapter_config.json, checked to be a peft LoRA config."""
    if not is_adapter_folder(folder):
        raise PublishError(f"{folder} is not a peft adapter folder: it needs {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG}")
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PublishError(f"{folder / ADAPTER_CONFIG} is not readable JSON: {exc}") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise PublishError(f"{folder / ADAPTER_CONFIG} has no peft_type: not a peft adapter config")
    return config


def write_folder_zip(path: Path, folder_name: str, members: list[Path]) -> None:
    """A zip of `members` under `folder_name/` whose bytes depend only on names and contents (as publish's zips)."""
    with open(path, "wb") as handle, zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
        for member in sorted(members, key=lambda p: p.name):
            info = zipfile.ZipInfo(f"{folder_name}/{member.name}", date_time=ZIP_DATE)
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            with open(member, "rb") as source, archive.open(info, "w") as out:
                shutil.copyfileobj(source, out, 1 << 20)


def render_adapter_card(
    manifest: mf.Manifest, version: int, metadata: dict[str, str], config: dict, *, versions: bool = True
) -> str:
    """README.md for an adapter release: what it is, how to load it with peft and in ComfyUI, its settings, and
    (`versions`) every version's zip sha256 (left out of the card inside the zip, which cannot name its own)."""
    vname = mf.versioned_name(manifest.name, version)
    release = manifest.select(version)
    base = manifest.base_model or config.get("base_model_name_or_path") or "the base model"
    lines = [f"# {manifest.title}", ""]
    if manifest.description:
        lines += [manifest.description.strip(), ""]
    rows = [("Files", f"`{vname}.zip` -> folder `{vname}/` ({ADAPTER_WEIGHTS}, {ADAPTER_CONFIG})"),
            ("Version", f"v{version} ({release.date})"), ("Base model", base),
            ("Adapter", f"peft {config.get('peft_type', 'LORA')}, r={config.get('r')}, "
                        f"alpha={config.get('lora_alpha')}, DoRA={bool(config.get('use_dora'))}"),
            ("License", manifest.license or "not specified"), ("Data source", manifest.data_source or "not specified"),
            ("Training data sha256", metadata.get("lora_train.data_sha256", "not recorded"))]  # fmt: skip
    lines += ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)]
    lines += [
        "", "## Usage", "", "### transformers + peft", "",
        f"Unzip `{vname}.zip` (or fetch this release's `manifest.json` with `python -m lora_train fetch`), then:", "",
        "```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{base}")',
        f'model = PeftModel.from_pretrained(base, "{vname}")  # or .merge_and_unload() for a plain model', "```",
        "", "### ComfyUI", "",
        f"`python -m lora_train fetch <manifest.json>` (or the **Fetch LoRA** node) puts the folder `{vname}/` into "
        "`models/loras/`. It is an adapter for the language model itself (transformers/peft format); ComfyUI's "
        "LoraLoader applies it only where ComfyUI runs that same model as a text encoder with matching layer names.",
        "", "## Training settings", "",
    ]  # fmt: skip
    summary = training_summary(metadata)
    lines += ["| Setting | Value |", "|---|---|", *(f"| {k} | {v} |" for k, v in summary)] if summary else ["—"]
    if versions:
        lines += ["", "## Versions", "", "| Version | Date | SHA256 |", "|---|---|---|"]
        lines += [f"| v{r.version} | {r.date} | `{r.weights.sha256}` |" for r in manifest.releases]
    if manifest.mirrors:
        lines += ["", "## Download mirrors", ""] + [f"- {url}" for url in manifest.mirrors]
    return "\n".join(lines) + "\n"


def publish_adapter(cfg: PublishConfig, folder: str | os.PathLike, releases_dir: str | os.PathLike) -> PublishResult:
    """Publish the adapter `folder` as the next (or requested) version of `cfg.name` under `releases_dir/<name>/`."""
    name = check_name(cfg.name)
    source = Path(folder)
    adapter_config = read_adapter_config(source)
    header = read_lora(source / ADAPTER_WEIGHTS)
    date = cfg.date or datetime.date.today().isoformat()
    try:
        datetime.date.fromisoformat(date)
    except ValueError:
        raise PublishError(f"date must look like 2026-11-30, got {date!r}") from None
    checked_tensors(source / ADAPTER_WEIGHTS)
    release_dir = Path(releases_dir) / name
    previous = load_previous(release_dir, name)
    version = choose_version(cfg.version, existing_versions(release_dir, name, previous), name)
    vname = mf.versioned_name(name, version)
    metadata = release_metadata(cfg, header.metadata, name, version, date)
    metadata["modelspec.hash_sha256"] = f"0x{tensor_data_sha256(source / ADAPTER_WEIGHTS)}"
    metadata["modelspec.usage_hint"] = f"PeftModel.from_pretrained(base_model, '{vname}')"
    with staging(Path(releases_dir), name, cfg.dry_run) as stage:
        inner = stage / vname
        inner.mkdir()
        write_with_metadata(source / ADAPTER_WEIGHTS, inner / ADAPTER_WEIGHTS, metadata)
        shutil.copyfile(source / ADAPTER_CONFIG, inner / ADAPTER_CONFIG)
        draft = next_manifest(cfg, name, header.metadata, previous, mf.Release(version, date, []))
        card = render_adapter_card(draft, version, metadata, adapter_config, versions=False)
        atomic_write_text(inner / "README.md", card)
        zip_path = stage / f"{vname}.zip"
        write_folder_zip(zip_path, vname, [inner / ADAPTER_WEIGHTS, inner / ADAPTER_CONFIG, inner / "README.md"])
        zip_sha = sha256_file(zip_path)
        entry = mf.ManifestFile(zip_path.name, zip_path.stat().st_size, zip_sha)
        manifest = next_manifest(cfg, name, header.metadata, previous, mf.Release(version, date, [entry]))
        atomic_write_text(stage / "README.md", render_adapter_card(manifest, version, metadata, adapter_config))
        atomic_write_text(stage / "manifest.json", mf.dump_manifest(manifest))
        names = [zip_path.name, "README.md", "manifest.json"]
        if not cfg.dry_run:
            commit(stage, release_dir, names)
    log.info("%s %s v%d (adapter): %s", "would publish" if cfg.dry_run else "published", name, version, release_dir)
    return PublishResult(
        name=name, version=version, release_dir=release_dir, weights_path=release_dir / zip_path.name,
        readme_path=release_dir / "README.md", manifest_path=release_dir / "manifest.json",
        zip_path=release_dir / zip_path.name, written=[release_dir / n for n in names], sha256=zip_sha,
        autov2=zip_sha[:10].upper(), sshs_model_hash="", sshs_legacy_hash="", manifest=manifest, dry_run=cfg.dry_run,
    )  # fmt: skip
