"""Fetch safety: address policy on every hop, credentials, redaction, containment; Hugging Face links; manifests."""

from __future__ import annotations

import datetime
import json
import logging

import pytest

from lora_train.dev.http_server import FaultServer, Route
from lora_train.fetch import FetchConfig, FetchError, fetch_lora
from lora_train.fetch.netpolicy import address_refusal, expand_hf, hf_endpoints, redact_url, signed_url_expiry
from tests.core.test_fetch import files_in, make_lora, sha

pytest_plugins = ["tests.core.test_fetch"]  # server, lora, loras, make_cfg fixtures


# ---- address policy -------------------------------------------------------------------------------------------
def test_loopback_is_refused_by_default(server, lora, loras, tmp_path):
    url = server.add("/a.safetensors", Route(body=lora))
    cfg = FetchConfig(urls=url, cache_dir=str(tmp_path / "cache"))
    assert cfg.allow_private_addresses is False
    with pytest.raises(FetchError, match=r"127\.0\.0\.1 is a loopback address; set allow_private_addresses"):
        fetch_lora(cfg, loras)
    assert server.requests == [], "the refused address was never contacted"
    assert files_in(loras) == []


@pytest.mark.parametrize(
    ("address", "refused_as"),
    [("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.10", "private"),
     ("172.16.5.4", "private"), ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
     ("::ffff:127.0.0.1", "loopback"), ("100.64.0.1", "non-public"), ("0.0.0.0", "private"),
     ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("224.0.0.1", "multicast")],
)  # fmt: skip
def test_non_public_addresses_are_refused(address, refused_as):
    assert refused_as in address_refusal(address, allow_private=False)


def test_public_addresses_pass_and_private_ones_pass_only_when_allowed():
    assert address_refusal("93.184.216.34", allow_private=False) is None
    assert address_refusal("2606:4700::6810:84e5", allow_private=False) is None
    assert address_refusal("192.168.0.10", allow_private=True) is None
    assert "metadata" in address_refusal("169.254.169.254", allow_private=True), "metadata stays refused"


def test_redirect_to_metadata_address_is_refused_even_with_private_allowed(server, loras, make_cfg):
    url = server.add("/a.safetensors", Route(redirect="http://169.254.169.254/latest/meta-data/iam"))
    with pytest.raises(FetchError, match=r"169\.254\.169\.254 is a cloud metadata address"):
        fetch_lora(make_cfg(url), loras)


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://example.com/a.safetensors", "gopher://x/"])
def test_redirect_to_another_scheme_is_refused(server, loras, make_cfg, target):
    url = server.add("/a.safetensors", Route(redirect=target))
    with pytest.raises(FetchError, match="only http:// and https:// links"):
        fetch_lora(make_cfg(url), loras)


def test_non_http_link_is_refused(loras, make_cfg):
    with pytest.raises(FetchError, match="only http:// and https://"):
        fetch_lora(make_cfg("file:///etc/passwd.safetensors"), loras)


# ---- credentials and logs -------------------------------------------------------------------------------------
def test_token_goes_only_to_its_own_host_not_to_redirect_targets(lora, loras, make_cfg, caplog):
    with FaultServer() as origin, FaultServer() as cdn:
        cdn.add("/blob", Route(body=lora))
        url = origin.add("/a.safetensors", Route(redirect=cdn.url("/blob", host="localhost")))
        with caplog.at_level(logging.DEBUG):
            fetch_lora(make_cfg(url, token="tok-SECRET-42"), loras)
        assert origin.seen("/a.safetensors")[0].headers["authorization"] == "Bearer tok-SECRET-42"
        assert "authorization" not in cdn.seen("/blob")[0].headers
    assert "tok-SECRET-42" not in caplog.text


def test_signed_query_strings_never_reach_logs_or_errors(server, loras, make_cfg, caplog):
    url = server.url("/gone.safetensors?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=TOPSECRET")
    with caplog.at_level(logging.DEBUG), pytest.raises(FetchError) as info:
        fetch_lora(make_cfg(url), loras)
    for secret in ("TOPSECRET", "AKIAEXAMPLE"):
        assert secret not in str(info.value) and secret not in caplog.text
    assert "X-Amz-Signature=***" in str(info.value)


