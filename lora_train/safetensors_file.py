"""Read and check `.safetensors` headers without loading tensors (stdlib only), and rewrite metadata byte-exactly.

Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__":
{str: str}}, then the tensor data. `read_header` validates everything a downloader or publisher must trust.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from lora_train.fsutil import atomic_write

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own cap
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "F4": 1,
    "F6_E2M3": 1,
    "F6_E3M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}


class SafetensorsError(ValueError):
    """The file is not a valid safetensors file; the message says what is wrong."""


@dataclass
class SafetensorsHeader:
    """A validated header: tensor entries, the `__metadata__` dict, and where tensor data starts."""

    tensors: dict[str, dict]
    metadata: dict[str, str]
    data_start: int
    data_size: int


def parse_header(prefix: bytes, file_size: int, *, name: str = "file") -> SafetensorsHeader:
    """Validate a header from the file's first bytes (`prefix` must hold at least the whole header)."""
    if len(prefix) < 8:
        raise SafetensorsError(f"{name}: too short to be safetensors ({file_size} bytes)")
    (header_len,) = struct.unpack("<Q", prefix[:8])
    if header_len > MAX_HEADER_BYTES:
        raise SafetensorsError(f"{name}: header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte cap")
    if 8 + header_len > file_size:
        raise SafetensorsError(f"{name}: header length {header_len} runs past the end of the file ({file_size} bytes)")
    if len(prefix) < 8 + header_len:
        raise SafetensorsError(f"{name}: need {8 + header_len} bytes to read the header, got {len(prefix)}")
    try:
        header = json.loads(prefix[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{name}: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{name}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError(f"{name}: __metadata__ must map strings to strings")
    data_start = 8 + header_len
    data_size = file_size - data_start
    spans = []
    for key, entry in header.items():
        if not isinstance(entry, dict) or set(entry) - {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{name}: tensor {key!r} has a malformed entry")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise SafetensorsError(f"{name}: tensor {key!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsError(f"{name}: tensor {key!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise SafetensorsError(f"{name}: tensor {key!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise SafetensorsError(f"{name}: tensor {key!r} data [{begin}, {end}) lies outside the file's data")
        if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise SafetensorsError(f"{name}: tensor {key!r} byte size does not match its shape and dtype")
        spans.append((begin, end, key))
    spans.sort()
    cursor = 0
    for begin, end, key in spans:
        if begin != cursor:
            raise SafetensorsError(f"{name}: tensor data is not contiguous at {key!r} (gap or overlap)")
        cursor = end
    if cursor != data_size:
        raise SafetensorsError(f"{name}: {data_size - cursor} trailing bytes after the last tensor")
    return SafetensorsHeader(header, dict(metadata), data_start, data_size)


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file on disk."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) == 8:
            (header_len,) = struct.unpack("<Q", head)
            if header_len <= MAX_HEADER_BYTES:
                head += handle.read(header_len)
    return parse_header(head, size, name=path.name)


def write_with_metadata(src: str | os.PathLike, dst: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Copy `src` to `dst` (atomically) with a new `__metadata__`, every tensor byte unchanged."""
    header = read_header(src)
    entries: dict[str, object] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    entries.update(header.tensors)
    encoded = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # keep tensor data 8-byte aligned, as the library writes it
    with open(src, "rb") as source, atomic_write(dst) as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        source.seek(header.data_start)
        shutil.copyfileobj(source, out, 1 << 20)
