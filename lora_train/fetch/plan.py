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
from lora_train.release import ManifestError, load_manifest

if TYPE_CHECKING:
    from lora_train.fetch.config import FetchConfig

log = logging.getLogger(__name__)

MANIFEST_CAP = 1024 * 1024
FETCHABLE_SUFFIXES = (".safetensors", ".zip")


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


def read_release(raw: bytes, base_url: str | None, version: str) -> tuple[list[PlannedFile], list[str]]:
    """The files of one release of a manifest, and its trigger words (raises ManifestError)."""
    manifest = load_manifest(raw, base_url=base_url)
    release = manifest.select(version or None)
    files = [PlannedFile(manifest.file_urls(release, f), f.name, f.sha256, f.size) for f in release.files]
    return files, list(manifest.trigger_words)


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


def plan_files(cfg: FetchConfig, client: HttpClient, endpoints: list[str]) -> tuple[list[PlannedFile], list[str]]:
    """Turn the config's links (or manifest) into planned files, Hugging Face links expanded onto every endpoint."""
    links = cfg.links()
    if any(is_manifest_link(link) for link in links):
        if len(links) != 1:
            raise PolicyError("give a release manifest (.json) as the only link; its mirrors are listed inside it")
        link = links[0]
        try:
            if "://" not in link:
                path = Path(link).expanduser()
                raw, base = path.read_bytes(), None
            else:
                raw, base = _download_manifest(client, expand_hf(link, endpoints))
            files, trigger_words = read_release(raw, base, cfg.version)
        except OSError as exc:
            raise PolicyError(f"cannot read manifest {link}: {exc.strerror or exc}") from None
        except ManifestError as exc:
            raise PolicyError(f"manifest {redact_url(link)}: {exc}") from None
        wanted = [f for f in files if f.name and f.name.lower().endswith(FETCHABLE_SUFFIXES)]
        for skipped in (f for f in files if f not in wanted):
            log.info("manifest: skipping %s (only .safetensors and .zip files are fetched)", skipped.name)
        if cfg.sha256 and wanted and cfg.sha256 != wanted[0].sha256:
            raise PolicyError(f"the sha256 you gave does not match the manifest's for {wanted[0].name}")
    else:
        wanted = [PlannedFile(links, cfg.filename or None, cfg.sha256 or None, cfg.size or None)]
        trigger_words = []
    for item in wanted:
        item.urls = [expanded for url in item.urls for expanded in expand_hf(url, endpoints)]
    if not wanted:
        raise PolicyError("the release lists no .safetensors or .zip file")
    return wanted, trigger_words