def test_redact_url_hides_query_values_and_user_info():
    assert redact_url("https://u:p@h.example/a/b.safetensors?sig=abc&se=2026") == (
        "https://***@h.example/a/b.safetensors?sig=***&se=***"
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [("X-Amz-Date=20260102T030405Z&X-Amz-Expires=60", "2026-01-02T03:05:05"),
     ("X-Goog-Date=20260102T030405Z&X-Goog-Expires=3600", "2026-01-02T04:04:05"),
     ("Expires=1767225600&Signature=x&Key-Pair-Id=y", "2026-01-01T00:00:00"),
     ("sv=2022&se=2026-03-04T05:06:07Z&sig=x", "2026-03-04T05:06:07")],
)  # fmt: skip
def test_signed_link_expiry_is_read_from_the_query(query, expected):
    expiry = signed_url_expiry(f"https://cdn.example/f?{query}")
    assert expiry == datetime.datetime.fromisoformat(expected).replace(tzinfo=datetime.UTC)


# ---- where files go -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("subfolder", ["../outside", "/etc", "a/../../b"])
def test_subfolder_cannot_leave_the_loras_folder(server, lora, loras, make_cfg, subfolder):
    url = server.add("/a.safetensors", Route(body=lora))
    with pytest.raises(FetchError, match="inside the loras folder"):
        fetch_lora(make_cfg(url, subfolder=subfolder), loras)
    assert server.requests == []


