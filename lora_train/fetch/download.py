"""Fetch a LoRA by direct link: mirrors, resume, verification, safety.

`fetch_lora(cfg, loras_dir)` takes one link, several mirror links, `hf://` links or a release manifest, and ends
with verified files in the loras folder (or a clear error and nothing there). For each file it tries the links in
order; transient failures (dropped connection, 5xx, 429, stalls) are retried with exponential backoff and jitter,
honouring `Retry-After`, resuming the partial file; anything else (404, 401/403 and expired signatures, wrong
bytes, error pages) moves on to the next mirror. The transfer itself lives in `httpget`, the policy in
`netpolicy`, the cache and placement in `fetchcache`, content checks and unpacking in `archive`.
"""

from __future__ import annotations

import logging
import os
import random
import struct
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lora_train.fetch import archive
from lora_train.fetch.cache import FetchCache, default_cache_dir, key_for
from lora_train.fetch.config import FetchConfig
from lora_train.fetch.http_client import NEXT, RETRY, STOP, AttemptError, HttpClient, TransferOptions, download_into
from lora_train.fetch.netpolicy import HF_OFFICIAL, Credential, PolicyError, hf_endpoints, redact_url, url_key
from lora_train.fetch.place import PlacementError, destination_dir, disposition_name, place_blob, url_name
from lora_train.fetch.plan import PlannedFile, plan_files
from lora_train.fsutil import sha256_file
from lora_train.safetensors_file import MAX_HEADER_BYTES, SafetensorsError, read_header

log = logging.getLogger(__name__)

MAX_ATTEMPTS_PER_LINK = 50  # even with progress on every attempt, give up on a link eventually
MAX_BACKOFF_S = 60.0


class FetchError(RuntimeError):
    """Nothing usable could be fetched; the message lists each link, what happened and what was tried next."""


class FetchCancelled(FetchError):
    """The user cancelled; the partial download stays in the cache for a later resume."""


@dataclass
class FetchProgress:
    """One progress report. `status`: connecting, downloading, retrying, verifying, unpacking, cached, done."""

    status: str
    downloaded: int = 0
    total: int | None = None
    speed_bps: float = 0.0
    eta_s: float | None = None
    mirror: str = ""  # the redacted link in use
    file: str = ""
    file_index: int = 0
    file_count: int = 1


@dataclass
class FetchResult:
    """What a fetch produced. `lora_name` is relative to the loras folder, as LoraLoader lists it."""

    lora_name: str
    path: Path
    sha256: str
    size: int
    bytes_downloaded: int
    mirror: str
    status: str  # downloaded, cached (from the fetch cache), present (already in the loras folder)
    files: list[Path] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)
    trigger_words: list[str] = field(default_factory=list)
    signature: str = ""  # manifests: "verified: signed by ...", "unsigned: ...", "untrusted: ..."; links: ""


