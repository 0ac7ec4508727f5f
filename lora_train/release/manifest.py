"""The release manifest (`manifest.json`, schema `lora-release/1`): what `publish` writes and `fetch` reads.

One manifest describes one LoRA: its model card fields, the mirrors its files are served from (in priority order)
and every release (version, date, files with size and sha256), newest first. The JSON Schema for it lives in
`lora_train/release/schemas/manifest.schema.json`; `validate_manifest` checks the same rules with the standard library
and reports every problem with the path of the field (`releases[0].files[1].sha256: ...`).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_ID = "lora-release/1"
SCHEMA_FAMILY = "lora-release/"
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "manifest.schema.json"

# purpose_type: lowercase ascii words joined by single underscores, starting with a letter. The version is not
# part of the name: files are named `<name>_v<N>.safetensors`.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
VERSIONED_PATTERN = re.compile(r"^(?P<name>[a-z][a-z0-9]*(?:_[a-z0-9]+)*)_v(?P<version>[1-9][0-9]*)$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
DATE_PATTERN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
URL_SCHEMES = ("http", "https")

TOP_KEYS = ("schema", "name", "title", "description", "base_model", "trigger_words", "recommended_weight", "license",
            "data_source", "mirrors", "signer", "releases")  # fmt: skip
REQUIRED_TOP = ("schema", "name", "releases")
RELEASE_KEYS = ("version", "date", "files", "destinations")
REQUIRED_RELEASE = ("version", "date", "files")
SIGNER_KEYS = ("key_id", "name")
DESTINATION_KEYS = ("kind", "location", "expires")
KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
FILE_KEYS = ("name", "size", "sha256", "urls")
REQUIRED_FILE = ("name", "size", "sha256")


class ManifestError(ValueError):
    """A manifest is unreadable or invalid, or asks for something it does not hold; the message names the field."""


@dataclass
class ManifestFile:
    """One file of a release. `urls` (optional) overrides the manifest's mirrors for this file."""

    name: str
    size: int
    sha256: str
    urls: list[str] = field(default_factory=list)


@dataclass
class Release:
    """One published version: `version` is the N of `<name>_vN`, `date` is ISO `YYYY-MM-DD`.

    `destinations` records where it was uploaded: `{"kind": "s3", "location": "s3://bucket/prefix?...",
    "expires": "2026-12-08T12:00:00Z"}` (no credentials; `expires` only for signed links)."""

    version: int
    date: str
    files: list[ManifestFile]
    destinations: list[dict[str, str]] = field(default_factory=list)

    @property
    def weights(self) -> ManifestFile:
        """The release's `.safetensors` file (the first one if there are several); for an adapter-folder release,
        which ships as a zip only, that zip."""
        for suffix in (".safetensors", ".zip"):
            for item in self.files:
                if item.name.endswith(suffix):
                    return item
        raise ManifestError(f"release v{self.version} lists no .safetensors or .zip file")


