"""The fetch cache and final placement.

Layout under the cache folder (never inside the loras folder, so nothing partial is ever visible to ComfyUI):
  blobs/<sha256>          verified files, content-addressed: a file with a known hash is never fetched twice
  partial/<key>.part/.json  an unfinished download + what is needed to resume it after a restart
  urls/<key>.json         sha256 + validators last seen for a link (conditional re-fetch when no hash is given)
  locks/<key>.lock        one fetch per file at a time, across threads and processes
  staging/                archives being unpacked
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from lora_train.fetch.http_client import PartialFile
from lora_train.fsutil import atomic_write_text

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def default_cache_dir() -> Path:
    """`LORA_TRAIN_FETCH_CACHE`, else `~/.cache/lora_train/fetch`."""
    env = os.environ.get("LORA_TRAIN_FETCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lora_train" / "fetch"


def key_for(sha256: str | None, link_key: str) -> str:
    """Cache key of a download: its sha256 when known, else a hash of the link (without its query)."""
    return sha256 or "url-" + hashlib.sha256(link_key.encode()).hexdigest()[:40]


class FetchCache:
    """Paths and locks inside one cache folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def partial(self, key: str) -> PartialFile:
        folder = self.root / "partial"
        folder.mkdir(parents=True, exist_ok=True)
        return PartialFile(folder / f"{key}.part").load()

    def store_blob(self, partial: PartialFile, sha256: str) -> Path:
        """Move a verified partial into the blob store (fsynced, atomic) and forget its sidecar."""
        target = self.blob(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(partial.path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial.path, target)
        partial.discard()
        return target

    def link_record(self, link_key: str) -> dict:
        """What the last fetch of this link saw (sha256, etag, last_modified), or {}."""
        try:
            return json.loads(self._link_path(link_key).read_text())
        except (OSError, ValueError):
            return {}

    def remember_link(self, link_key: str, record: dict) -> None:
        atomic_write_text(self._link_path(link_key), json.dumps(record))

    def _link_path(self, link_key: str) -> Path:
        return self.root / "urls" / (hashlib.sha256(link_key.encode()).hexdigest()[:40] + ".json")

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder for unpacking, removed afterwards."""
        base = self.root / "staging"
        base.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=base))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the file's lock: other threads and processes fetching the same file wait here."""
        with _THREAD_LOCKS_GUARD:
            thread_lock = _THREAD_LOCKS.setdefault(key, threading.Lock())
        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with thread_lock, open(path, "a+b") as handle:
            _lock_file(handle)
            try:
                yield
            finally:
                _unlock_file(handle)


if sys.platform == "win32":
    import msvcrt

    def _lock_file(handle) -> None:
        handle.seek(0)
        while True:
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                return
            except OSError:  # LK_LOCK gives up after ~10 s: keep waiting
                continue

    def _unlock_file(handle) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock_file(handle) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)

    def _unlock_file(handle) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
