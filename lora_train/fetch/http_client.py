"""One HTTP GET into a resumable partial file, with every redirect hop checked against the network policy.

Built on `http.client` so that each hop connects to an address we resolved and checked ourselves (no second DNS
lookup an attacker could rebind), credentials go only to their own host, and Range / If-Range / ETag / Retry-After
are handled exactly. A failed attempt raises `AttemptError` whose `action` tells the caller what to do next.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import queue
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from lora_train import __version__
from lora_train.fetch.netpolicy import (
    Credential,
    PolicyError,
    check_url,
    expiry_note,
    redact_url,
    resolve_allowed,
    retry_after_seconds,
    url_port,
)
from lora_train.fsutil import CHUNK, atomic_write_text

log = logging.getLogger(__name__)

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
ERROR_BODY_CAP = 64 * 1024
USER_AGENT = f"comfyui-lora-train/{__version__}"
RETRY = "retry"  # transient: same URL again after a pause (resuming)
NEXT = "next"  # this URL will not work: go to the next mirror
STOP = "stop"  # no mirror can help (e.g. a pickle was refused): give up now


class AttemptError(Exception):
    """One attempt at one URL failed. `action` is RETRY, NEXT or STOP; `retry_after` is the server's wish (s)."""

    def __init__(
        self, message: str, action: str, *, retry_after: float | None = None, received: int = 0, stalled: bool = False
    ):
        super().__init__(message)
        self.action = action
        self.retry_after = retry_after
        self.received = received
        self.made_progress = received > 0 and not stalled  # a stalled link is not "making progress"