@dataclass
class Manifest:
    """A whole manifest. `releases` are newest first; `base_url` (not serialised) resolves relative URLs."""

    name: str
    title: str = ""
    description: str = ""
    base_model: str = ""
    trigger_words: list[str] = field(default_factory=list)
    recommended_weight: float = 1.0
    license: str = ""
    data_source: str = ""
    mirrors: list[str] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    signer: dict[str, str] = field(default_factory=dict)  # {"key_id": 16 hex, "name": ...}; empty = unsigned
    base_url: str | None = None

    @property
    def versions(self) -> list[int]:
        """Version numbers, newest first."""
        return [release.version for release in self.releases]

    def select(self, version: int | str | None = None) -> Release:
        """The release asked for: None = latest; `2`, `"2"`, `"v2"`, `"<name>_v2"` or its file name = version 2."""
        if not self.releases:
            raise ManifestError(f"manifest {self.name!r} lists no releases")
        if version is None or version == "" or version == "latest":
            return self.releases[0]
        wanted = _parse_version(self.name, version)
        for release in self.releases:
            if release.version == wanted:
                return release
        available = ", ".join(f"v{v}" for v in self.versions)
        raise ManifestError(f"{self.name} has no version {version!r}; available: {available}")

    def file_urls(self, release: Release, file: ManifestFile) -> list[str]:
        """Where `file` can be downloaded, in priority order: its own `urls`, else each mirror + its name."""
        del release  # every release shares the mirrors; kept in the signature so per-release layouts can follow
        candidates = list(file.urls) or [_as_folder(mirror) + urllib.parse.quote(file.name) for mirror in self.mirrors]
        if not candidates:
            raise ManifestError(f"{file.name}: the manifest lists no mirrors and the file has no urls")
        return [self._absolute(url) for url in candidates]

    def _absolute(self, url: str) -> str:
        if urllib.parse.urlsplit(url).scheme:
            return url
        if not self.base_url:
            raise ManifestError(f"relative URL {url!r} needs a base_url (load the manifest from its URL or file)")
        return urllib.parse.urljoin(self.base_url, url)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (without `base_url`)."""
        body = dataclasses.asdict(self)
        body.pop("base_url")
        if not body["signer"]:
            body.pop("signer")
        for release in body["releases"]:
            if not release["destinations"]:
                release.pop("destinations")
        body["releases"] = sorted(body["releases"], key=lambda r: -r["version"])
        return {"schema": SCHEMA_ID, **body}


def versioned_name(name: str, version: int) -> str:
    """`pixelart_style`, 3 -> `pixelart_style_v3`."""
    return f"{name}_v{version}"


def split_versioned_name(stem: str) -> tuple[str, int] | None:
    """`pixelart_style_v3` -> ("pixelart_style", 3); None if `stem` does not follow the convention."""
    match = VERSIONED_PATTERN.match(stem)
    return (match["name"], int(match["version"])) if match else None


def _parse_version(name: str, version: int | str) -> int:
    if isinstance(version, int) and not isinstance(version, bool):
        return version
    text = str(version).strip()
    text = text.removesuffix(".safetensors").removesuffix(".zip")
    text = text.removeprefix(f"{name}_")
    text = text[1:] if text[:1] in ("v", "V") else text
    if not text.isdigit():
        raise ManifestError(f"version {version!r} is not a version: use 3, 'v3' or '{name}_v3'")
    return int(text)


def _as_folder(url: str) -> str:
    return url if url.endswith("/") else url + "/"


# ---- validation ------------------------------------------------------------------------------------------------
def _unknown_keys(where: str, found: dict, known: tuple[str, ...]) -> list[str]:
    problems = []
    for key in found:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            problems.append(f"{where}{key}: unknown field{extra}")
    return problems


def _duplicates(values: list) -> list:
    return sorted({v for v in values if values.count(v) > 1})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_url(where: str, url: Any) -> list[str]:
    if not isinstance(url, str) or not url:
        return [f"{where}: must be a non-empty string URL"]
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme and scheme not in URL_SCHEMES:
        return [f"{where}: URL scheme {scheme!r} is not allowed (use http or https, or a relative URL)"]
    return []


def _check_string_list(where: str, value: Any, *, urls: bool = False) -> list[str]:
    if not isinstance(value, list):
        return [f"{where}: must be a list"]
    problems = []
    for index, item in enumerate(value):
        if urls:
            problems += _check_url(f"{where}[{index}]", item)
        elif not isinstance(item, str):
            problems.append(f"{where}[{index}]: must be a string")
    return problems


def _check_file(where: str, entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{where}: must be an object with name, size, sha256"]
    problems = _unknown_keys(f"{where}.", entry, FILE_KEYS)
    problems += [f"{where}.{key}: missing" for key in REQUIRED_FILE if key not in entry]
    name = entry.get("name")
    if "name" in entry and (
        not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name
    ):
        problems.append(f"{where}.name: must be a plain file name (no folders, not hidden), got {name!r}")
    size = entry.get("size")
    if "size" in entry and (not _is_int(size) or size < 0):
        problems.append(f"{where}.size: must be a whole number of bytes >= 0, got {size!r}")
    digest = entry.get("sha256")
    if "sha256" in entry and (not isinstance(digest, str) or not SHA256_PATTERN.match(digest)):
        problems.append(f"{where}.sha256: must be 64 lowercase hex digits, got {digest!r}")
    if "urls" in entry:
        problems += _check_string_list(f"{where}.urls", entry["urls"], urls=True)
    return problems


def _check_release(where: str, entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{where}: must be an object with version, date, files"]
    problems = _unknown_keys(f"{where}.", entry, RELEASE_KEYS)
    problems += [f"{where}.{key}: missing" for key in REQUIRED_RELEASE if key not in entry]
    if "destinations" in entry:
        problems += _check_destinations(f"{where}.destinations", entry["destinations"])
    version = entry.get("version")
    if "version" in entry and (not _is_int(version) or version < 1):
        problems.append(f"{where}.version: must be a whole number >= 1, got {version!r}")
    date = entry.get("date")
    if "date" in entry:
        try:
            if not isinstance(date, str) or not DATE_PATTERN.match(date):
                raise ValueError(date)
            datetime.date.fromisoformat(date)
        except ValueError:
            problems.append(f"{where}.date: must be a date like 2026-11-30, got {date!r}")
    files = entry.get("files")
    if "files" in entry:
        if not isinstance(files, list) or not files:
            problems.append(f"{where}.files: must be a non-empty list")
        else:
            for index, item in enumerate(files):
                problems += _check_file(f"{where}.files[{index}]", item)
            names = [item.get("name") for item in files if isinstance(item, dict)]
            problems += [f"{where}.files: {n!r} listed twice" for n in _duplicates(names)]
    return problems


def _check_destinations(where: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        return [f"{where}: must be a list"]
    problems = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            problems.append(f"{where}[{index}]: must be an object with kind and location")
            continue
        problems += _unknown_keys(f"{where}[{index}].", item, DESTINATION_KEYS)
        problems += [f"{where}[{index}].{key}: missing" for key in ("kind", "location") if key not in item]
        problems += [f"{where}[{index}].{k}: must be a string" for k, v in item.items() if not isinstance(v, str)]
    return problems


def _check_signer(value: Any) -> list[str]:
    if not isinstance(value, dict):
        return ["signer: must be an object with key_id and name"]
    problems = _unknown_keys("signer.", value, SIGNER_KEYS)
    if not isinstance(value.get("key_id"), str) or not KEY_ID_PATTERN.match(value["key_id"]):
        problems.append(f"signer.key_id: must be 16 lowercase hex digits, got {value.get('key_id')!r}")
    if not isinstance(value.get("name", ""), str):
        problems.append("signer.name: must be a string")
    return problems


def _check_schema_id(value: Any) -> list[str]:
    if value == SCHEMA_ID:
        return []
    if isinstance(value, str) and value.startswith(SCHEMA_FAMILY):
        return [
            f"schema: unknown schema version {value!r}; this lora_train reads {SCHEMA_ID!r} (update the extension)"
        ]
    return [f"schema: must be {SCHEMA_ID!r}, got {value!r} (is this a lora-release manifest?)"]


def validate_manifest(data: Any) -> list[str]:
    """Every problem in a decoded manifest, each prefixed with the field's path; empty when valid."""
    if not isinstance(data, dict):
        return [f"manifest: must be a JSON object, got {type(data).__name__}"]
    problems = [f"{key}: missing" for key in REQUIRED_TOP if key not in data]
    if "schema" in data:
        problems += _check_schema_id(data["schema"])
        if problems and data["schema"] != SCHEMA_ID:
            return problems  # another schema's fields would only add noise
    problems += _unknown_keys("", data, TOP_KEYS)
    name = data.get("name")
    if "name" in data and (not isinstance(name, str) or not NAME_PATTERN.match(name)):
        problems.append(
            f"name: must be lowercase ascii words joined by underscores (like pixelart_style), got {name!r}"
        )
    for key in ("title", "description", "base_model", "license", "data_source"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"{key}: must be a string")
    if "trigger_words" in data:
        problems += _check_string_list("trigger_words", data["trigger_words"])
    if "mirrors" in data:
        problems += _check_string_list("mirrors", data["mirrors"], urls=True)
    if "signer" in data:
        problems += _check_signer(data["signer"])
    weight = data.get("recommended_weight")
    if "recommended_weight" in data and (
        isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight)
    ):
        problems.append(f"recommended_weight: must be a finite number, got {weight!r}")
    releases = data.get("releases")
    if "releases" in data:
        if not isinstance(releases, list) or not releases:
            problems.append("releases: must be a non-empty list")
        else:
            for index, entry in enumerate(releases):
                problems += _check_release(f"releases[{index}]", entry)
            versions = [r.get("version") for r in releases if isinstance(r, dict) and _is_int(r.get("version"))]
            problems += [f"releases: version {v} listed twice" for v in _duplicates(versions)]
    return problems


