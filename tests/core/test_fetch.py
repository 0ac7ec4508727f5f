"""fetch_lora against a real HTTP server on 127.0.0.1: downloads, resume, retries, mirrors, verification."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import threading

import numpy as np
import pytest
from safetensors.numpy import save

from lora_train.dev.http_server import FaultServer, Route
from lora_train.fetch import FetchCancelled, FetchConfig, FetchError, fetch_lora

# S3 says this when a presigned URL is used after X-Amz-Date + X-Amz-Expires.
S3_EXPIRED = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"


def make_lora(seed: int = 0, rank: int = 4, width: int = 320) -> bytes:
    """A small kohya-style LoRA (about 100 KB) as safetensors bytes."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for block in range(4):
        stem = f"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_{'qkvo'[block]}"
        tensors[f"{stem}.lora_down.weight"] = rng.standard_normal((rank, width)).astype(np.float32)
        tensors[f"{stem}.lora_up.weight"] = rng.standard_normal((width, rank)).astype(np.float32)
        tensors[f"{stem}.alpha"] = np.array(float(rank), dtype=np.float32)
    return save(tensors, metadata={"ss_network_dim": str(rank)})


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


@pytest.fixture
def lora() -> bytes:
    return make_lora()


@pytest.fixture
def loras(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    return folder


@pytest.fixture
def make_cfg(tmp_path):
    def make(*urls: str, **changes) -> FetchConfig:
        values = {"urls": "\n".join(urls), "allow_private_addresses": True, "backoff": 0.0,
                  "cache_dir": str(tmp_path / "cache"), **changes}  # fmt: skip
        return FetchConfig.from_dict(values)

    return make


def files_in(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ---- the happy path -------------------------------------------------------------------------------------------
def test_fetch_downloads_verifies_and_places_the_file(server, lora, loras, make_cfg):
    url = server.add("/files/style_v1.safetensors", Route(body=lora, etag='"v1"'))
    result = fetch_lora(make_cfg(url, sha256=sha(lora)), loras)
    assert result.lora_name == "style_v1.safetensors"
    assert (loras / "style_v1.safetensors").read_bytes() == lora
    assert result.sha256 == sha(lora) and result.size == len(lora) and result.bytes_downloaded == len(lora)
    assert result.status == "downloaded"
    assert files_in(loras) == ["style_v1.safetensors"], "nothing but the final file in the loras folder"


def test_fetch_into_subfolder_gives_loraloader_style_name(server, lora, loras, make_cfg):
    url = server.add("/a.safetensors", Route(body=lora))
    result = fetch_lora(make_cfg(url, subfolder="styles/pixel", filename="pixel art.safetensors"), loras)
    assert result.lora_name == "styles/pixel/pixel art.safetensors"
    assert result.path == (loras / "styles" / "pixel" / "pixel art.safetensors").resolve()


def test_progress_reports_bytes_speed_and_statuses(server, lora, loras, make_cfg):
    url = server.add("/a.safetensors", Route(body=lora))
    reports = []
    fetch_lora(make_cfg(url), loras, progress=reports.append)
    statuses = [r.status for r in reports]
    assert statuses[0] == "connecting" and statuses[-1] == "done"
    downloading = [r for r in reports if r.status == "downloading"]
    assert downloading and downloading[-1].downloaded == len(lora) and downloading[-1].total == len(lora)
    assert all(r.mirror.startswith("http://127.0.0.1") for r in downloading)


# ---- resume ---------------------------------------------------------------------------------------------------
def test_fetch_resumes_after_connection_drop_mid_body(server, lora, loras, make_cfg):
    half = len(lora) // 2
    url = server.add("/a.safetensors", Route(body=lora, etag='"e1"', drop_after=half))
    result = fetch_lora(make_cfg(url, sha256=sha(lora)), loras)
    assert (loras / "a.safetensors").read_bytes() == lora
    gets = server.seen("/a.safetensors")
    assert len(gets) == 2 and gets[1].headers["range"] == f"bytes={half}-"
    assert gets[1].headers["if-range"] == '"e1"'
    assert result.bytes_downloaded == len(lora), "resume must not fetch the first half again"


def test_cancelled_fetch_resumes_in_a_later_run(server, lora, loras, make_cfg):
    url = server.add("/a.safetensors", Route(body=lora, etag='"e1"', trickle=(8192, 0.0)))
    seen_bytes = []

    def cancel_at_40_percent() -> bool:
        return bool(seen_bytes) and seen_bytes[-1] >= 0.4 * len(lora)

    with pytest.raises(FetchCancelled):
        fetch_lora(
            make_cfg(url), loras, progress=lambda p: seen_bytes.append(p.downloaded), cancel=cancel_at_40_percent
        )
    assert files_in(loras) == [], "a cancelled fetch leaves nothing in the loras folder"
    kept = next(iter((loras.parent / "cache" / "partial").glob("*.part"))).stat().st_size
    assert kept >= 0.4 * len(lora)
    # A new call (as after a ComfyUI restart: nothing shared but the cache folder) resumes from the partial file.
    result = fetch_lora(make_cfg(url), loras)
    assert (loras / "a.safetensors").read_bytes() == lora
    assert server.seen("/a.safetensors")[-1].headers["range"] == f"bytes={kept}-"
    assert result.bytes_downloaded == len(lora) - kept


def test_server_ignoring_range_restarts_from_zero_and_says_so(server, lora, loras, make_cfg, caplog):
    url = server.add("/a.safetensors", Route(body=lora, drop_after=len(lora) // 3, ignore_range=True))
    with caplog.at_level(logging.WARNING):
        result = fetch_lora(make_cfg(url, sha256=sha(lora)), loras)
    assert (loras / "a.safetensors").read_bytes() == lora
    assert server.seen("/a.safetensors")[1].status == 200
    assert "ignored the Range request" in caplog.text
    assert result.bytes_downloaded == len(lora) // 3 + len(lora)


def test_changed_file_on_server_is_not_spliced_onto_old_partial(server, lora, loras, make_cfg):
    old = make_lora(seed=1)
    route = server.add("/a.safetensors", Route(body=old, etag='"old"', drop_after=len(old) // 2, drop_times=5))
    with pytest.raises(FetchError):
        fetch_lora(make_cfg(route, retries=0), loras)
    server.routes["/a.safetensors"] = Route(body=lora, etag='"new"')  # the publisher replaced the file
    fetch_lora(make_cfg(route), loras)
    last = server.seen("/a.safetensors")[-1]
    assert last.headers["if-range"] == '"old"' and last.status == 200
    assert (loras / "a.safetensors").read_bytes() == lora


# ---- retries and mirrors --------------------------------------------------------------------------------------
def test_500_then_success_honours_retry_after(server, lora, loras, make_cfg):
    url = server.add("/a.safetensors", Route(body=lora, script=[(500, {"Retry-After": "7"}, b"busy")]))
    sleeps = []
    result = fetch_lora(make_cfg(url), loras, sleep=sleeps.append)
    assert sleeps == [7.0]
    assert result.mirror == url and any("HTTP 500" in a for a in result.attempts)


def test_retry_after_longer_than_allowed_moves_to_next_mirror(server, lora, loras, make_cfg):
    slow = server.add("/slow.safetensors", Route(body=lora, script=[(503, {"Retry-After": "3600"}, b"")]))
    good = server.add("/good.safetensors", Route(body=lora))
    sleeps = []
    result = fetch_lora(make_cfg(slow, good, max_retry_after=60), loras, sleep=sleeps.append)
    assert sleeps == [] and result.mirror == good


def test_backoff_doubles_with_jitter_between_retries(server, lora, loras, make_cfg):
    url = server.add("/a.safetensors", Route(body=lora, script=[(503, {}, b"")] * 3))
    sleeps = []
    fetch_lora(make_cfg(url, backoff=1.0, retries=3), loras, sleep=sleeps.append)
    assert len(sleeps) == 3
    for pause, ceiling in zip(sleeps, (1.0, 2.0, 4.0), strict=True):
        assert ceiling / 2 <= pause <= ceiling


def test_every_mirror_failing_gives_one_clear_error_and_nothing_in_loras(server, lora, loras, make_cfg):
    dead = server.url("/missing.safetensors")
    broken = server.add("/broken.safetensors", Route(body=lora, script=[(500, {}, b"")] * 10))
    with pytest.raises(FetchError) as info:
        fetch_lora(make_cfg(dead, broken, retries=2), loras, sleep=lambda s: None)
    message = str(info.value)
    assert "missing.safetensors: HTTP 404" in message and "no file at this link" in message
    assert "broken.safetensors: HTTP 500" in message
    assert "Nothing was written to the loras folder" in message
    assert len(server.seen("/broken.safetensors")) == 3, "one try plus two retries"
    assert files_in(loras) == []


def test_expired_signed_link_is_reported_and_next_mirror_used(server, lora, loras, make_cfg):
    signed = "/cdn/a.safetensors?X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-Signature=SECRET123"
    server.add("/cdn/a.safetensors", Route(body=lora, script=[(403, {"Content-Type": "application/xml"}, S3_EXPIRED)]))
    backup = server.add("/backup/a.safetensors", Route(body=lora))
    result = fetch_lora(make_cfg(server.url(signed), backup), loras)
    assert result.mirror == backup
    note = next(a for a in result.attempts if "HTTP 403" in a)
    assert "signed link expired at 2026-01-01 01:00 UTC" in note and "fresh link" in note
    assert "SECRET123" not in " ".join(result.attempts)


def test_expired_signature_detected_from_body_alone(server, lora, loras, make_cfg):
    url = server.add("/a.safetensors", Route(body=lora, script=[(403, {}, S3_EXPIRED)]))
    with pytest.raises(FetchError, match=r"signature expired"):
        fetch_lora(make_cfg(url), loras)


def test_slow_trickle_is_abandoned_for_the_next_mirror(server, lora, loras, make_cfg):
    slow = server.add("/slow.safetensors", Route(body=lora, trickle=(64, 0.02)))
    fast = server.add("/fast.safetensors", Route(body=lora))
    cfg = make_cfg(slow, fast, retries=0, low_speed_limit=50_000, low_speed_time=0.3)
    result = fetch_lora(cfg, loras)
    assert result.mirror == fast
    assert any("too slow" in a for a in result.attempts)


def test_wrong_bytes_fail_the_hash_and_the_next_mirror_is_used(server, lora, loras, make_cfg, tmp_path):
    bad = server.add("/bad.safetensors", Route(body=make_lora(seed=9)))
    good = server.add("/good.safetensors", Route(body=lora))
    result = fetch_lora(make_cfg(bad, good, sha256=sha(lora)), loras)
    assert result.mirror == good and (loras / "bad.safetensors").read_bytes() == lora
    assert any("sha256 mismatch" in a for a in result.attempts)
    assert not list((tmp_path / "cache" / "partial").glob("*.part")), "the bad bytes were not kept"


def test_size_announced_by_server_is_checked_before_download(server, lora, loras, make_cfg):
    url = server.add("/a.safetensors", Route(body=lora))
    with pytest.raises(FetchError, match=f"server offers {len(lora)} bytes, expected 10"):
        fetch_lora(make_cfg(url, size=10), loras)


def test_redirect_chain_is_followed_and_capped(server, lora, loras, make_cfg):
    server.add("/final.safetensors", Route(body=lora))
    for hop in range(3):
        target = "/final.safetensors" if hop == 2 else f"/hop{hop + 1}"
        server.add(f"/hop{hop}", Route(redirect=server.url(target), redirect_status=(301, 302, 307)[hop]))
    assert fetch_lora(make_cfg(server.url("/hop0")), loras).lora_name == "final.safetensors"
    with pytest.raises(FetchError, match=r"more than 2 redirects"):
        fetch_lora(make_cfg(server.url("/hop0"), max_redirects=2), loras)


# ---- what the bytes are ---------------------------------------------------------------------------------------
def test_html_error_page_served_with_200_is_refused(server, loras, make_cfg):
    page = b"<!DOCTYPE html><html><head><title>Sign in to continue</title></head><body>...</body></html>"
    url = server.add("/a.safetensors", Route(body=page, content_type="text/html"))
    with pytest.raises(FetchError, match=r"sent a HTML page .*Sign in to continue"):
        fetch_lora(make_cfg(url), loras)
    assert files_in(loras) == []


def test_json_error_body_served_with_200_is_refused(server, loras, make_cfg):
    url = server.add("/a.safetensors", Route(body=b'{"error": "quota exceeded"}', content_type="application/json"))
    with pytest.raises(FetchError, match=r"JSON page.*quota exceeded"):
        fetch_lora(make_cfg(url), loras)


def test_pickle_is_refused_unless_allowed(server, loras, make_cfg):
    payload = pickle.dumps({"state_dict": list(range(100))}, protocol=4)
    url = server.add("/model.ckpt", Route(body=payload))
    with pytest.raises(FetchError, match=r"Python pickle .* allow_pickle"):
        fetch_lora(make_cfg(url), loras)
    assert files_in(loras) == []
    assert len(server.seen("/model.ckpt")) == 1, "a refused pickle is not retried on other mirrors"
    result = fetch_lora(make_cfg(url, allow_pickle=True), loras)
    assert result.lora_name == "model.ckpt" and (loras / "model.ckpt").read_bytes() == payload


def test_pickle_disguised_as_safetensors_is_refused(server, loras, make_cfg):
    url = server.add("/innocent.safetensors", Route(body=pickle.dumps([1, 2, 3], protocol=2)))
    with pytest.raises(FetchError, match=r"pickle"):
        fetch_lora(make_cfg(url), loras)


def test_oversized_safetensors_header_is_refused(server, loras, make_cfg):
    body = (200 * 1024 * 1024).to_bytes(8, "little") + b'{"a": ' + b" " * 200
    url = server.add("/big.safetensors", Route(body=body))
    with pytest.raises(FetchError, match=r"exceeds the .*-byte cap"):
        fetch_lora(make_cfg(url), loras)


def test_safetensors_with_offsets_outside_the_file_is_refused(server, lora, loras, make_cfg):
    url = server.add("/cut.safetensors", Route(body=lora[:-16]))
    with pytest.raises(FetchError, match=r"outside the file's data|trailing bytes"):
        fetch_lora(make_cfg(url), loras)
    assert files_in(loras) == []


# ---- cache and concurrency ------------------------------------------------------------------------------------
def test_known_hash_is_never_downloaded_twice(server, lora, loras, make_cfg):
    url = server.add("/a.safetensors", Route(body=lora))
    fetch_lora(make_cfg(url, sha256=sha(lora)), loras)
    again = fetch_lora(make_cfg(url, sha256=sha(lora), subfolder="copy"), loras)
    assert len(server.seen("/a.safetensors")) == 1
    assert again.status == "cached" and again.bytes_downloaded == 0
    assert (loras / "copy" / "a.safetensors").read_bytes() == lora


def test_link_without_hash_is_revalidated_with_its_etag(server, lora, loras, make_cfg):
    url = server.add("/a.safetensors", Route(body=lora, etag='"abc"'))
    fetch_lora(make_cfg(url), loras)
    again = fetch_lora(make_cfg(url), loras)
    last = server.seen("/a.safetensors")[-1]
    assert last.headers["if-none-match"] == '"abc"' and last.status == 304
    assert again.bytes_downloaded == 0 and again.status == "present"


def test_two_concurrent_fetches_of_one_file_download_once_and_agree(server, lora, loras, make_cfg):
    url = server.add("/a.safetensors", Route(body=lora, trickle=(16384, 0.0)))
    results, errors = [], []

    def run(sub: str) -> None:
        try:
            results.append(fetch_lora(make_cfg(url, sha256=sha(lora), subfolder=sub), loras))
        except FetchError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(sub,)) for sub in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 2
    assert len(server.seen("/a.safetensors")) == 1
    assert (loras / "one" / "a.safetensors").read_bytes() == lora == (loras / "two" / "a.safetensors").read_bytes()


def test_existing_different_file_is_not_overwritten_without_permission(server, lora, loras, make_cfg):
    (loras / "a.safetensors").write_bytes(b"mine")
    url = server.add("/a.safetensors", Route(body=lora))
    with pytest.raises(FetchError, match=r"already exists with different content; turn on overwrite"):
        fetch_lora(make_cfg(url), loras)
    assert (loras / "a.safetensors").read_bytes() == b"mine"
    fetch_lora(make_cfg(url, overwrite=True), loras)
    assert (loras / "a.safetensors").read_bytes() == lora


# ---- archives -------------------------------------------------------------------------------------------------
def make_zip(members: dict[str, bytes], method: int | None = None) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method or zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_release_keeps_only_safetensors_and_model_card(server, lora, loras, make_cfg):
    card = b"# Pixel style\nTrigger: pixelart\n"
    body = make_zip({"release/pixel_v2.safetensors": lora, "release/README.md": card,
                     "release/pixel_v2.ckpt": b"\x80\x04junk", "notes.txt": b"hi"})  # fmt: skip
    url = server.add("/pixel_v2.zip", Route(body=body))
    result = fetch_lora(make_cfg(url), loras)
    assert files_in(loras) == ["pixel_v2.md", "pixel_v2.safetensors"]
    assert result.lora_name == "pixel_v2.safetensors" and (loras / "pixel_v2.md").read_bytes() == card


def test_zip_slip_archive_is_refused(server, lora, loras, make_cfg, tmp_path):
    url = server.add("/evil.zip", Route(body=make_zip({"ok.safetensors": lora, "../../evil.safetensors": lora})))
    with pytest.raises(FetchError, match=r"zip-slip"):
        fetch_lora(make_cfg(url), loras)
    assert files_in(loras) == [] and not (tmp_path / "evil.safetensors").exists()


def test_zip_bomb_is_refused(server, loras, make_cfg):
    url = server.add("/bomb.zip", Route(body=make_zip({"big.safetensors": bytes(20 * 1024 * 1024)})))
    with pytest.raises(FetchError, match=r"zip bomb"):
        fetch_lora(make_cfg(url), loras)
    assert files_in(loras) == []


def test_zip_without_safetensors_is_refused(server, loras, make_cfg):
    url = server.add("/x.zip", Route(body=make_zip({"model.ckpt": b"\x80\x04x"})))
    with pytest.raises(FetchError, match=r"no \.safetensors file"):
        fetch_lora(make_cfg(url), loras)


def test_archive_is_placed_all_or_nothing(server, loras, make_cfg):
    (loras / "b.safetensors").write_bytes(b"someone else's")
    url = server.add("/two.zip", Route(body=make_zip({"a.safetensors": make_lora(1), "b.safetensors": make_lora(2)})))
    with pytest.raises(FetchError, match=r"b\.safetensors already exists with different content"):
        fetch_lora(make_cfg(url), loras)
    assert files_in(loras) == ["b.safetensors"], "a.safetensors must not be placed when b cannot be"
