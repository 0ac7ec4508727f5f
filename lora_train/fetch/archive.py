"""What a downloaded file really is (by its bytes, not its name), and safe unpacking of `.zip` releases.

Zip members are unpacked one by one into a staging folder: names that climb out of the archive, absolute paths,
links and encrypted members refuse the whole archive; sizes and compression ratios are capped (zip bombs) and
counted while reading, since a hostile archive can lie in its headers. Only `.safetensors`, the model card
(`.md`) and a peft adapter's `adapter_config.json` are kept.
"""

from __future__ import annotations

import html
import logging
import re
import shutil
import stat
import struct
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lora_train.safetensors_file import MAX_HEADER_BYTES

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
KEEP_SUFFIXES = (".safetensors", ".md")
# A peft adapter folder (language-model LoRA) ships as a zip of these two files (+ card): it is placed as a folder.
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
MAX_NAME_CHARS = 180
_WINDOWS_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(1, 10)),
    *(f"lpt{i}" for i in range(1, 10)),
}


class ArchiveError(ValueError):
    """The archive is unsafe or broken; the message names the member and the limit or rule it broke."""


# ---- sniffing -----------------------------------------------------------------------------------------------------
def _looks_like_safetensors(prefix: bytes) -> bool:
    if len(prefix) < 9:
        return False
    (header_len,) = struct.unpack("<Q", prefix[:8])
    return 2 <= header_len <= MAX_HEADER_BYTES and prefix[8:9] == b"{"


def sniff_kind(prefix: bytes) -> str:
    """The file's kind from its first bytes: safetensors, zip, pickle, html, json, text or unknown."""
    if _looks_like_safetensors(prefix):
        return "safetensors"
    if prefix[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        return "pickle"
    text = prefix.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] == b"<":
        return "html"
    if text[:1] in (b"{", b"["):
        return "json"
    try:
        prefix[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return "unknown"
    return "text" if prefix else "unknown"


def describe_error_page(prefix: bytes) -> str:
    """A short, safe summary of an HTML/JSON/text body: its <title> or first words."""
    text = prefix[:8192].decode("utf-8", errors="replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    summary = html.unescape(title.group(1)) if title else re.sub(r"<[^>]+>", " ", text)
    summary = " ".join(summary.split())
    return summary[:160] + ("…" if len(summary) > 160 else "")


def is_torch_zip(path: Path) -> bool:
    """True for PyTorch's zip checkpoint format (a pickle inside a zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


# ---- names --------------------------------------------------------------------------------------------------------
def sanitize_name(name: str, *, fallback: str = "lora") -> str:
    """A safe single file name: no folders, no control or shell-special characters, not hidden, not reserved."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1])
    name = re.sub(r"[^\w.\-+() ]", "_", name).strip(" .")
    if not name:
        name = fallback
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    if stem.lower() in _WINDOWS_RESERVED:
        stem = f"_{stem}"
    stem = stem[: MAX_NAME_CHARS - len(suffix) - 1]
    return f"{stem}.{suffix}" if dot else stem


# ---- zip ----------------------------------------------------------------------------------------------------------
@dataclass
class ZipLimits:
    """Caps for unpacking: total unpacked bytes and the largest compression ratio a member may have."""

    max_total_bytes: int
    max_ratio: float


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    raw = info.filename
    name = raw.replace("\\", "/")
    path = PurePosixPath(name)
    if "\0" in raw or name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
        raise ArchiveError(f"archive member {raw!r} points outside the archive (zip-slip); archive refused")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ArchiveError(f"archive member {raw!r} is a symbolic link; archive refused")
    if info.flag_bits & 0x1:
        raise ArchiveError(f"archive member {raw!r} is encrypted; unpack it yourself")
    return path


def plan_members(archive: zipfile.ZipFile, limits: ZipLimits) -> list[zipfile.ZipInfo]:
    """Check every member (paths, links, declared sizes, ratios) and return those worth keeping."""
    keep, declared = [], 0
    for info in archive.infolist():
        path = _member_path(info)
        if info.is_dir():
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > 1024 * 1024 and ratio > limits.max_ratio:
            raise ArchiveError(
                f"archive member {info.filename!r} expands {ratio:.0f}x (limit {limits.max_ratio:.0f}x):"
                " looks like a zip bomb; archive refused"
            )
        if path.suffix.lower() not in KEEP_SUFFIXES and path.name != ADAPTER_FILES[1]:
            log.info("archive: skipping %s (only .safetensors and the model card are kept)", info.filename)
            continue
        declared += info.file_size
        if declared > limits.max_total_bytes:
            raise ArchiveError(f"archive unpacks to more than {limits.max_total_bytes} bytes; archive refused")
        keep.append(info)
    return keep


def extract_members(archive_path: Path, staging: Path, limits: ZipLimits) -> list[tuple[str, Path]]:
    """Unpack the kept members of `archive_path` into `staging`; returns (sanitised name, staged path) pairs."""
    staged: list[tuple[str, Path]] = []
    written_total = 0
    try:
        with zipfile.ZipFile(archive_path) as archive:
            members = plan_members(archive, limits)
            names = [sanitize_name(PurePosixPath(info.filename.replace("\\", "/")).name) for info in members]
            duplicates = {n for n in names if names.count(n) > 1}
            if duplicates:
                raise ArchiveError(f"archive holds several files named {sorted(duplicates)[0]!r} in different folders")
            for index, (info, name) in enumerate(zip(members, names, strict=True)):
                target = staging / f"{index:04d}"
                with archive.open(info) as source, open(target, "wb") as out:
                    written = 0
                    while chunk := source.read(1 << 20):
                        written += len(chunk)
                        written_total += len(chunk)
                        if written > info.file_size or written_total > limits.max_total_bytes:
                            raise ArchiveError(f"archive member {info.filename!r} unpacks past its declared size")
                        out.write(chunk)
                staged.append((name, target))
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"broken zip archive: {exc}") from None
    except (OSError, EOFError, NotImplementedError) as exc:
        # NotImplementedError: a compression method the standard library cannot read (e.g. 7-Zip's LZMA in zip)
        raise ArchiveError(f"cannot unpack archive: {exc}") from None
    return staged


def clear_staging(staging: Path) -> None:
    """Remove a staging folder and everything in it."""
    shutil.rmtree(staging, ignore_errors=True)
