"""Bad-input messages of fetch seen in held-out round trips: a last-digit sha256 mismatch must be visible, and a
release of only pickles must say it was refused because it is a pickle."""

from __future__ import annotations

import json

import pytest

from lora_train.dev.http_server import FaultServer, Route
from lora_train.fetch import FetchConfig, FetchError, fetch_lora
from tests.core.test_fetch import make_lora, sha


def _fetch(tmp_path, *urls, **changes):
    cfg = FetchConfig.from_dict({"urls": "\n".join(urls), "allow_private_addresses": True, "backoff": 0.0,
                                 "cache_dir": str(tmp_path / "cache"), **changes})  # fmt: skip
    (tmp_path / "loras").mkdir(exist_ok=True)
    return fetch_lora(cfg, tmp_path / "loras")


def test_sha256_differing_in_the_last_digit_shows_both_hashes_whole(tmp_path):
    lora = make_lora()
    real = sha(lora)
    expected = real[:-1] + ("0" if real[-1] != "0" else "1")
    with FaultServer() as server:
        url = server.add("/a.safetensors", Route(body=lora))
        with pytest.raises(FetchError) as caught:
            _fetch(tmp_path, url, sha256=expected)
    message = str(caught.value)
    assert f"sha256 mismatch: got {real}, expected {expected} (they differ from hex digit 64 of 64 on)" in message
    assert not list((tmp_path / "loras").iterdir())


def test_a_release_listing_only_a_ckpt_is_refused_as_a_pickle(tmp_path):
    manifest = {"schema": "lora-release/1", "name": "old_style", "releases": [
        {"version": 1, "date": "2026-11-30",
         "files": [{"name": "old_style_v1.ckpt", "size": 10, "sha256": "a" * 64}]}]}  # fmt: skip
    with FaultServer() as server:
        server.add("/old_style_v1.ckpt", Route(body=b"\x80\x04" + b"x" * 8))
        manifest["mirrors"] = [server.url("/")]
        url = server.add("/manifest.json", Route(body=json.dumps(manifest).encode(), content_type="application/json"))
        with pytest.raises(FetchError) as caught:
            _fetch(tmp_path, url)
    message = str(caught.value)
    assert "old_style_v1.ckpt: a Python pickle, which can run code when loaded, so it was refused" in message
    assert "lists no" not in message
