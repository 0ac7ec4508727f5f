"""S3-compatible object storage through boto3 (AWS, MinIO, R2, B2, Wasabi, Ceph, ...). Files larger than a part go
up in parts (multipart; each request retried by botocore with backoff; a cut upload resumes on the next run, see
`s3_multipart`), and S3 only shows an object once it is complete, so nothing partial ever sits under its key. Each
object is verified by HEAD (size, the sha256 stored as its metadata) and by reading it back. Links are presigned
GETs (SigV4) valid for the chosen expiry, at most 7 days: `publish --resign` renews them without uploading again."""

from __future__ import annotations

import datetime
import hashlib
import logging
import urllib.parse
from pathlib import Path
from typing import Any

from lora_train.upload.destinations import (
    DEFAULT_EXPIRY_S,
    Destination,
    Progress,
    UploadError,
    canonical,
    parse_expiry,
)
from lora_train.upload.s3_multipart import upload_multipart

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_PART_MB = 64
# Codes that say "fix your set-up", with what to change.
ERROR_HINTS = {
    "NoSuchBucket": "the bucket does not exist: create it first, or fix the bucket name",
    "AccessDenied": "access denied: the credentials lack permission for this bucket",
    "InvalidAccessKeyId": "the access key is not known to this endpoint: check AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "the secret key is wrong: check AWS_SECRET_ACCESS_KEY",
    "403": "access denied: check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile)",
    "404": "the bucket does not exist: create it first, or fix the bucket name",
}


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise UploadError("S3 destinations need boto3: pip install boto3 (in ComfyUI's Python environment)") from None
    return boto3


class S3Destination(Destination):
    """`s3://bucket/prefix?endpoint=URL&region=R&expires=7d&part_mb=64`."""

    kind = "s3"

    def __init__(self, location: str, options: dict[str, str], bucket: str, prefix: str):
        super().__init__(location, options)
        self.bucket, self.prefix = bucket, prefix
        self.expiry_s = parse_expiry(options.get("expires", DEFAULT_EXPIRY_S))
        self.part_size = int(options.get("part_mb", DEFAULT_PART_MB)) * MiB
        if self.part_size < 5 * MiB:
            raise UploadError(f"{self}: part_mb must be at least 5 (S3's smallest multipart part)")
        self.attempts = 1 + int(options.get("retries", "4"))
        self._client = None
        self._signed_at: datetime.datetime | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from botocore.config import Config

            endpoint = self.options.get("endpoint") or None
            config = Config(signature_version="s3v4", retries={"max_attempts": self.attempts, "mode": "standard"},
                            s3={"addressing_style": "path" if endpoint else "auto"})  # fmt: skip
            self._client = _boto3().client("s3", endpoint_url=endpoint, region_name=self.options.get("region") or None,
                                           config=config)  # fmt: skip
        return self._client

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _fail(self, step: str, exc: Exception) -> UploadError:
        """An UploadError naming the destination and step, with a hint for the known S3 error codes."""
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            hint = ERROR_HINTS.get(code) or f"{code}: {error.get('Message', '')}".strip(": ")
            return UploadError(f"{self}: {step}: {hint}")
        return UploadError(f"{self}: {step}: {type(exc).__name__}: {exc}")

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"checking bucket {self.bucket}", exc) from None

    def upload(self, path: Path, name: str, sha256: str, progress: Progress | None = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        total, sent = path.stat().st_size, [0]

        def on_bytes(count: int) -> None:
            sent[0] += count
            if progress:
                progress(sent[0], total)

        key, metadata = self.key(name), {"sha256": sha256}
        try:
            if total > self.part_size:
                reused = upload_multipart(self.client, self.bucket, key, path, self.part_size, metadata, on_bytes)
                if reused:
                    log.info("%s: %s resumed, %d part(s) were already uploaded", self, name, reused)
            else:
                with open(path, "rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata=metadata)
                on_bytes(total)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._fail(f"uploading {name} (an interrupted upload resumes on the next run)", exc) from None
        self._verify(name, total, sha256)

    def _verify(self, name: str, size: int, sha256: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(name))
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
            digest, count = hashlib.sha256(), 0
            for chunk in body.iter_chunks(MiB):
                digest.update(chunk)
                count += len(chunk)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"verifying {name}", exc) from None
        stored = head.get("Metadata", {}).get("sha256", "")
        found = (int(head["ContentLength"]), count, digest.hexdigest(), stored)
        if found != (size, size, sha256, sha256):
            raise UploadError(f"{self}: verifying {name}: the object has {found[0]} bytes (read back {count}), sha256 "
                              f"{digest.hexdigest()} (metadata {stored or 'none'}); expected {size} bytes, sha256 "
                              f"{sha256}")  # fmt: skip

    def link(self, name: str) -> str:
        if self._signed_at is None:
            self._signed_at = datetime.datetime.now(datetime.UTC)
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(name)}, ExpiresIn=self.expiry_s
        )

    def expires(self) -> str:
        start = self._signed_at or datetime.datetime.now(datetime.UTC)
        return (start + datetime.timedelta(seconds=self.expiry_s)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def record(self) -> dict[str, str]:
        entry = super().record()
        entry["location"] = canonical(urllib.parse.urlsplit(self.location), {
            k: v for k, v in self.options.items() if k != "expires"})  # fmt: skip
        return entry


def make(parts: urllib.parse.SplitResult, options: dict[str, str]) -> S3Destination:
    """`s3://bucket/prefix`."""
    if not parts.hostname:
        raise UploadError(f"s3 destination {parts.geturl()!r} has no bucket: write s3://bucket/prefix")
    prefix = parts.path.strip("/")
    return S3Destination(canonical(parts, options), options, parts.netloc, prefix)
