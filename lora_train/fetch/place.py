"""Final placement: verified files into the loras folder (or a subfolder), never anywhere else.

Names are sanitised, the folder is checked to stay inside the loras folder after resolving links, an existing
different file is never silently replaced, and every file appears by atomic rename of a hard link (or copy) made
under a temporary name. Archives are unpacked into a staging folder first and all their targets checked before
the first one is placed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from lora_train.fetch import archive
from lora_train.fsutil import atomic_folder, sha256_file
from lora_train.safetensors_file import read_header

SUFFIX_FOR_KIND = {"safetensors": ".safetensors", "zip": ".zip", "pickle": ".ckpt"}


class PlacementError(ValueError):
    """The destination is outside the loras folder, is a link, or holds a different file; the message says which."""


def destination_dir(loras_dir: Path, subfolder: str) -> Path:
    """`loras_dir/subfolder`, created, after checking (with links resolved) that it stays inside `loras_dir`."""
    root = Path(loras_dir).resolve()
    parts = [p for p in subfolder.replace("\\", "/").split("/") if p not in ("", ".")]
    if subfolder.strip().startswith(("/", "\\")) or any(p == ".." or ":" in p for p in parts):
        raise PlacementError(f"subfolder {subfolder!r} must be a relative folder inside the loras folder (no '..')")
    target = root.joinpath(*parts)
    target.mkdir(parents=True, exist_ok=True)
    resolved = target.resolve()
    if not resolved.is_relative_to(root):
        raise PlacementError(f"subfolder {subfolder!r} leads outside the loras folder ({resolved}) through a link")
    return resolved


def check_target(target: Path, source: Path, sha256: str, *, overwrite: bool) -> bool:
    """True when `target` already holds exactly this content; raises when it may not be replaced."""
    if target.is_symlink():
        raise PlacementError(f"{target} is a link; remove it or choose another file name")
    if not target.exists():
        return False
    if target.stat().st_size == source.stat().st_size and sha256_file(target) == sha256:
        return True
    if not overwrite:
        raise PlacementError(
            f"{target} already exists with different content; turn on overwrite or choose another file name or "
            "subfolder"
        )
    return False


def place(source: Path, dest_dir: Path, name: str, sha256: str, *, overwrite: bool) -> tuple[Path, bool]:
    """Put `source` at `dest_dir/name` atomically; returns (path, changed). Same content already there: no-op."""
    target = dest_dir / name
    if check_target(target, source, sha256, overwrite=overwrite):
        return target, False
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()
        try:
            os.link(source, tmp)  # same file system: no copy, no extra disk space
        except OSError:
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return target, True


def disposition_name(header: str) -> str:
    """The file name of a Content-Disposition header, or ""."""
    match = re.search(r"filename\*=UTF-8''([^;]+)", header, re.IGNORECASE) or re.search(
        r'filename="?([^";]+)"?', header, re.IGNORECASE
    )
    return urllib.parse.unquote(match.group(1)) if match else ""


def url_name(url: str) -> str:
    """The last path segment of a link, unquoted."""
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def final_name(kind: str, candidates: list[str]) -> str:
    """The first candidate with the right suffix for `kind` (else the first one, suffix fixed), sanitised."""
    wanted = SUFFIX_FOR_KIND.get(kind, ".safetensors")
    good = [c for c in candidates if c and Path(c).suffix.lower() in (wanted, *archive.PICKLE_SUFFIXES)]
    name = archive.sanitize_name(good[0] if good else next((c for c in candidates if c), "lora"))
    if kind == "pickle":
        return name if Path(name).suffix.lower() in archive.PICKLE_SUFFIXES else name + wanted
    return name if name.lower().endswith(wanted) else Path(name).stem + wanted


def place_blob(
    blob: Path,
    kind: str,
    sha256: str,
    names: list[str],
    dest_dir: Path,
    *,
    staging: Callable[[], AbstractContextManager[Path]],
    filename: str,
    overwrite: bool,
    limits: archive.ZipLimits,
) -> tuple[dict[Path, str], bool]:
    """Put a verified blob in `dest_dir`, unpacking archives; returns {path: sha256} and whether anything changed."""
    if kind != "zip":
        path, changed = place(blob, dest_dir, final_name(kind, [filename, *names]), sha256, overwrite=overwrite)
        return {path: sha256}, changed
    with staging() as folder:
        members = archive.extract_members(blob, folder, limits)
        if set(archive.ADAPTER_FILES) <= {name for name, _ in members}:
            read_header(dict(members)[archive.ADAPTER_FILES[0]])
            stem = Path(archive.sanitize_name(filename or next((n for n in names if n), "adapter"))).stem
            return place_adapter_folder(members, dest_dir, stem, overwrite=overwrite)
        weights = [(n, p) for n, p in members if n.lower().endswith(".safetensors")]
        if not weights:
            raise archive.ArchiveError("the archive holds no .safetensors file")
        for _name, path in weights:
            read_header(path)
        cards = [(n, p) for n, p in members if n.lower().endswith(".md")]
        renames = {}
        if len(weights) == 1:
            renames[weights[0][0]] = archive.sanitize_name(filename) if filename else weights[0][0]
            if len(cards) == 1:  # one LoRA + one card: the card sits beside it, same stem
                renames[cards[0][0]] = Path(renames[weights[0][0]]).stem + ".md"
        planned = [(path, renames.get(name, name), sha256_file(path)) for name, path in weights + cards]
        for path, name, digest in planned:  # all or nothing: check every target before placing the first
            check_target(dest_dir / name, path, digest, overwrite=overwrite)
        placed, any_changed = {}, False
        for path, name, digest in planned:
            target, changed = place(path, dest_dir, name, digest, overwrite=overwrite)
            placed[target] = digest
            any_changed |= changed
    return placed, any_changed


def place_adapter_folder(
    members: list[tuple[str, Path]], dest_dir: Path, folder_name: str, *, overwrite: bool
) -> tuple[dict[Path, str], bool]:
    """A peft adapter archive's files as the folder `dest_dir/folder_name/` (weights first in the result), swapped
    in whole; the same content already there is a no-op, different content needs `overwrite`."""
    target = dest_dir / folder_name
    planned = sorted(((name, path, sha256_file(path)) for name, path in members),
                     key=lambda entry: entry[0] != archive.ADAPTER_FILES[0])  # fmt: skip
    placed = {target / name: digest for name, _, digest in planned}
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise PlacementError(f"{target} exists and is not a folder; remove it or choose another file name")
    if target.is_dir():
        if all(p.is_file() and sha256_file(p) == digest for p, digest in placed.items()):
            return placed, False
        if not overwrite:
            raise PlacementError(f"{target} already exists with different content; turn on overwrite or choose "
                                 "another file name or subfolder")  # fmt: skip
    with atomic_folder(target) as building:
        for name, path, _ in planned:
            shutil.copyfile(path, building / name)
    return placed, True
