"""Publish a trained LoRA as a release: `<name>_v<N>.safetensors`, model card, hashes, manifest, optional zip.

A release folder (`<releases_dir>/<name>/`) holds every version side by side, so it can be uploaded as is to any
number of mirrors: `manifest.json` (all versions, newest first) and `README.md` describe the latest release. Each
release is built in a hidden staging folder and moved into place only once everything checked out, so bad input
leaves nothing behind; an existing version is never overwritten. A dry run builds in a system temp folder and
reports what it would write.

Hashes, as other tools compute them:
- `sha256`: of the whole published file (manifest, README, Civitai "SHA256"); `autov2`: its first 10 hex digits
  (what A1111 and Civitai show as AutoV2).
- `sshs_model_hash` / `sshs_legacy_hash` (stored in the file's metadata, as kohya sd-scripts does in
  `library/train_util.py: precalculate_safetensors_hashes`): kohya re-serialises the tensors with only the `ss_*`
  metadata, then takes sha256 of everything after the header (A1111's "addnet" hash, Civitai's AutoV3) and, for the
  legacy hash, the first 8 hex of sha256 over bytes [1 MiB, 1 MiB + 64 KiB) of that re-serialised file. We do the
  same re-serialisation with the safetensors library, so the values equal kohya's for the same tensors.
- `modelspec.hash_sha256`: "0x" + sha256 of the tensor data (bytes after the header), as the ModelSpec asks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lora_train.fsutil import atomic_write_text, sha256_file
from lora_train.release import manifest as mf
from lora_train.release.model_card import SAMPLE_SUFFIXES, render_model_card
from lora_train.release.signing import SigningError, signing_key, stamp_signer, write_manifest_files
from lora_train.safetensors_file import SafetensorsError, SafetensorsHeader, read_header, write_with_metadata
from lora_train.settings import Settings, setting

log = logging.getLogger(__name__)

MAX_SAMPLES = 8
LEGACY_HASH_SPAN = (0x100000, 0x100000 + 0x10000)  # kohya / sd-webui-additional-networks legacy hash window
ZIP_DATE = (
    1980,
    1,
    1,
    0,
    0,
    0,
)  # the earliest date a zip entry can hold: fixed, so the same inputs give the same bytes
# kohya's `ss_base_model_version` -> ModelSpec architecture of a LoRA for that base.
ARCHITECTURES = {
    "sd_v1": "stable-diffusion-v1/lora",
    "sd_v2": "stable-diffusion-v2-512/lora",
    "sd_v2_768_v": "stable-diffusion-v2-768-v/lora",
    "sdxl_base_v1-0": "stable-diffusion-xl-v1-base/lora",
    "sd3": "stable-diffusion-3/lora",
    "flux1": "flux-1-dev/lora",
}


class PublishError(ValueError):
    """The LoRA, name, version or earlier releases do not allow publishing; the message says what to fix."""


@dataclass
class PublishConfig(Settings):
    """Everything `publish` needs besides the LoRA file and the releases folder."""

    name: str = setting("", "Release name, purpose_type: lowercase words joined by underscores (pixelart_style, "
                        "jane_character). Files become <name>_v<N>.safetensors.")  # fmt: skip
    version: int = setting(0, "Version number N; 0 = one more than the newest earlier release.", min=0, max=9999)
    title: str = setting("", "Human title for the model card; empty = made from the name.")
    description: str = setting("", "What the LoRA does and how it was made (model card).", multiline=True)
    trigger_words: list[str] = setting([], "Words that activate the LoRA in a prompt, comma separated.")  # noqa: RUF009
    recommended_weight: float = setting(0.8, "Strength to use in LoraLoader / <lora:name:weight>.", min=-5.0, max=5.0,
                                        step=0.05)  # fmt: skip
    base_model: str = setting("", "Base model it was trained on; empty = from the file's metadata.")
    license: str = setting("", "License of the weights (e.g. CreativeML-OpenRAIL-M, CC-BY-4.0).")
    data_source: str = setting("", "Where the training images came from and under which terms.", multiline=True)
    mirrors: list[str] = setting(  # noqa: RUF009
        [],
        "Base URLs where the release folder will be uploaded, in priority order (comma or newline separated); "
        "empty = keep the earlier release's.",
        multiline=True,
    )
    make_zip: bool = setting(False, "Also write <name>_v<N>.zip (weights, model card, samples), byte-reproducible.")
    dry_run: bool = setting(False, "Only list what would be written; write nothing.")
    output_dir: str = setting("", "Folder holding release folders; empty = ComfyUI output/lora_releases "
                              "(node) or ./releases (command line).")  # fmt: skip
    date: str = setting("", "Release date YYYY-MM-DD; empty = today.", advanced=True)
    sign_key: str = setting("", "Ed25519 private key file to sign manifest.json with (python -m lora_train keygen); "
                            "writes manifest.json.sig beside it. Empty = unsigned.", optional=True)  # fmt: skip
    destinations: list[str] = setting(  # noqa: RUF009
        [],
        "Upload the release here, one per line, in priority order: a folder (folder:/srv/www?url=https://public/), "
        "webdav://host/path, s3://bucket/prefix?endpoint=URL or hf://org/repo. Credentials come from environment "
        "variables only. The manifest lists the links, written last, after every upload is verified.",
        multiline=True,
        optional=True,
    )
    link_expiry: str = setting("7d", "How long presigned S3 links stay valid (30m, 12h, 7d; at most 7d). Renew them "
                               "with publish --resign.", optional=True)  # fmt: skip


@dataclass
class PublishResult:
    """What a publish wrote (or, for a dry run, would write)."""

    name: str
    version: int
    release_dir: Path
    weights_path: Path
    readme_path: Path
    manifest_path: Path
    zip_path: Path | None
    written: list[Path]
    sha256: str
    autov2: str
    sshs_model_hash: str
    sshs_legacy_hash: str
    manifest: mf.Manifest
    dry_run: bool = False
    samples: list[Path] = field(default_factory=list)


# ---- checks ----------------------------------------------------------------------------------------------------
def check_name(name: str) -> str:
    """Return `name` if it follows purpose_type, else raise PublishError saying how to fix it."""
    if not name:
        raise PublishError("name is empty: give the release a purpose_type name like pixelart_style")
    versioned = mf.split_versioned_name(name)
    if versioned:
        raise PublishError(f"name {name!r} already carries a version: use name={versioned[0]!r}, "
                           f"version={versioned[1]}")  # fmt: skip
    if not mf.NAME_PATTERN.match(name) or len(name) > 64:
        suggestion = "_".join("".join(c if c.isascii() and c.isalnum() else " " for c in name.lower()).split())
        hint = f" (try {suggestion!r})" if suggestion and mf.NAME_PATTERN.match(suggestion) else ""
        raise PublishError(
            f"name {name!r} breaks the naming convention: lowercase ascii letters and digits in words joined by "
            f"single underscores, starting with a letter, at most 64 chars{hint}"
        )
    if "_" not in name:
        raise PublishError(f"name {name!r} needs a purpose and a type, like {name}_style or {name}_character")
    return name


def read_lora(path: Path) -> SafetensorsHeader:
    """Validate that `path` is a safetensors file with at least one tensor."""
    if not path.is_file():
        raise PublishError(f"LoRA file not found: {path}")
    try:
        header = read_header(path)
    except SafetensorsError as exc:
        raise PublishError(f"{path.name} is not a valid safetensors file ({exc}); publish only takes .safetensors "
                           "(convert .ckpt/.pt files first)") from None  # fmt: skip
    if not header.tensors:
        raise PublishError(f"{path.name} holds no tensors")
    return header


def load_tensors(path: Path) -> dict:
    """All tensors of a safetensors file (torch, imported here: only publishing needs it)."""
    from safetensors.torch import load_file

    return load_file(str(path))


def checked_tensors(path: Path) -> dict:
    """The file's tensors, refused when any floating-point value is NaN or inf."""
    tensors = load_tensors(path)
    bad = nonfinite_tensors(tensors)
    if bad:
        listed = ", ".join(f"{key} ({count})" for key, count in sorted(bad.items())[:5])
        raise PublishError(f"{path.name} holds NaN/inf values in {len(bad)} tensor(s): {listed}; the training "
                           "diverged: lower the learning rate or publish an earlier checkpoint")  # fmt: skip
    return tensors