class _Reporter:
    """Turns byte counts into throttled FetchProgress reports with speed and ETA."""

    def __init__(self, callback: Callable[[FetchProgress], None] | None, interval: float = 0.25):
        self.callback = callback
        self.interval = interval
        self.base = FetchProgress("connecting")
        self._last_emit = 0.0
        self._samples: list[tuple[float, int]] = []

    def status(self, status: str, **changes) -> None:
        self.base = FetchProgress(**{**self.base.__dict__, "status": status, **changes})
        self._samples.clear()
        self._emit(force=True)

    def bytes(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > 5.0:  # speed over the last ~5 s
            self._samples.pop(0)
        first_time, first_done = self._samples[0]
        speed = (done - first_done) / (now - first_time) if now > first_time else 0.0
        eta = (total - done) / speed if total is not None and speed > 0 else None
        self.base = FetchProgress(
            **{
                **self.base.__dict__,
                "status": "downloading",
                "downloaded": done,
                "total": total,
                "speed_bps": speed,
                "eta_s": eta,
            }
        )
        self._emit(force=total is not None and done >= total)

    def _emit(self, force: bool) -> None:
        now = time.monotonic()
        if self.callback is not None and (force or now - self._last_emit >= self.interval):
            self._last_emit = now
            self.callback(self.base)


@dataclass
class _Context:
    cfg: FetchConfig
    cache: FetchCache
    client: HttpClient
    reporter: _Reporter
    cancel: Callable[[], None]
    sleep: Callable[[float], None]
    attempts: list[str] = field(default_factory=list)
    downloaded: int = 0


@dataclass
class _Fetched:
    blob: Path
    sha256: str
    kind: str
    mirror: str
    status: str
    name_hint: str = ""


def _cancel_checker(cancel: Callable[[], bool] | None) -> Callable[[], None]:
    def check() -> None:
        if cancel is not None and cancel():
            raise FetchCancelled("fetch cancelled; the partial download is kept and resumes next time")

    return check


def _sleeper(check: Callable[[], None]) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:  # wake up often enough to honour Cancel
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            check()
            time.sleep(min(left, 0.2))

    return sleep


def _credentials(cfg: FetchConfig) -> tuple[Credential, ...]:
    creds: list[Credential] = []
    token = cfg.token or os.environ.get("LORA_TRAIN_FETCH_TOKEN", "")
    if token:
        hosts = {urllib.parse.urlsplit(link).hostname for link in cfg.links() if "://" in link}
        creds += [Credential(host, token) for host in sorted(h for h in hosts if h)]
    hf_token = os.environ.get("HF_TOKEN", "")
    if hf_token:  # only to Hugging Face itself: a mirror endpoint is a third party and never sees the token
        creds.append(Credential(urllib.parse.urlsplit(HF_OFFICIAL).hostname or "", hf_token))
    return tuple(creds)


def fetch_lora(
    cfg: FetchConfig,
    loras_dir: Path,
    *,
    progress: Callable[[FetchProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> FetchResult:
    """Fetch the LoRA(s) `cfg` names into `loras_dir` (or its `cfg.subfolder`) and return where they went.

    `cancel()` is polled between chunks: return True (or raise) to stop. `sleep` replaces the backoff pause.
    """
    if not cfg.links():
        raise FetchError("no link given: paste a direct link to a .safetensors file (or a release manifest)")
    ctx = _open_context(cfg, progress, cancel, sleep)
    try:
        dest_dir = destination_dir(Path(loras_dir), cfg.subfolder)
        plan = plan_files(cfg, ctx.client, hf_endpoints(cfg.hf_endpoints))
        planned, trigger_words = plan.files, plan.trigger_words
    except (PolicyError, PlacementError) as exc:
        raise FetchError(str(exc)) from None
    placed: dict[Path, str] = {}  # path -> sha256, in placement order
    results: list[tuple[_Fetched, dict[Path, str], bool]] = []
    for index, item in enumerate(planned):
        ctx.reporter.status("connecting", file=item.display_name, file_index=index, file_count=len(planned))
        fetched = _fetch_verified(item, ctx)
        paths, changed = _place(item, fetched, dest_dir, ctx)
        placed.update(paths)
        results.append((fetched, paths, changed))
    loras = [p for p in placed if p.suffix.lower() not in (".md", ".json")]
    if not loras:
        raise FetchError("the download held no .safetensors file")
    primary = loras[0]
    first, _, changed = next(r for r in results if primary in r[1])
    size = primary.stat().st_size
    ctx.reporter.status("done", downloaded=size, total=size)
    name = primary.relative_to(Path(loras_dir).resolve()).as_posix()
    return FetchResult(name, primary, placed[primary], size, ctx.downloaded, first.mirror,
                       first.status if changed else "present", list(placed), ctx.attempts, trigger_words,
                       plan.signature)  # fmt: skip


def _open_context(
    cfg: FetchConfig,
    progress: Callable[[FetchProgress], None] | None,
    cancel: Callable[[], bool] | None,
    sleep: Callable[[float], None] | None,
) -> _Context:
    """The HTTP client, cache, progress reporter and Cancel/backoff hooks one fetch shares across its files."""
    check = _cancel_checker(cancel)
    client = HttpClient(
        allow_private=cfg.allow_private_addresses,
        timeout=cfg.timeout,
        max_redirects=cfg.max_redirects,
        credentials=_credentials(cfg),
    )
    cache = FetchCache(Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir())
    return _Context(cfg, cache, client, _Reporter(progress), check, sleep or _sleeper(check))


def _place(item: PlannedFile, fetched: _Fetched, dest_dir: Path, ctx: _Context) -> tuple[dict[Path, str], bool]:
    """Put one verified blob (a .safetensors, or a zip's members) into the loras folder, atomically."""
    cfg = ctx.cfg
    ctx.reporter.status("unpacking" if fetched.kind == "zip" else "verifying")
    try:
        names = [item.name or "", url_name(item.urls[0]), fetched.name_hint]
        limits = archive.ZipLimits(cfg.max_size_mb * 1024 * 1024, cfg.max_zip_ratio)
        return place_blob(fetched.blob, fetched.kind, fetched.sha256, names, dest_dir,
                          staging=ctx.cache.staging, filename=cfg.filename, overwrite=cfg.overwrite,
                          limits=limits)  # fmt: skip
    except (PlacementError, archive.ArchiveError, SafetensorsError) as exc:
        raise FetchError(f"{item.display_name}: {exc}; nothing was written to the loras folder") from None


def _fetch_verified(item: PlannedFile, ctx: _Context) -> _Fetched:
    """The verified blob for one planned file: from the cache, or downloaded trying every link in order."""
    if item.sha256:
        blob = ctx.cache.blob(item.sha256)
        if blob.is_file() and sha256_file(blob) == item.sha256:
            ctx.reporter.status("cached")
            return _Fetched(blob, item.sha256, _kind_of(blob), "cache", "cached")
    key = key_for(item.sha256, url_key(item.urls[0]))
    with ctx.cache.lock(key):  # a second fetch of the same file waits here, then finds the blob
        if item.sha256 and ctx.cache.blob(item.sha256).is_file():
            return _Fetched(
                ctx.cache.blob(item.sha256), item.sha256, _kind_of(ctx.cache.blob(item.sha256)), "cache", "cached"
            )
        partial = ctx.cache.partial(key)
        failures: list[str] = []
        for url in item.urls:
            try:
                fetched = _try_link(url, item, partial, ctx, failures)
            except OSError as exc:  # network errors are handled inside; this is the local disk
                raise FetchError(f"cannot write the download into {ctx.cache.root}: {exc}") from None
            if fetched is not None:
                return fetched
    tried = "\n".join(f"  - {line}" for line in failures)
    raise FetchError(
        f"could not fetch {item.display_name} from any of its {len(item.urls)} link(s):\n{tried}\n"
        "Nothing was written to the loras folder."
    )


def _transfer_options(cfg: FetchConfig, item: PlannedFile, record: dict, cached: bool) -> TransferOptions:
    """Size limits and checks for one download; a conditional GET when the link's last blob is still `cached`."""
    conditional = {}
    if cached:
        conditional = {
            k: v
            for k, v in (("If-None-Match", record.get("etag")), ("If-Modified-Since", record.get("last_modified")))
            if v
        }
    limit = cfg.max_size_mb * 1024 * 1024
    return TransferOptions(item.size, limit, bool(item.sha256), cfg.low_speed_limit, cfg.low_speed_time, conditional)


def _try_link(url: str, item: PlannedFile, partial, ctx: _Context, failures: list[str]) -> _Fetched | None:
    """Attempts at one link with retries; returns the verified blob, or None after recording why it failed."""
    link = url_key(url)
    record = ctx.cache.link_record(link) if not item.sha256 else {}
    cached = bool(record.get("sha256")) and ctx.cache.blob(record["sha256"]).is_file()
    options = _transfer_options(ctx.cfg, item, record, cached)
    setbacks = 0
    restarted_after_mismatch = False
    for _attempt in range(MAX_ATTEMPTS_PER_LINK):
        ctx.cancel()
        ctx.reporter.status("connecting", mirror=redact_url(url))
        try:
            transfer = download_into(ctx.client, url, partial, options, on_bytes=ctx.reporter.bytes,
                                     check_prefix=_prefix_checker(ctx.cfg, item), cancel=ctx.cancel)  # fmt: skip
            ctx.downloaded += transfer.received
            if transfer.not_modified:
                blob = ctx.cache.blob(record["sha256"])
                ctx.attempts.append(f"{redact_url(url)}: not modified since the last fetch (cached copy used)")
                return _Fetched(blob, record["sha256"], _kind_of(blob), redact_url(url), "cached")
            return _accept(transfer, url, link, item, partial, ctx)
        except AttemptError as err:
            ctx.downloaded += err.received
            if err.action == "mismatch-resumed" and not restarted_after_mismatch:
                restarted_after_mismatch = True  # spliced bytes from another source: one clean try from zero
                ctx.attempts.append(f"{err} (resumed bytes discarded; downloading again from zero)")
                continue
            setbacks = 0 if err.made_progress else setbacks + 1
            final = _retry_or_final(err, setbacks, url, ctx)
            if final is None:
                continue
            _give_up_on_link(final, item, ctx, failures)
            return None
    failures.append(f"{redact_url(url)}: no success after {MAX_ATTEMPTS_PER_LINK} attempts")
    return None


def _retry_or_final(err: AttemptError, setbacks: int, url: str, ctx: _Context) -> AttemptError | None:
    """Sleep out the backoff and return None when `err` is worth another try at the same link, else the error
    this link ends with."""
    if err.action != RETRY or setbacks > ctx.cfg.retries:
        return err
    delay = _retry_delay(ctx.cfg, setbacks, err.retry_after)
    if delay is None:
        return AttemptError(f"{err}; asked to wait {err.retry_after:.0f} s (over max_retry_after)", NEXT)
    ctx.attempts.append(f"{err} (retry in {delay:.1f} s)")
    log.info("%s; retrying in %.1f s", err, delay)
    ctx.reporter.status("retrying", mirror=redact_url(url))
    ctx.sleep(delay)
    return None


def _give_up_on_link(err: AttemptError, item: PlannedFile, ctx: _Context, failures: list[str]) -> None:
    """Record why this link failed; stop the whole fetch when no mirror can help."""
    verdict = "giving up" if err.action == STOP else "trying the next link"
    ctx.attempts.append(f"{err} ({verdict})")
    failures.append(str(err))
    log.warning("%s (%s)", err, verdict)
    if err.action == STOP:
        raise FetchError(f"{item.display_name}: {err}") from None


def _retry_delay(cfg: FetchConfig, setbacks: int, retry_after: float | None) -> float | None:
    """Exponential backoff with jitter, or the server's Retry-After; None when that is longer than allowed."""
    if retry_after is not None:
        return retry_after if retry_after <= cfg.max_retry_after else None
    ceiling = min(MAX_BACKOFF_S, cfg.backoff * 2 ** max(setbacks - 1, 0))
    return random.uniform(ceiling / 2, ceiling)  # "equal jitter": spreads clients, keeps a floor


def _prefix_checker(cfg: FetchConfig, item: PlannedFile) -> Callable[[bytes, int | None, str], None]:
    def check(prefix: bytes, total: int | None, content_type: str) -> None:
        kind = archive.sniff_kind(prefix)
        if kind in ("html", "json", "text"):
            raise AttemptError(
                f"the server sent a {kind.upper()} page ({content_type or 'no type'}) instead of "
                f"the file: {archive.describe_error_page(prefix)!r}",
                NEXT,
            )
        if kind == "pickle" and not cfg.allow_pickle:
            raise AttemptError(_pickle_refusal(item.display_name), STOP)
        if kind == "unknown" and len(prefix) >= 8:
            (header_len,) = struct.unpack("<Q", prefix[:8])
            if header_len > MAX_HEADER_BYTES:  # refuse before downloading the rest
                raise AttemptError(
                    f"not safetensors: header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte cap", NEXT
                )

    return check


def sha256_mismatch(got: str, expected: str) -> str:
    """Both hashes whole, and where they first differ (hashes cut short can look identical)."""
    first = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), min(len(got),
                 len(expected)))  # fmt: skip
    return (f"sha256 mismatch: got {got}, expected {expected} (they differ from hex digit {first + 1} of "
            f"{len(expected)} on)")  # fmt: skip


def _pickle_refusal(name: str) -> str:
    return (
        f"{name} is a Python pickle (.ckpt/.pt/.pth/.bin), which can run code when loaded; refused. "
        "Ask for a .safetensors file, or turn on allow_pickle if you trust its source"
    )


def _kind_of(path: Path) -> str:
    with open(path, "rb") as handle:
        kind = archive.sniff_kind(handle.read(64))
    if kind == "zip" and archive.is_torch_zip(path):
        return "pickle"
    return kind


def _accept(transfer, url: str, link: str, item: PlannedFile, partial, ctx: _Context) -> _Fetched:
    """Verify a complete partial (size, sha256, content) and move it into the blob store."""
    where = redact_url(url)
    if item.size is not None and transfer.total != item.size:
        partial.discard()
        raise AttemptError(f"{where}: got {transfer.total} bytes, expected {item.size}", NEXT)
    if item.sha256 and transfer.sha256 != item.sha256:
        resumed = transfer.resumed_from > 0
        partial.discard()
        message = f"{where}: {sha256_mismatch(transfer.sha256, item.sha256)}"
        raise AttemptError(message, "mismatch-resumed" if resumed else NEXT)
    kind = _kind_of(partial.path)
    try:
        if kind in ("safetensors", "unknown"):
            read_header(partial.path)  # says exactly what is wrong with a broken header
        elif kind == "pickle" and not ctx.cfg.allow_pickle:
            partial.discard()
            raise AttemptError(_pickle_refusal(item.display_name), STOP)
        elif kind not in ("zip", "pickle", "unknown"):
            raise SafetensorsError(f"not a safetensors file or zip archive (looks like {kind})")
    except SafetensorsError as exc:
        partial.discard()
        raise AttemptError(f"{where}: {exc}", NEXT) from None
    etag, modified = partial.state.etag, partial.state.last_modified
    blob = ctx.cache.store_blob(partial, transfer.sha256)
    ctx.cache.remember_link(link, {"sha256": transfer.sha256, "etag": etag, "last_modified": modified})
    ctx.attempts.append(f"{where}: {transfer.total} bytes, sha256 {transfer.sha256[:12]}… verified")
    hint = disposition_name(transfer.content_disposition) or url_name(transfer.final_url)
    return _Fetched(blob, transfer.sha256, kind, where, "downloaded", hint)