# ---- loading and writing ---------------------------------------------------------------------------------------
def manifest_from_dict(data: dict[str, Any], base_url: str | None = None) -> Manifest:
    """Validate a decoded manifest and build the dataclasses (releases sorted newest first)."""
    problems = validate_manifest(data)
    if problems:
        raise ManifestError("invalid manifest: " + "; ".join(problems))
    releases = [
        Release(r["version"], r["date"], [ManifestFile(f["name"], f["size"], f["sha256"], list(f.get("urls", [])))
                                          for f in r["files"]], [dict(d) for d in r.get("destinations", [])])
        for r in data["releases"]
    ]  # fmt: skip
    releases.sort(key=lambda r: -r.version)
    card = {key: data[key] for key in TOP_KEYS if key in data and key not in ("schema", "releases")}
    if "signer" in card:
        card["signer"] = dict(card["signer"])
    if "recommended_weight" in card:
        card["recommended_weight"] = float(card["recommended_weight"])
    return Manifest(**card, releases=releases, base_url=base_url)


def load_manifest(source: str | os.PathLike | bytes, base_url: str | None = None) -> Manifest:
    """Load and validate a manifest from JSON text/bytes or a file path.

    For a file, relative URLs resolve against the file's folder unless `base_url` is given.
    """
    if isinstance(source, bytes | bytearray):
        text = _decode(bytes(source), "manifest")
    elif isinstance(source, str) and source.lstrip().startswith("{"):
        text = source
    else:
        path = Path(source)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
        text = _decode(raw, str(path))
        if base_url is None:
            base_url = path.resolve().parent.as_uri() + "/"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    return manifest_from_dict(data, base_url)


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"{where}: manifest is not UTF-8 text") from None


def dump_manifest(manifest: Manifest) -> str:
    """Stable JSON text: sorted keys, 2-space indent, releases newest first, trailing newline."""
    data = manifest.to_dict()
    problems = validate_manifest(data)
    if problems:
        raise ManifestError("refusing to write an invalid manifest: " + "; ".join(problems))
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