def nonfinite_tensors(tensors: dict) -> dict[str, int]:
    """Names of floating-point tensors holding NaN or inf, with how many such values each holds."""
    bad = {}
    for key, tensor in tensors.items():
        if tensor.is_floating_point():
            count = int((~tensor.float().isfinite()).sum())
            if count:
                bad[key] = count
    return bad


# ---- hashes ----------------------------------------------------------------------------------------------------
def kohya_hashes(tensors: dict, metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as kohya sd-scripts computes them (see the module docstring)."""
    from safetensors.torch import save

    blob = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header_len = int.from_bytes(blob[:8], "little")
    model_hash = hashlib.sha256(memoryview(blob)[8 + header_len :]).hexdigest()
    start, end = LEGACY_HASH_SPAN
    legacy_hash = hashlib.sha256(memoryview(blob)[start:end]).hexdigest()[:8]
    return model_hash, legacy_hash


def tensor_data_sha256(path: Path) -> str:
    """sha256 of the bytes after the safetensors header (A1111's addnet hash; ModelSpec's hash_sha256)."""
    header = read_header(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(header.data_start)
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def autov2(sha256: str) -> str:
    """AutoV2 short hash: the first 10 hex digits of the whole file's sha256."""
    return sha256[:10].upper()


# ---- metadata --------------------------------------------------------------------------------------------------
def default_title(name: str) -> str:
    """`pixelart_style` -> `Pixelart Style`."""
    return " ".join(word.capitalize() for word in name.split("_"))


def base_model_of(cfg: PublishConfig, metadata: dict[str, str]) -> str:
    """The base model named in the config, else the one the trainer recorded."""
    for value in (cfg.base_model, metadata.get("ss_sd_model_name"), metadata.get("modelspec.architecture")):
        if value:
            return value
    return ""


def release_metadata(cfg: PublishConfig, old: dict[str, str], name: str, version: int, date: str) -> dict[str, str]:
    """The published file's metadata: the trainer's keys kept, release fields and ModelSpec fields set."""
    vname = mf.versioned_name(name, version)
    title = cfg.title or default_title(name)
    usage = f"<lora:{vname}:{cfg.recommended_weight:g}>" + (
        f" {', '.join(cfg.trigger_words)}" if cfg.trigger_words else ""
    )
    metadata = {k: v for k, v in old.items() if not k.startswith(("sshs_", "lora_release."))}
    metadata.update({
        "ss_output_name": vname,  # A1111 uses it as the LoRA's alias in <lora:alias:weight>
        "modelspec.sai_model_spec": old.get("modelspec.sai_model_spec", "1.0.0"),
        "modelspec.title": title,
        "modelspec.description": cfg.description,
        "modelspec.trigger_phrase": ", ".join(cfg.trigger_words),
        "modelspec.usage_hint": usage,
        "modelspec.date": date,
        "modelspec.license": cfg.license,
        "lora_release.name": name,
        "lora_release.version": str(version),
        "lora_release.trigger_words": json.dumps(cfg.trigger_words),
        "lora_release.recommended_weight": f"{cfg.recommended_weight:g}",
        "lora_release.base_model": base_model_of(cfg, old),
        "lora_release.data_source": cfg.data_source,
    })  # fmt: skip
    architecture = old.get("modelspec.architecture") or ARCHITECTURES.get(old.get("ss_base_model_version", ""))
    if architecture:
        metadata["modelspec.architecture"] = architecture
    return metadata


# ---- earlier releases ------------------------------------------------------------------------------------------
def load_previous(release_dir: Path, name: str) -> mf.Manifest | None:
    """The release folder's manifest, checked: right name, and every listed file present matches size and sha256."""
    path = release_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        previous = mf.load_manifest(path)
    except mf.ManifestError as exc:
        raise PublishError(f"{path}: {exc}; fix or remove it before publishing") from None
    if previous.name != name:
        raise PublishError(f"{path} belongs to {previous.name!r}, not {name!r}")
    for release in previous.releases:
        for item in release.files:
            local = release_dir / item.name
            if not local.is_file():
                continue
            size, digest = local.stat().st_size, sha256_file(local)
            if (size, digest) != (item.size, item.sha256):
                raise PublishError(
                    f"{path} says {item.name} has size {item.size}, sha256 {item.sha256}, but the file has size "
                    f"{size}, sha256 {digest}: restore the file or fix the manifest"
                )
    return previous


def existing_versions(release_dir: Path, name: str, previous: mf.Manifest | None) -> set[int]:
    """Versions already published: in the manifest or as `<name>_vN.*` files in the folder."""
    versions = set(previous.versions) if previous else set()
    if release_dir.is_dir():
        for path in release_dir.iterdir():
            parsed = mf.split_versioned_name(path.name.split(".", 1)[0])
            if parsed and parsed[0] == name:
                versions.add(parsed[1])
    return versions


def choose_version(requested: int, existing: set[int], name: str) -> int:
    """The requested version, or the next one; an existing version is refused."""
    if requested == 0:
        return max(existing, default=0) + 1
    if requested in existing:
        proposal = max(existing) + 1
        raise PublishError(f"{mf.versioned_name(name, requested)} already exists and releases are never overwritten; "
                           f"publish as version {proposal} (or version 0 for the next one)")  # fmt: skip
    return requested


def next_manifest(
    cfg: PublishConfig, name: str, metadata: dict[str, str], previous: mf.Manifest | None, release: mf.Release
) -> mf.Manifest:
    """The manifest after this release: card fields from `cfg`, earlier releases kept, mirrors kept unless given."""
    return mf.Manifest(
        name=name, title=cfg.title or default_title(name), description=cfg.description,
        base_model=base_model_of(cfg, metadata), trigger_words=list(cfg.trigger_words),
        recommended_weight=cfg.recommended_weight, license=cfg.license, data_source=cfg.data_source,
        mirrors=list(cfg.mirrors) or (previous.mirrors if previous else []),
        releases=sorted([release, *(previous.releases if previous else [])], key=lambda r: -r.version),
    )  # fmt: skip


def find_samples(lora_path: Path) -> list[Path]:
    """Sample images next to the LoRA: files named `<stem>*.png|jpg|webp` and images in a `<stem>_samples/` folder."""
    stem = lora_path.stem
    candidates = [p for p in lora_path.parent.glob(f"{stem}*") if p.is_file()]
    folder = lora_path.parent / f"{stem}_samples"
    if folder.is_dir():
        candidates += [p for p in folder.iterdir() if p.is_file()]
    images = sorted({p for p in candidates if p.suffix.lower() in SAMPLE_SUFFIXES})
    return images[:MAX_SAMPLES]


# ---- writing ---------------------------------------------------------------------------------------------------
def write_zip(path: Path, members: list[Path]) -> None:
    """A zip whose bytes depend only on the members' names and contents: fixed date, mode, order; stored."""
    import zipfile

    with open(path, "wb") as handle, zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
        for member in sorted(members, key=lambda p: p.name):
            info = zipfile.ZipInfo(member.name, date_time=ZIP_DATE)
            info.create_system = 3  # unix, so the mode below is read the same everywhere
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_STORED
            with open(member, "rb") as source, archive.open(info, "w") as out:
                shutil.copyfileobj(source, out, 1 << 20)


@contextlib.contextmanager
def staging(releases_dir: Path, name: str, dry_run: bool) -> Iterator[Path]:
    """A scratch folder: hidden beside the release folder (same file system, so moves are renames), or in the
    system temp folder for a dry run. Always removed afterwards."""
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="lora_publish_") as tmp:
            yield Path(tmp)
        return
    releases_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.publish-", dir=releases_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit(stage: Path, release_dir: Path, files: list[str]) -> None:
    """Move the staged files into the release folder: new files first, then README.md, manifest.json last."""
    release_dir.mkdir(parents=True, exist_ok=True)
    rewritten = ("README.md", "manifest.json", "manifest.json.sig")
    clashes = [n for n in files if n not in rewritten and (release_dir / n).exists()]
    if clashes:
        raise PublishError(f"{release_dir} already holds {', '.join(clashes)}; releases are never overwritten")
    for file_name in files:
        os.replace(stage / file_name, release_dir / file_name)
    if "manifest.json.sig" not in files:
        (release_dir / "manifest.json.sig").unlink(missing_ok=True)  # an unsigned manifest: the old one is stale


