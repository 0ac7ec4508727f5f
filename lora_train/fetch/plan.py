"""What to fetch: the files, their links in priority order, and their expected size and sha256.

A plain list of links is one file with mirrors. A single link or local path ending in `.json` is a release
manifest (schema `lora-release/1`, see `lora_train.release.manifest`): the chosen release's files, each with its
mirrors.
`read_release` is the only code that touches the manifest module.
"""

from __future__ import annotations

import http.client
import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lora_train.fetch.http_client import AttemptError, HttpClient
from lora_train.fetch.netpolicy import PolicyError, expand_hf, redact_url
from lora_train.fetch.trust import check_manifest_signature
from lora_train.release import ManifestError, load_manifest

if TYPE_CHECKING:
    from lora_train.fetch.config import FetchConfig

log = logging.getLogger(__name__)

MANIFEST_CAP = 1024 * 1024
FETCHABLE_SUFFIXES = (".safetensors", ".zip")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


@dataclass
class PlannedFile:
    """One file to fetch: its links in order (mirrors after the first), and what it must be."""

    urls: list[str]
    name: str | None = None
    sha256: str | None = None
    size: int | None = None

    @property
    def display_name(self) -> str:
        return self.name or redact_url(self.urls[0])


@dataclass
class Plan:
    """What a fetch will download. `signature`: how the manifest is signed (empty for plain links)."""

    files: list[PlannedFile]
    trigger_words: list[str]
    signature: str = ""


def read_release(raw: bytes, base_url: str | None, version: str) -> tuple[list[PlannedFile], list[str], str]:
    """The files of one release of a manifest, its trigger words and the key id of its claimed signer (raises
    ManifestError)."""
    manifest = load_manifest(raw, base_url=base_url)
    release = manifest.select(version or None)
    files = [PlannedFile(manifest.file_urls(release, f), f.name, f.sha256, f.size) for f in release.files]
    return files, list(manifest.trigger_words), manifest.signer.get("key_id", "")


def is_manifest_link(link: str) -> bool:
    """A link or path whose file name ends in `.json`."""
    path = urllib.parse.urlsplit(link).path if "://" in link else link
    return path.lower().endswith(".json")


def _download_manifest(client: HttpClient, urls: list[str]) -> tuple[bytes, str]:
    problems = []
    for url in urls:
        try:
            response, _final = client.open(url, {})
        except AttemptError as exc:
            problems.append(str(exc))
            continue
        with response:
            if response.status != 200:
                problems.append(f"{redact_url(url)}: HTTP {response.status} {response.reason}")
                continue
            try:
                body = response.read(MANIFEST_CAP + 1)
            except (OSError, http.client.HTTPException) as exc:
                problems.append(f"{redact_url(url)}: {exc}")
                continue
        if len(body) > MANIFEST_CAP:
            problems.append(f"{redact_url(url)}: manifest larger than {MANIFEST_CAP} bytes")
            continue
        return body, url
    raise PolicyError("could not read the release manifest:\n" + "\n".join(f"  - {p}" for p in problems))


def _read_manifest_link(cfg: FetchConfig, client: HttpClient, endpoints: list[str]) -> Plan:
    """The planned files of a manifest link or path, its signature checked."""
    link = cfg.links()[0]
    try:
        if "://" not in link:
            path = Path(link).expanduser()
            raw, base, source = path.read_bytes(), None, str(path)
        else:
            raw, base = _download_manifest(client, expand_hf(link, endpoints))
            source = base
        files, trigger_words, claimed = read_release(raw, base, cfg.version)
    except OSError as exc:
        raise PolicyError(f"cannot read manifest {link}: {exc.strerror or exc}") from None
    except ManifestError as exc:
        raise PolicyError(f"manifest {redact_url(link)}: {exc}") from None
    signature = check_manifest_signature(cfg, raw, source, claimed, client)
    wanted = [f for f in files if f.name and f.name.lower().endswith(FETCHABLE_SUFFIXES)]
    for skipped in (f for f in files if f not in wanted):
        log.info("manifest: skipping %s (only .safetensors and .zip files are fetched)", skipped.name)
    pickles = [f.name for f in files if f.name and f.name.lower().endswith(PICKLE_SUFFIXES)]
    if not wanted and pickles and not cfg.allow_pickle:
        raise PolicyError(f"the release lists only {', '.join(pickles)}: a Python pickle, which can run code when "
                          "loaded, so it was refused; ask the publisher for a .safetensors file")  # fmt: skip
    if not wanted and pickles:
        wanted = [f for f in files if f.name in pickles]
        log.warning("manifest: fetching pickle file(s) %s because allow_pickle is on", ", ".join(pickles))
    if cfg.sha256 and wanted and cfg.sha256 != wanted[0].sha256:
        raise PolicyError(f"the sha256 you gave does not match the manifest's for {wanted[0].name}")
    return Plan(wanted, trigger_words, signature)


def plan_files(cfg: FetchConfig, client: HttpClient, endpoints: list[str]) -> Plan:
    """Turn the config's links (or manifest) into planned files, Hugging Face links expanded onto every endpoint."""
    links = cfg.links()
    if any(is_manifest_link(link) for link in links):
        if len(links) != 1:
            raise PolicyError("give a release manifest (.json) as the only link; its mirrors are listed inside it")
        plan = _read_manifest_link(cfg, client, endpoints)
    else:
        plan = Plan([PlannedFile(links, cfg.filename or None, cfg.sha256 or None, cfg.size or None)], [])
    for item in plan.files:
        item.urls = [expanded for url in item.urls for expanded in expand_hf(url, endpoints)]
    if not plan.files:
        raise PolicyError("the release lists no .safetensors or .zip file")
    return plan
