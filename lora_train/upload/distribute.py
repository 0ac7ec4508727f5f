"""Upload a release folder's newest (or chosen) version to destinations, then list the links in its manifest.

Order, so no manifest ever points at a missing or partial file: check every destination (folder, bucket,
credentials); upload and verify every file of the version (weights, zip, samples) to every destination; only then
add the links and destinations to the manifest, re-render the model card, sign, write them locally, and upload the
card, the signature and the manifest last. Any failure stops before the manifest changes anywhere.

`renew_links` renews the presigned S3 links recorded in a manifest (no file is uploaded again) and publishes the
renewed, re-signed manifest to the version's destinations.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_train.fsutil import atomic_write_text, sha256_file
from lora_train.release import (
    Manifest,
    ManifestError,
    PublishConfig,
    PublishResult,
    SigningError,
    load_manifest,
    publish_lora,
    refresh_model_card,
    signature_path,
    signing_key,
    stamp_signer,
    write_manifest_files,
)
from lora_train.upload.destinations import Destination, UploadError, parse_destination

log = logging.getLogger(__name__)

# (destination, file name, bytes sent, total)
UploadProgress = Callable[[str, str, int, int], None]


@dataclass
class DistributeResult:
    """What was uploaded where, and the links to the uploaded manifest (and its signature)."""

    release_dir: Path
    version: int
    manifest: Manifest
    uploaded: list[str] = field(default_factory=list)  # "<destination>: <file>"
    manifest_links: dict[str, str] = field(default_factory=dict)  # destination -> link to manifest.json
    signature_links: dict[str, str] = field(default_factory=dict)


def _load(release_dir: Path) -> Manifest:
    try:
        return load_manifest(release_dir / "manifest.json")
    except ManifestError as exc:
        raise UploadError(f"{release_dir}: {exc}; publish the LoRA first (it writes the release folder)") from None


def _signer(sign_key: str, manifest: Manifest) -> tuple[Any, str]:
    """The key to sign with; a signed manifest is never silently turned into an unsigned one."""
    try:
        private, name = signing_key(sign_key)
    except SigningError as exc:
        raise UploadError(f"sign_key: {exc}") from None
    if private is None and manifest.signer:
        raise UploadError(f"manifest.json is signed by {manifest.signer.get('name') or manifest.signer['key_id']}: "
                          "pass the signing key (--sign KEY) so the updated manifest is signed again")  # fmt: skip
    return private, name


def _payload(release_dir: Path, manifest: Manifest, version: int) -> list[tuple[Path, str, str]]:
    """(path, name, sha256) of the version's files, each checked against the manifest, plus its sample images."""
    release = manifest.select(version)
    payload = []
    for item in release.files:
        path = release_dir / item.name
        if not path.is_file():
            raise UploadError(f"{path} is listed in manifest.json but missing: restore it before uploading")
        digest = sha256_file(path)
        if (path.stat().st_size, digest) != (item.size, item.sha256):
            raise UploadError(f"{path} differs from manifest.json (sha256 {digest}, expected {item.sha256}): "
                              "restore the published file")  # fmt: skip
        payload.append((path, item.name, item.sha256))
    stem = release.weights.name.removesuffix(".safetensors")
    payload += [(p, p.name, sha256_file(p)) for p in sorted(release_dir.glob(f"{stem}_sample*")) if p.is_file()]
    return payload


def same_object(a: str, b: str) -> bool:
    """Two links to the same object (a renewed presigned link differs only in its query)."""

    def where(url: str) -> tuple[str, str, str]:
        parts = urllib.parse.urlsplit(url)
        return parts.scheme, parts.netloc, urllib.parse.unquote(parts.path)

    return where(a) == where(b)


def _merge_links(old: list[str], fresh: list[str]) -> list[str]:
    """`fresh` first (destination order), then the old links that point elsewhere."""
    return fresh + [url for url in old if not any(same_object(url, new) for new in fresh)]


def _record_destinations(manifest: Manifest, version: int, destinations: list[Destination]) -> None:
    """Each file's links (the new destinations first; mirrors kept) and the version's destination records."""
    release = manifest.select(version)
    for item in release.files:
        # Links as the manifest states them (relative mirrors stay relative): its own, else each mirror + its name.
        current = item.urls or [(m if m.endswith("/") else m + "/") + urllib.parse.quote(item.name)
                                for m in manifest.mirrors]  # fmt: skip
        fresh = [link for dest in destinations if (link := dest.link(item.name))]
        item.urls = _merge_links(current, fresh)
    records = [dest.record() for dest in destinations]
    kept = [r for r in release.destinations if r["location"] not in {n["location"] for n in records}]
    release.destinations = records + kept


