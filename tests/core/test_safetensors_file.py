"""Header validation and byte-exact metadata rewrite for safetensors files."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_train.safetensors_file import SafetensorsError, read_header, write_with_metadata


def _write_raw(path, header: dict, data: bytes) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def test_reads_a_file_written_by_the_safetensors_library(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"a": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.float16)}, path, metadata={"k": "v"})
    header = read_header(path)
    assert set(header.tensors) == {"a", "b"}
    assert header.metadata == {"k": "v"}


def test_rewrite_metadata_keeps_every_tensor_byte(tmp_path):
    src, dst = tmp_path / "src.safetensors", tmp_path / "dst.safetensors"
    tensors = {"x": torch.randn(3, 5), "y": torch.randn(7).half()}
    save_file(tensors, src, metadata={"old": "1"})
    write_with_metadata(src, dst, {"new": "2"})
    assert read_header(dst).metadata == {"new": "2"}
    loaded = load_file(dst)
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value)
    src_data = src.read_bytes()[read_header(src).data_start :]
    assert dst.read_bytes()[read_header(dst).data_start :] == src_data


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "outside"),
        ({"a": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "does not match"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "not contiguous"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "trailing"),
    ],
)
def test_invalid_headers_are_refused_with_the_reason(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, data)
    with pytest.raises(SafetensorsError, match=message):
        read_header(path)


def test_oversized_or_non_json_header_is_refused(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(SafetensorsError, match="cap"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 5) + b"<html")
    with pytest.raises(SafetensorsError, match="JSON"):
        read_header(path)