def test_subfolder_linking_outside_the_loras_folder_is_refused(server, lora, loras, make_cfg, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (loras / "linked").symlink_to(tmp_path / "elsewhere")
    url = server.add("/a.safetensors", Route(body=lora))
    with pytest.raises(FetchError, match="leads outside the loras folder"):
        fetch_lora(make_cfg(url, subfolder="linked"), loras)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_file_names_are_sanitised(server, lora, loras, make_cfg):
    url = server.add("/a.safetensors", Route(body=lora))
    result = fetch_lora(make_cfg(url, filename="../../evil na<me>.safetensors"), loras)
    assert result.lora_name == "evil na_me_.safetensors"
    assert files_in(loras) == ["evil na_me_.safetensors"]


def test_name_comes_from_content_disposition_when_the_link_has_none(server, lora, loras, make_cfg):
    headers = {"Content-Disposition": 'attachment; filename="pixel_v3.safetensors"'}
    url = server.add("/download/8d1f", Route(body=lora, extra_headers=headers))
    assert fetch_lora(make_cfg(url), loras).lora_name == "pixel_v3.safetensors"


# ---- Hugging Face ---------------------------------------------------------------------------------------------
def test_hf_links_expand_onto_every_endpoint():
    endpoints = ["https://hf-mirror.com", "https://huggingface.co"]
    assert expand_hf("hf://org/repo/sub/x.safetensors", endpoints) == [
        "https://hf-mirror.com/org/repo/resolve/main/sub/x.safetensors",
        "https://huggingface.co/org/repo/resolve/main/sub/x.safetensors",
    ]
    assert expand_hf("hf://org/repo@v1.0/x.safetensors", endpoints)[0].endswith("/org/repo/resolve/v1.0/x.safetensors")
    assert expand_hf("https://huggingface.co/org/repo/blob/main/x.safetensors", endpoints)[0] == (
        "https://hf-mirror.com/org/repo/resolve/main/x.safetensors"
    )
    assert expand_hf("https://example.com/org/repo/resolve/main/x", endpoints) == [
        "https://example.com/org/repo/resolve/main/x"
    ]


def test_hf_endpoint_environment_variable_comes_before_the_official(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.com/")
    assert hf_endpoints() == ["https://hf-mirror.com", "https://huggingface.co"]
    assert hf_endpoints(["http://a", "http://a/"]) == ["http://a"]


def test_hf_file_is_fetched_from_the_first_endpoint_that_has_it(lora, loras, make_cfg):
    with FaultServer() as mirror, FaultServer() as official:
        official.add("/org/repo/resolve/main/style.safetensors", Route(body=lora))
        cfg = make_cfg("hf://org/repo/style.safetensors", hf_endpoints=[mirror.url(""), official.url("")])
        result = fetch_lora(cfg, loras)
        assert len(mirror.requests) == 1 and result.mirror == official.url("/org/repo/resolve/main/style.safetensors")
    assert result.lora_name == "style.safetensors"


# ---- release manifests ----------------------------------------------------------------------------------------
def manifest_for(files: dict[int, bytes], mirrors: list[str]) -> bytes:
    releases = [
        {"version": v, "date": f"2026-11-0{v}", "files": [{"name": f"pixel_style_v{v}.safetensors",
                                                         "size": len(body), "sha256": sha(body)}]}
        for v, body in sorted(files.items(), reverse=True)
    ]  # fmt: skip
    return json.dumps({"schema": "lora-release/1", "name": "pixel_style", "trigger_words": ["pixelart"],
                       "recommended_weight": 0.8, "mirrors": mirrors, "releases": releases}).encode()  # fmt: skip


def test_manifest_fetches_the_latest_release_trying_its_mirrors_in_order(server, loras, make_cfg):
    v1, v2 = make_lora(seed=1), make_lora(seed=2)
    server.add("/rel/files/pixel_style_v1.safetensors", Route(body=v1))
    server.add("/rel/files/pixel_style_v2.safetensors", Route(body=v2))
    url = server.add("/rel/manifest.json", Route(body=manifest_for({1: v1, 2: v2}, [server.url("/dead/"), "files/"]),
                                                 content_type="application/json"))  # fmt: skip
    result = fetch_lora(make_cfg(url), loras)
    assert result.lora_name == "pixel_style_v2.safetensors" and result.sha256 == sha(v2)
    assert result.trigger_words == ["pixelart"]
    assert result.mirror == server.url("/rel/files/pixel_style_v2.safetensors"), "relative mirror resolved"
    assert len(server.seen("/dead/pixel_style_v2.safetensors")) == 1
    older = fetch_lora(make_cfg(url, version="v1"), loras)
    assert older.lora_name == "pixel_style_v1.safetensors" and (loras / older.lora_name).read_bytes() == v1


def test_manifest_hash_protects_against_a_mirror_serving_other_bytes(server, loras, make_cfg):
    v1 = make_lora(seed=1)
    server.add("/evil/pixel_style_v1.safetensors", Route(body=make_lora(seed=666)))
    server.add("/good/pixel_style_v1.safetensors", Route(body=v1))
    body = manifest_for({1: v1}, [server.url("/evil/"), server.url("/good/")])
    url = server.add("/m.json", Route(body=body))
    result = fetch_lora(make_cfg(url), loras)
    assert (loras / "pixel_style_v1.safetensors").read_bytes() == v1
    assert any("sha256 mismatch" in a for a in result.attempts)


def test_local_manifest_file_and_unknown_version(server, loras, make_cfg, tmp_path):
    v1 = make_lora(seed=1)
    server.add("/f/pixel_style_v1.safetensors", Route(body=v1))
    path = tmp_path / "pixel_style.json"
    path.write_bytes(manifest_for({1: v1}, [server.url("/f/")]))
    assert fetch_lora(make_cfg(str(path)), loras).lora_name == "pixel_style_v1.safetensors"
    with pytest.raises(FetchError, match="has no version 'v7'; available: v1"):
        fetch_lora(make_cfg(str(path), version="v7"), loras)


def test_manifest_with_other_links_is_refused(server, loras, make_cfg):
    with pytest.raises(FetchError, match="give a release manifest"):
        fetch_lora(make_cfg(server.url("/m.json"), server.url("/x.safetensors")), loras)


def test_invalid_manifest_names_the_field(server, loras, make_cfg):
    url = server.add("/m.json", Route(body=b'{"schema": "lora-release/1", "name": "x", "releases": [{"version": 0}]}'))
    with pytest.raises(FetchError, match=r"releases\[0\]"):
        fetch_lora(make_cfg(url), loras)


def test_hf_token_goes_to_huggingface_only_never_to_a_mirror_endpoint(lora, loras, make_cfg, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SECRET")
    with FaultServer() as mirror:
        mirror.add("/org/repo/resolve/main/s.safetensors", Route(body=lora))
        fetch_lora(make_cfg("hf://org/repo/s.safetensors", hf_endpoints=[mirror.url("")]), loras)
        assert "authorization" not in mirror.requests[0].headers