def _finish(release_dir: Path, manifest: Manifest, version: int, private: Any, signer: str) -> list[str]:
    """Write the model card and the (signed) manifest locally; returns the names to upload, manifest last."""
    stamp_signer(manifest, private, signer)  # before the card, which names the signer
    atomic_write_text(release_dir / "README.md", refresh_model_card(release_dir, manifest, version))
    return ["README.md", *write_manifest_files(release_dir, manifest, private, signer)]


def _upload_manifest(release_dir: Path, destinations: list[Destination], names: list[str],
                     result: DistributeResult, progress: UploadProgress | None) -> None:  # fmt: skip
    for dest in destinations:
        for name in names:
            path = release_dir / name
            dest.upload(path, name, sha256_file(path), _bound(progress, str(dest), name))
            result.uploaded.append(f"{dest}: {name}")
        if link := dest.link("manifest.json"):
            result.manifest_links[str(dest)] = link
        if signature_path("manifest.json").name in names and (link := dest.link("manifest.json.sig")):
            result.signature_links[str(dest)] = link


def _bound(progress: UploadProgress | None, dest: str, name: str) -> Callable[[int, int], None] | None:
    return (lambda sent, total: progress(dest, name, sent, total)) if progress else None


def distribute_release(
    release_dir: str | Path,
    destinations: list[Destination],
    *,
    version: int | str | None = None,
    sign_key: str = "",
    progress: UploadProgress | None = None,
) -> DistributeResult:
    """Upload one version of a release folder to every destination and publish the manifest (see module doc)."""
    folder = Path(release_dir)
    if not destinations:
        raise UploadError("no destination given: add --to DEST (a folder, webdav://, s3:// or hf://)")
    manifest = _load(folder)
    private, signer = _signer(sign_key, manifest)
    chosen = manifest.select(version).version
    payload = _payload(folder, manifest, chosen)
    for dest in destinations:
        dest.check()
    result = DistributeResult(folder, chosen, manifest)
    for dest in destinations:
        for path, name, sha256 in payload:
            log.info("%s: uploading %s", dest, name)
            dest.upload(path, name, sha256, _bound(progress, str(dest), name))
            result.uploaded.append(f"{dest}: {name}")
    _record_destinations(manifest, chosen, destinations)
    names = _finish(folder, manifest, chosen, private, signer)
    _upload_manifest(folder, destinations, names, result, progress)
    return result


def renew_links(
    release_dir: str | Path, *, expires: str | None = None, sign_key: str = "", progress: UploadProgress | None = None
) -> DistributeResult:
    """Renew every presigned (S3) link the manifest records, re-sign, and upload the card and manifest again."""
    folder = Path(release_dir)
    manifest = _load(folder)
    private, signer = _signer(sign_key, manifest)
    renewed = 0
    for release in manifest.releases:
        for index, record in enumerate(release.destinations):
            if record.get("kind") != "s3":
                continue
            dest = parse_destination(record["location"], expires=expires)
            for item in release.files:
                fresh = dest.link(item.name)
                renewed += sum(same_object(url, fresh) for url in item.urls)
                item.urls = [fresh if same_object(url, fresh) else url for url in item.urls]
            release.destinations[index] = dest.record()
    if not renewed:
        raise UploadError(f"{folder / 'manifest.json'} records no presigned (s3) links to renew")
    latest = manifest.releases[0]
    destinations = [parse_destination(r["location"], expires=expires) for r in latest.destinations]
    names = _finish(folder, manifest, latest.version, private, signer)
    result = DistributeResult(folder, latest.version, manifest)
    _upload_manifest(folder, destinations, names, result, progress)
    log.info("renewed %d presigned link(s) in %s", renewed, folder / "manifest.json")
    return result


def publish_and_upload(
    cfg: PublishConfig,
    lora_path: str | Path,
    releases_dir: str | Path,
    *,
    progress: UploadProgress | None = None,
    publish: Callable[[PublishConfig, str | Path, str | Path], PublishResult] | None = None,
) -> tuple[PublishResult, DistributeResult | None]:
    """Publish `lora_path` (with `publish`, default `publish_lora`), then upload the new version to
    `cfg.destinations`.

    Every destination is parsed before anything is written, so a mistyped one costs nothing. When an upload fails,
    the local release folder is complete and the error says how to retry only the upload."""
    destinations = [parse_destination(spec, default_expires=cfg.link_expiry) for spec in cfg.destinations]
    result = (publish or publish_lora)(cfg, lora_path, releases_dir)
    if not destinations or result.dry_run:
        return result, None
    try:
        uploaded = distribute_release(result.release_dir, destinations, version=result.version,
                                      sign_key=cfg.sign_key, progress=progress)  # fmt: skip
    except UploadError as exc:
        raise UploadError(f"{exc}\nThe release {result.release_dir} is complete locally and no uploaded manifest "
                          "changed; retry the upload with: python -m lora_train publish --release "
                          f"{result.release_dir} --to DEST") from None  # fmt: skip
    return result, uploaded
