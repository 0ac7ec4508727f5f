"""Stand-in for `lora_train.manifest` (being written on the `publish` branch) with the same small API that
`fetchplan.read_release` uses. Delete this file once `lora_train/manifest.py` is on main."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field


class ManifestError(ValueError):
    """The manifest is unreadable or does not hold what was asked for."""


@dataclass
class ManifestFile:
    name: str
    size: int
    sha256: str
    urls: list[str] = field(default_factory=list)


@dataclass
class Release:
    version: int
    files: list[ManifestFile]


@dataclass
class Manifest:
    name: str
    mirrors: list[str]
    releases: list[Release]
    trigger_words: list[str]
    base_url: str | None

    def select(self, version: int | str | None = None) -> Release:
        if version in (None, "", "latest"):
            return self.releases[0]
        text = str(version).removeprefix(f"{self.name}_").lstrip("vV")
        for release in self.releases:
            if str(release.version) == text:
                return release
        raise ManifestError(f"{self.name} has no version {version!r}")

    def file_urls(self, release: Release, file: ManifestFile) -> list[str]:
        del release
        urls = file.urls or [m.rstrip("/") + "/" + urllib.parse.quote(file.name) for m in self.mirrors]
        return [urllib.parse.urljoin(self.base_url or "", u) for u in urls]


def load_manifest(source: bytes, base_url: str | None = None) -> Manifest:
    try:
        data = json.loads(source)
        releases = [
            Release(
                r["version"], [ManifestFile(f["name"], f["size"], f["sha256"], f.get("urls", [])) for f in r["files"]]
            )
            for r in data["releases"]
        ]
        releases.sort(key=lambda r: -r.version)
        return Manifest(data["name"], data.get("mirrors", []), releases, data.get("trigger_words", []), base_url)
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"invalid manifest: {exc}") from None
