"""Where a release can go, written as one string each (`publish --to DEST`, the node's destinations input):

    /srv/www/loras  or  folder:/srv/www/loras?url=https://cdn.example/loras/   a local folder (url: its public base)
    webdav://host:port/remote/path  (webdavs:// for https)  [?url=PUBLIC_BASE]  WebDAV (Nextcloud, rclone, ...)
    s3://bucket/prefix?endpoint=https://s3.example&region=us-east-1&expires=7d   S3-compatible, presigned GET links
    hf://org/repo[/folder]?revision=main&endpoint=https://hf-mirror.example      a Hugging Face Hub model repo

Credentials never go in these strings (they are recorded in the manifest): WebDAV reads LORA_TRAIN_WEBDAV_USER and
LORA_TRAIN_WEBDAV_PASSWORD (or LORA_TRAIN_WEBDAV_TOKEN), S3 boto3's usual chain (AWS_ACCESS_KEY_ID, profiles, ...),
the Hub HF_TOKEN.
"""

from __future__ import annotations

import abc
import importlib
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

# kind -> module in this package holding a class `<Kind>Destination`; imported only when used (boto3 is heavy).
DESTINATION_KINDS = {"folder": "local", "webdav": "webdav", "s3": "s3", "hf": "hub"}
SCHEMES = {"folder": "folder", "file": "folder", "webdav": "webdav", "webdavs": "webdav", "s3": "s3", "hf": "hf"}
EXPIRY_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DEFAULT_EXPIRY_S = 7 * 86400
SECRET_QUERY_KEYS = ("password", "pass", "secret", "token", "key", "aws_secret_access_key")

Progress = Callable[[int, int], None]  # (bytes sent, total)


class UploadError(RuntimeError):
    """An upload failed; the message names the destination (no credentials), the file and the step."""


def parse_expiry(text: str | int | float) -> int:
    """`7d`, `12h`, `30m`, `3600` (seconds) -> seconds; at least 1 s, at most 7 days (SigV4's limit)."""
    if isinstance(text, int | float):
        seconds = int(text)
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", str(text).lower())
        if not match:
            raise UploadError(f"expires must look like 7d, 12h, 30m or 3600 (seconds), got {text!r}")
        seconds = int(match[1]) * EXPIRY_UNITS[match[2] or "s"]
    if not 1 <= seconds <= 7 * 86400:
        raise UploadError(f"expires must be between 1 second and 7 days (S3 presigned links cannot outlive "
                          f"that), got {text!r}")  # fmt: skip
    return seconds


class Destination(abc.ABC):
    """One storage place. Subclasses upload and verify a file, and say which link the manifest lists for it."""

    kind: ClassVar[str]

    def __init__(self, location: str, options: dict[str, str]):
        self.location = location  # canonical spec, credential-free: recorded in the manifest and the card
        self.options = options

    def __str__(self) -> str:
        return f"{self.kind} {self.location}"

    def check(self) -> None:  # noqa: B027 - most destinations have nothing to check
        """Fail early (before any upload) when the destination is unusable: missing bucket, bad credentials."""

    @abc.abstractmethod
    def upload(self, path: Path, name: str, sha256: str, progress: Progress | None = None) -> None:
        """Upload `path` as `name`, then verify size and sha256 there; raise UploadError naming the step."""

    @abc.abstractmethod
    def link(self, name: str) -> str | None:
        """The download link of `name` for the manifest (None: this destination gives none)."""

    def expires(self) -> str | None:
        """When the links from `link` stop working (ISO UTC), or None if they do not expire."""
        return None

    def record(self) -> dict[str, str]:
        """This destination as the manifest records it."""
        entry = {"kind": self.kind, "location": self.location}
        if (when := self.expires()) is not None:
            entry["expires"] = when
        return entry


def _refuse_credentials(spec: str, parts: urllib.parse.SplitResult, options: dict[str, str]) -> None:
    secrets = [key for key in options if key.lower() in SECRET_QUERY_KEYS]
    if parts.username or parts.password or secrets:
        scheme = parts.scheme or "folder"
        hint = {"webdav": "LORA_TRAIN_WEBDAV_USER / LORA_TRAIN_WEBDAV_PASSWORD", "s3": "AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY (or an AWS profile)", "hf": "HF_TOKEN"}.get(SCHEMES.get(scheme, ""),
                                                                               "environment variables")  # fmt: skip
        raise UploadError(f"destination {scheme}://{parts.hostname or ''}{parts.path}: credentials do not go in the "
                          f"destination (it is recorded in the manifest); set {hint} instead")  # fmt: skip


def canonical(parts: urllib.parse.SplitResult, options: dict[str, str]) -> str:
    """The spec rebuilt from its parts, options sorted (so the same destination always reads the same)."""
    query = urllib.parse.urlencode(sorted(options.items()), safe=":/", quote_via=urllib.parse.quote)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def parse_destination(
    spec: str, *, expires: str | int | None = None, default_expires: str | int | None = None
) -> Destination:
    """A Destination from its string (see the module docstring). For S3 links, `expires` overrides the spec's
    `expires=`; `default_expires` applies when the spec gives none."""
    text = spec.strip()
    if not text:
        raise UploadError("empty destination: give a folder, webdav://, s3:// or hf:// destination")
    scheme = re.match(r"^([a-z][a-z0-9+.-]*):", text)
    if not scheme or (len(scheme[1]) == 1 and text[1:3] in (":\\", ":/")):  # a plain path (or a Windows drive)
        path, sep, query = text.partition("?")
        text = "folder:" + str(Path(path).expanduser().resolve()) + sep + query
    parts = urllib.parse.urlsplit(text)
    kind = SCHEMES.get(parts.scheme)
    if kind is None:
        raise UploadError(f"destination {spec!r}: unknown kind {parts.scheme!r}; use a folder path, webdav://, "
                          "webdavs://, s3:// or hf://")  # fmt: skip
    options = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    _refuse_credentials(text, parts, options)
    if kind == "s3" and expires is not None:
        options["expires"] = str(expires)
    elif kind == "s3" and default_expires is not None:
        options.setdefault("expires", str(default_expires))
    module = importlib.import_module(f"{__package__}.{DESTINATION_KINDS[kind]}")
    return module.make(parts, options)


def public_base(options: dict[str, str], where: str) -> str | None:
    """The `url=` option (a public http(s) base folder), checked."""
    url = options.get("url", "").strip()
    if not url:
        return None
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UploadError(f"{where}: url={url!r} must be an http(s) address")
    return url if url.endswith("/") else url + "/"
