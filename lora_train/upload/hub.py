"""A Hugging Face Hub model repo through huggingface_hub: one commit per file (so the manifest's commit comes after
every file it lists), each read back from its `resolve` URL and checked (size, sha256). The endpoint is the spec's
`endpoint=`, else HF_ENDPOINT, else huggingface.co, so mirror endpoints work; the token is HF_TOKEN. Large files go
the way huggingface_hub sends them (Xet chunked and deduplicated when hf_xet is installed, else LFS)."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from lora_train.upload.destinations import Destination, Progress, UploadError, canonical

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
READ_CHUNK = 1 << 20


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise UploadError("hf:// destinations need huggingface_hub: pip install huggingface_hub") from None
    return huggingface_hub


class HubDestination(Destination):
    """`hf://org/repo[/folder]?revision=main&endpoint=URL&private=1`."""

    kind = "hf"

    def __init__(self, location: str, options: dict[str, str], repo_id: str, folder: str):
        super().__init__(location, options)
        self.repo_id, self.folder = repo_id, folder
        self.revision = options.get("revision", "main")
        self.endpoint = (options.get("endpoint") or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self._api = None

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = _hub().HfApi(endpoint=self.endpoint, token=os.environ.get("HF_TOKEN") or None)
        return self._api

    def path_in_repo(self, name: str) -> str:
        return f"{self.folder}/{name}" if self.folder else name

    def _fail(self, step: str, exc: Exception) -> UploadError:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return UploadError(f"{self}: {step}: the Hub refused the token (HTTP {status}); set HF_TOKEN to a token "
                               f"with write access to {self.repo_id}")  # fmt: skip
        kind = type(exc).__name__
        return UploadError(f"{self}: {step}: {kind}{f' (HTTP {status})' if status else ''}: {str(exc)[:300]}")

    def check(self) -> None:
        try:
            self.api.create_repo(self.repo_id, repo_type="model", exist_ok=True,
                                 private=self.options.get("private", "") in ("1", "true", "yes"))  # fmt: skip
        except Exception as exc:  # huggingface_hub raises its own HTTP error types (httpx underneath)
            raise self._fail(f"creating or finding repo {self.repo_id}", exc) from None

    def upload(self, path: Path, name: str, sha256: str, progress: Progress | None = None) -> None:
        try:
            self.api.upload_file(path_or_fileobj=str(path), path_in_repo=self.path_in_repo(name),
                                 repo_id=self.repo_id, repo_type="model", revision=self.revision,
                                 commit_message=f"Upload {name}")  # fmt: skip
        except Exception as exc:  # huggingface_hub's HTTP and validation errors all end the upload the same way
            raise self._fail(f"uploading {name}", exc) from None
        size = path.stat().st_size
        if progress:
            progress(size, size)
        self._verify(name, size, sha256)

    def _verify(self, name: str, size: int, sha256: str) -> None:
        """Download the file back from its resolve URL and compare size and sha256."""
        request = urllib.request.Request(self.link(name))
        if token := os.environ.get("HF_TOKEN"):
            request.add_header("Authorization", f"Bearer {token}")
        digest, count = hashlib.sha256(), 0
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                while chunk := response.read(READ_CHUNK):
                    digest.update(chunk)
                    count += len(chunk)
        except (OSError, http.client.HTTPException) as exc:
            raise UploadError(f"{self}: verifying {name}: {exc}") from None
        if (count, digest.hexdigest()) != (size, sha256):
            raise UploadError(f"{self}: verifying {name}: read back {count} bytes, sha256 {digest.hexdigest()}; "
                              f"expected {size} bytes, sha256 {sha256}")  # fmt: skip

    def link(self, name: str) -> str:
        path = urllib.parse.quote(self.path_in_repo(name))
        return f"{self.endpoint}/{self.repo_id}/resolve/{urllib.parse.quote(self.revision, safe='')}/{path}"


def make(parts: urllib.parse.SplitResult, options: dict[str, str]) -> HubDestination:
    """`hf://org/repo[/folder]`."""
    segments = [parts.netloc, *[s for s in parts.path.split("/") if s]]
    if len(segments) < 2 or not all(segments[:2]):
        raise UploadError(f"hf destination {parts.geturl()!r} needs an org and a repo: hf://org/repo[/folder]")
    endpoint = options.get("endpoint", "")
    if endpoint and urllib.parse.urlsplit(endpoint).scheme not in ("http", "https"):
        raise UploadError(f"hf destination: endpoint={endpoint!r} must be an http(s) address")
    return HubDestination(canonical(parts, options), options, "/".join(segments[:2]), "/".join(segments[2:]))
