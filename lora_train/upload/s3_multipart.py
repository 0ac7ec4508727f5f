"""S3 multipart uploads that resume: a run cut mid-way leaves its multipart upload open (S3 shows no object until it
is completed; a bucket lifecycle rule "abort incomplete multipart uploads" cleans up ones never resumed), and the
next run of the same file finds it, keeps every part whose size and MD5 (the part's ETag) match the local bytes, and
sends only the rest. Release files are immutable (`<name>_vN`), so the same key means the same bytes; the whole
object is still read back and checked afterwards."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def part_spans(total: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part number, offset, length) of every part."""
    return [(number, offset, min(part_size, total - offset))
            for number, offset in enumerate(range(0, total, part_size), start=1)]  # fmt: skip


def open_upload(client: Any, bucket: str, key: str) -> str | None:
    """The newest unfinished multipart upload of `key`, if any."""
    found = client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    mine = sorted((u for u in found if u["Key"] == key), key=lambda u: u["Initiated"])
    return mine[-1]["UploadId"] if mine else None


def reusable_parts(client: Any, bucket: str, key: str, upload_id: str, path: Path,
                   spans: list[tuple[int, int, int]]) -> dict[int, str]:  # fmt: skip
    """Part number -> ETag of the uploaded parts whose size and MD5 match the local file's bytes."""
    uploaded: dict[int, dict] = {}
    marker = 0
    while True:
        page = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker)
        uploaded.update({p["PartNumber"]: p for p in page.get("Parts", [])})
        if not page.get("IsTruncated"):
            break
        marker = page["NextPartNumberMarker"]
    keep = {}
    for number, offset, length in spans:
        part = uploaded.get(number)
        if part and part["Size"] == length:
            if part["ETag"].strip('"') == hashlib.md5(_read(path, offset, length), usedforsecurity=False).hexdigest():
                keep[number] = part["ETag"]
    return keep


def upload_multipart(
    client: Any, bucket: str, key: str, path: Path, part_size: int, metadata: dict[str, str],
    on_bytes: Callable[[int], None],
) -> int:  # fmt: skip
    """Upload `path` in parts, resuming an open upload of `key`; returns how many parts were reused."""
    total = path.stat().st_size
    spans = part_spans(total, part_size)
    upload_id = open_upload(client, bucket, key)
    done = reusable_parts(client, bucket, key, upload_id, path, spans) if upload_id else {}
    if upload_id is None:
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata)["UploadId"]
    elif done:
        log.info("s3://%s/%s: resuming, %d of %d parts already there", bucket, key, len(done), len(spans))
    reused = len(done)
    parts = []
    for number, offset, length in spans:
        if number not in done:
            body = _read(path, offset, length)
            done[number] = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                              Body=body)["ETag"]  # fmt: skip
        parts.append({"PartNumber": number, "ETag": done[number]})
        on_bytes(length)
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    return reused
