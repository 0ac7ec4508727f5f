"""A local (or mounted network) folder: copied through a temporary name, read back, then renamed into place."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from lora_train.fsutil import CHUNK, atomic_write, sha256_file
from lora_train.upload.destinations import Destination, Progress, UploadError, canonical, public_base


class FolderDestination(Destination):
    """`folder:/path[?url=https://public/base/]`: links are the public base + name when `url` is given."""

    kind = "folder"

    def __init__(self, location: str, options: dict[str, str], folder: Path):
        super().__init__(location, options)
        self.folder = folder
        self.public = public_base(options, location)

    def check(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UploadError(f"{self}: cannot create the folder: {exc.strerror or exc}") from None
        if not os.access(self.folder, os.W_OK):
            raise UploadError(f"{self}: the folder is not writable")

    def upload(self, path: Path, name: str, sha256: str, progress: Progress | None = None) -> None:
        target = self.folder / name
        total, sent = path.stat().st_size, 0
        try:
            with open(path, "rb") as source, atomic_write(target) as out:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
                    sent += len(chunk)
                    if progress:
                        progress(sent, total)
        except OSError as exc:
            raise UploadError(f"{self}: copying {name} failed: {exc.strerror or exc}") from None
        size, digest = target.stat().st_size, sha256_file(target)
        if (size, digest) != (total, sha256):
            target.unlink(missing_ok=True)
            raise UploadError(f"{self}: {name} read back as {size} bytes, sha256 {digest}; expected {total} bytes, "
                              f"sha256 {sha256}; removed it")  # fmt: skip

    def link(self, name: str) -> str | None:
        return self.public + urllib.parse.quote(name) if self.public else None


def make(parts: urllib.parse.SplitResult, options: dict[str, str]) -> FolderDestination:
    """`folder:/abs/path` or `file:///abs/path`."""
    raw = urllib.parse.unquote(parts.path)
    if not raw:
        raise UploadError("folder destination without a path")
    folder = Path(raw).expanduser().resolve()
    location = canonical(parts._replace(scheme="folder", netloc="", path=str(folder)), options)
    return FolderDestination(location, options, folder)