def release_date(cfg: PublishConfig) -> str:
    """The configured date (checked), else today."""
    date = cfg.date or datetime.date.today().isoformat()
    try:
        datetime.date.fromisoformat(date)
    except ValueError:
        raise PublishError(f"date must look like 2026-11-30, got {date!r}") from None
    return date


def _signing_key(cfg: PublishConfig) -> tuple[object | None, str]:
    try:
        return signing_key(cfg.sign_key)
    except SigningError as exc:
        raise PublishError(f"sign_key: {exc}") from None


def _keep_signed(previous: mf.Manifest | None, private: object | None, release_dir: Path) -> None:
    """A signed release stays signed: the next version without the key is refused."""
    if previous is not None and previous.signer and private is None:
        who = previous.signer.get("name") or previous.signer["key_id"]
        raise PublishError(f"{release_dir / 'manifest.json'} is signed by {who}: give sign_key so the new manifest "
                           "is signed too (or delete its \"signer\" entry to publish unsigned)")  # fmt: skip


def publish_lora(cfg: PublishConfig, lora_path: str | os.PathLike, releases_dir: str | os.PathLike) -> PublishResult:
    """Publish `lora_path` as the next (or requested) version of `cfg.name` under `releases_dir/<name>/`."""
    name = check_name(cfg.name)
    source = Path(lora_path)
    header = read_lora(source)
    date = release_date(cfg)
    private, signer = _signing_key(cfg)
    tensors = checked_tensors(source)
    releases_root = Path(releases_dir)
    release_dir = releases_root / name
    previous = load_previous(release_dir, name)
    _keep_signed(previous, private, release_dir)
    version = choose_version(cfg.version, existing_versions(release_dir, name, previous), name)
    vname = mf.versioned_name(name, version)
    metadata = release_metadata(cfg, header.metadata, name, version, date)
    model_hash, legacy_hash = kohya_hashes(tensors, metadata)
    del tensors

    with staging(releases_root, name, cfg.dry_run) as stage:
        weights = stage / f"{vname}.safetensors"
        # The tensor data is copied byte for byte, so its hash is known before the file is written.
        data_hash = tensor_data_sha256(source)
        metadata.update({"sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash,
                         "modelspec.hash_sha256": f"0x{data_hash}"})  # fmt: skip
        write_with_metadata(source, weights, metadata)
        file_sha = sha256_file(weights)
        samples = []
        for index, image in enumerate(find_samples(source), start=1):
            samples.append(stage / f"{vname}_sample{index}{image.suffix.lower()}")
            shutil.copyfile(image, samples[-1])
        entries = [mf.ManifestFile(weights.name, weights.stat().st_size, file_sha)]
        manifest = next_manifest(cfg, name, header.metadata, previous, mf.Release(version, date, entries))
        stamp_signer(manifest, private, signer)  # before the card, which names the signer
        hashes = {"sha256": file_sha, "autov2": autov2(file_sha), "sshs_model_hash": model_hash}
        card = render_model_card(manifest, version, metadata, [p.name for p in samples], hashes)
        atomic_write_text(stage / "README.md", card)
        zip_path = None
        if cfg.make_zip:
            zip_path = stage / f"{vname}.zip"
            write_zip(zip_path, [weights, stage / "README.md", *samples])
            zip_entry = mf.ManifestFile(zip_path.name, zip_path.stat().st_size, sha256_file(zip_path))
            manifest.select(version).files.append(zip_entry)  # after the card: the zip holds the card
        manifest_names = write_manifest_files(stage, manifest, private, signer)
        names = [weights.name, *(p.name for p in samples), *([zip_path.name] if zip_path else []),
                 "README.md", *manifest_names]  # fmt: skip
        if not cfg.dry_run:
            commit(stage, release_dir, names)
    result = PublishResult(
        name=name, version=version, release_dir=release_dir, weights_path=release_dir / weights.name,
        readme_path=release_dir / "README.md", manifest_path=release_dir / "manifest.json",
        zip_path=release_dir / zip_path.name if zip_path else None, written=[release_dir / n for n in names],
        sha256=file_sha, autov2=autov2(file_sha), sshs_model_hash=model_hash, sshs_legacy_hash=legacy_hash,
        manifest=manifest, dry_run=cfg.dry_run, samples=[release_dir / p.name for p in samples],
    )  # fmt: skip
    log.info("%s %s v%d: %s", "would publish" if cfg.dry_run else "published", name, version, release_dir)
    return result


def refresh_model_card(release_dir: Path, manifest: mf.Manifest, version: int) -> str:
    """The README.md of `version` rendered again from `manifest` (after uploads added destinations or a signer)."""
    release = manifest.select(version)
    weights = release_dir / release.weights.name
    metadata = read_header(weights).metadata
    vname = mf.versioned_name(manifest.name, version)
    samples = sorted(p.name for p in release_dir.glob(f"{vname}_sample*") if p.suffix.lower() in SAMPLE_SUFFIXES)
    sha = release.weights.sha256
    hashes = {"sha256": sha, "autov2": autov2(sha), "sshs_model_hash": metadata.get("sshs_model_hash", "")}
    return render_model_card(manifest, version, metadata, samples, hashes)


def result_summary(result: PublishResult) -> dict:
    """The result as plain JSON-able values (CLI output, node UI)."""
    body = dataclasses.asdict(result)
    body["manifest"] = result.manifest.to_dict()
    return json.loads(json.dumps(body, default=str))