class HttpClient:
    """Opens GET requests, following redirects by hand and checking every hop against the address policy."""

    def __init__(
        self, *, allow_private: bool, timeout: float, max_redirects: int, credentials: tuple[Credential, ...] = ()
    ):
        self.allow_private = allow_private
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.credentials = credentials
        self._ssl: ssl.SSLContext | None = None

    def _connection(self, parts: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        host, port = parts.hostname or "", url_port(parts)
        addresses = resolve_allowed(host, port, allow_private=self.allow_private)

        def connect_checked(_address: tuple, timeout: float, source_address: tuple | None = None) -> socket.socket:
            # Connect only to addresses we resolved and checked: no second lookup that could be rebound.
            last_error: OSError = ConnectionError(f"no address for {host}")
            for family, proto, sockaddr in addresses:
                sock = socket.socket(family, socket.SOCK_STREAM, proto)
                try:
                    sock.settimeout(timeout)
                    if source_address:
                        sock.bind(source_address)
                    sock.connect(sockaddr)
                    return sock
                except OSError as exc:
                    sock.close()
                    last_error = exc
            raise last_error

        if parts.scheme.lower() == "https":
            self._ssl = self._ssl or ssl.create_default_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=self.timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        conn._create_connection = connect_checked  # type: ignore[attr-defined]
        return conn

    def open(self, url: str, headers: dict[str, str]) -> tuple[http.client.HTTPResponse, str]:
        """GET `url` following redirects; returns the final response (caller closes it) and the final URL."""
        for _hop in range(self.max_redirects + 1):
            try:
                parts = check_url(url)
                conn = self._connection(parts)
            except PolicyError as exc:
                raise AttemptError(str(exc), NEXT) from None
            except ConnectionError as exc:
                raise AttemptError(f"{redact_url(url)}: {exc}", RETRY) from None
            request_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
            for credential in self.credentials:
                request_headers.update(credential.header_for(url))
            target = _request_target(parts)
            try:
                conn.request("GET", target, headers=request_headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise AttemptError(f"{redact_url(url)}: {_describe_network_error(exc)}", RETRY) from None
            if response.status not in REDIRECT_STATUSES:
                return response, url
            location = response.getheader("Location")
            response.close()
            conn.close()
            if not location:
                raise AttemptError(f"{redact_url(url)}: redirect {response.status} without a Location", NEXT)
            next_url = urllib.parse.urljoin(url, location.strip())
            log.debug("redirect %s -> %s", redact_url(url), redact_url(next_url))
            url = next_url
        raise AttemptError(f"{redact_url(url)}: more than {self.max_redirects} redirects", NEXT)


def _request_target(parts: urllib.parse.SplitResult) -> str:
    """Path and query as sent on the request line, percent-encoding anything that is not plain ASCII."""
    path = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=~-._")
    query = urllib.parse.quote(parts.query, safe="/%:@!$&'()*+,;=~-._?")
    return path + (f"?{query}" if query else "")


def _describe_network_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no data within the timeout"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed mid-body"
    return f"{type(exc).__name__}: {exc}"


# ---- the partial file -----------------------------------------------------------------------------------------
@dataclass
class PartialState:
    """What a partial download's sidecar remembers so a later process can resume it safely."""

    source: str = ""  # url_key of the link the bytes came from
    etag: str = ""
    last_modified: str = ""
    total: int | None = None


@dataclass
class PartialFile:
    """`<key>.part` (the bytes) + `<key>.json` (its PartialState), both inside the fetch cache."""

    path: Path
    state: PartialState = field(default_factory=PartialState)

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    def load(self) -> PartialFile:
        """Read the sidecar; a partial without a readable sidecar cannot be trusted and is dropped."""
        try:
            self.state = PartialState(**json.loads(self.sidecar.read_text()))
        except (OSError, ValueError, TypeError):
            self.state = PartialState()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        return self

    def save(self) -> None:
        atomic_write_text(self.sidecar, json.dumps(asdict(self.state)))

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def discard(self) -> None:
        for path in (self.path, self.sidecar):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.state = PartialState()


@dataclass
class Transfer:
    """How one successful GET went."""

    final_url: str
    total: int
    received: int  # bytes that came over the network in this attempt
    resumed_from: int
    sha256: str
    not_modified: bool = False
    content_disposition: str = ""


@dataclass
class TransferOptions:
    """Knobs for one GET (from FetchConfig)."""

    expected_size: int | None
    max_size: int
    trust_other_sources: bool  # sha256 is known: bytes from another mirror may be resumed, the hash will tell
    low_speed_limit: int = 0
    low_speed_time: float = 0.0
    conditional: dict[str, str] = field(default_factory=dict)  # If-None-Match / If-Modified-Since


def _hash_prefix(path: Path, length: int) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        remaining = length
        while remaining and (chunk := handle.read(min(CHUNK, remaining))):
            digest.update(chunk)
            remaining -= len(chunk)
    return digest


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """`bytes 100-199/1000` -> (100, 1000); `bytes */1000` -> (None, 1000)."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    start = int(span.split("-", 1)[0]) if span[:1].isdigit() else None
    return start, int(total) if total.isdigit() else None


def _fail_on_status(response: http.client.HTTPResponse, url: str) -> None:
    """Turn a non-success status into an AttemptError with the right action and a readable reason."""
    status = response.status
    body = response.read(ERROR_BODY_CAP) if status != 416 else b""
    reason = f"{redact_url(url)}: HTTP {status} {response.reason}"
    if status == 429 or status >= 500:
        raise AttemptError(reason, RETRY, retry_after=retry_after_seconds(response.getheader("Retry-After")))
    note = expiry_note(url, status, body)
    if note:
        raise AttemptError(f"{reason}: {note}", NEXT)
    hints = {
        401: "the link needs a login or token",
        403: "access denied",
        404: "no file at this link",
        410: "the file was removed",
    }
    raise AttemptError(f"{reason}" + (f" ({hints[status]})" if status in hints else ""), NEXT)


class _HashingWriter:
    """Writes chunks to the partial file in the caller's thread and hashes them on a worker thread, so the hash
    overlaps network and disk (hashlib releases the GIL). Buffers are recycled: `buffer()` hands out a free one,
    `put()` writes it and queues it for hashing."""

    def __init__(self, handle: BinaryIO, digest: hashlib._Hash, buffers: int = 8):
        self.handle, self.digest = handle, digest
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(buffers):
            self.free.put(bytearray(CHUNK))
        self.full: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="fetch-hasher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.full.get()) is not None:
            buffer, size = item
            with memoryview(buffer) as view:
                self.digest.update(view[:size])
            self.free.put(buffer)

    def buffer(self) -> bytearray:
        return self.free.get()

    def put(self, buffer: bytearray, size: int) -> None:
        try:
            with memoryview(buffer) as view:
                self.handle.write(view[:size])
        except BaseException:
            self.free.put(buffer)
            raise
        self.full.put((buffer, size))

    def close(self) -> None:
        """Wait until every chunk is hashed and flush the file."""
        self.full.put(None)
        self.thread.join()
        self.handle.flush()


def _read_into(response: http.client.HTTPResponse, buffer: bytearray) -> int:
    """Fill `buffer` with the next body bytes (at most one socket read); 0 at the end of the body."""
    if response.chunked or response.length is None:
        data = response.read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)
    if not response.length or response.fp is None:
        return 0
    with memoryview(buffer) as view:
        size = response.fp.readinto1(view[: min(len(buffer), response.length)])
    response.length -= size  # keep http.client's own count right (we bypass its read methods)
    return size


class _Body:
    """Per-response bookkeeping: byte count and limits, the early content check, the low-speed watchdog."""

    def __init__(self, url: str, offset: int, total: int | None, options: TransferOptions, content_type: str,
                 check_prefix: Callable[[bytes, int | None, str], None]):  # fmt: skip
        self.url, self.offset, self.total, self.options = url, offset, total, options
        self.content_type, self.check_prefix = content_type, check_prefix
        self.limit = options.expected_size if options.expected_size is not None else options.max_size
        self.received = 0
        self.prefix = b""
        self.window_start, self.window_bytes = time.monotonic(), 0

    def failure(self, what: str, action: str, *, stalled: bool = False) -> AttemptError:
        return AttemptError(f"{redact_url(self.url)}: {what}", action, received=self.received, stalled=stalled)

    def inspect(self, buffer: bytearray, size: int) -> None:
        """Account for one chunk; raise AttemptError when the body must be refused or the link is too slow."""
        if self.offset == 0 and len(self.prefix) < ERROR_BODY_CAP:
            self.prefix += bytes(buffer[: min(size, ERROR_BODY_CAP - len(self.prefix))])
            if len(self.prefix) >= min(ERROR_BODY_CAP, self.total or ERROR_BODY_CAP):
                self.check_prefix(self.prefix, self.total, self.content_type)
        self.received += size
        if self.offset + self.received > self.limit:
            raise self.failure(f"server sent more than {self.limit} bytes", NEXT)
        now = time.monotonic()
        self.window_bytes += size
        elapsed = now - self.window_start
        if self.options.low_speed_time and elapsed >= self.options.low_speed_time:
            speed = self.window_bytes / elapsed
            if speed < self.options.low_speed_limit:
                raise self.failure(f"too slow ({speed:.0f} B/s for {elapsed:.0f} s)", RETRY, stalled=True)
            self.window_start, self.window_bytes = now, 0

    def finish(self) -> None:
        """After the last byte: check a short body of unknown length, and that nothing is missing."""
        done = self.offset + self.received
        if self.offset == 0 and self.prefix and len(self.prefix) < ERROR_BODY_CAP and self.total is None:
            self.check_prefix(self.prefix, done, self.content_type)
        if self.total is not None and done < self.total:
            raise self.failure(f"connection closed after {done} of {self.total} bytes", RETRY)


def download_into(
    client: HttpClient,
    url: str,
    partial: PartialFile,
    options: TransferOptions,
    *,
    on_bytes: Callable[[int, int | None], None],
    check_prefix: Callable[[bytes, int | None, str], None],
    cancel: Callable[[], None],
) -> Transfer:
    """GET `url` into `partial`, resuming it when that is safe; returns how it went or raises AttemptError.

    `on_bytes(done, total)` reports progress, `check_prefix(first_bytes, total, content_type)` may refuse the body
    early (error pages, pickles), `cancel()` raises to stop between chunks (the partial is kept for later).
    """
    from lora_train.fetch.netpolicy import url_key

    key = url_key(url)
    offset = partial.size()
    same_source = partial.state.source == key
    if offset and not (same_source or options.trust_other_sources):
        log.info("discarding %d partial bytes from another source before fetching %s", offset, redact_url(url))
        partial.discard()
        offset = 0
    headers = dict(options.conditional)
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = partial.state.etag if not partial.state.etag.startswith("W/") else partial.state.last_modified
        if same_source and validator:
            headers["If-Range"] = validator  # the server sends the whole new file if it changed meanwhile
    response, final_url = client.open(url, headers)
    try:
        return _receive(response, url, final_url, partial, options, offset, key, on_bytes, check_prefix, cancel)
    finally:
        response.close()


def _receive(response, url, final_url, partial, options, offset, key, on_bytes, check_prefix, cancel) -> Transfer:
    """Read one response into `partial` from byte `offset`, hashing as it goes; raises AttemptError on failure."""
    disposition = response.getheader("Content-Disposition") or ""
    early = _answer_without_body(response, url, final_url, partial, options, offset, disposition)
    if early is not None:
        return early
    offset, total = _resume_point(response, url, partial, options, offset)
    partial.state = PartialState(
        key, response.getheader("ETag") or "", response.getheader("Last-Modified") or "", total
    )
    partial.save()
    digest = _hash_prefix(partial.path, offset) if offset else hashlib.sha256()
    body = _Body(url, offset, total, options, response.getheader("Content-Type") or "", check_prefix)
    try:
        _stream_body(
            response, partial.path, offset, digest, body, lambda: on_bytes(offset + body.received, total), cancel
        )
    except AttemptError as err:
        if err.action != RETRY:  # refused content: nothing worth resuming
            partial.discard()
        raise
    received = body.received
    return Transfer(
        final_url, offset + received, received, offset, digest.hexdigest(), content_disposition=disposition
    )


def _answer_without_body(response, url, final_url, partial, options, offset, disposition) -> Transfer | None:
    """304 (the cached copy is current) and 416 at the end of the partial file (already complete) end the attempt
    with no body to read; other non-success statuses raise."""
    status = response.status
    if status == 304 and options.conditional:
        return Transfer(final_url, 0, 0, 0, "", not_modified=True, content_disposition=disposition)
    if status == 416 and offset:
        _, total = _content_range(response.getheader("Content-Range"))
        if total == offset:
            log.info("%s: partial file already complete (%d bytes)", redact_url(url), offset)
            digest = _hash_prefix(partial.path, offset)
            return Transfer(final_url, total, 0, offset, digest.hexdigest(), content_disposition=disposition)
        partial.discard()
        raise AttemptError(f"{redact_url(url)}: server refused to resume (HTTP 416); restarting from zero", RETRY)
    if status not in (200, 206):
        _fail_on_status(response, url)
    return None


def _resume_point(response, url, partial, options, offset) -> tuple[int, int | None]:
    """Where the body starts in the file (0 when the server ignored Range) and the file's total size, checked
    against the expected size and the size limit."""
    if response.status == 206:
        start, total = _content_range(response.getheader("Content-Range"))
        if start != offset:
            partial.discard()
            raise AttemptError(f"{redact_url(url)}: server resumed at byte {start}, not {offset}; restarting", RETRY)
    else:
        if offset:
            log.warning(
                "%s: server ignored the Range request or the file changed; restarting from zero", redact_url(url)
            )
            offset = 0
        length = response.getheader("Content-Length")
        total = int(length) if length and length.isdigit() else None
    if total is not None and options.expected_size is not None and total != options.expected_size:
        raise AttemptError(f"{redact_url(url)}: server offers {total} bytes, expected {options.expected_size}", NEXT)
    if total is not None and total > options.max_size:
        raise AttemptError(f"{redact_url(url)}: file is {total} bytes, over the {options.max_size}-byte limit", NEXT)
    return offset, total


def _stream_body(response, path: Path, offset: int, digest, body: _Body, on_chunk, cancel) -> None:
    """Copy the response body into `path` from `offset` (hashing and inspecting each chunk on the way)."""
    with open(path, "r+b" if offset else "wb") as handle:
        handle.seek(offset)
        handle.truncate()
        writer = _HashingWriter(handle, digest)
        try:
            while True:
                cancel()
                buffer = writer.buffer()
                try:
                    size = _read_into(response, buffer)
                except (OSError, http.client.HTTPException) as exc:
                    writer.free.put(buffer)
                    raise body.failure(_describe_network_error(exc), RETRY) from None
                if not size:
                    writer.free.put(buffer)
                    break
                try:
                    body.inspect(buffer, size)
                except AttemptError:
                    writer.free.put(buffer)
                    raise
                writer.put(buffer, size)
                on_chunk()
        finally:
            writer.close()
        body.finish()
