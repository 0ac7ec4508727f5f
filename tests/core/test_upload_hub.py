"""Publishing to a Hugging Face Hub repo with huggingface_hub's own API, against the Hub test double
(lora_train/dev/hub_double.py) on 127.0.0.1, HF_ENDPOINT pointing at it as at a mirror endpoint."""

from __future__ import annotations

import logging

import pytest

from lora_train.dev.hub_double import HubDouble
from lora_train.fetch import FetchConfig, fetch_lora
from lora_train.release import load_manifest
from lora_train.release.publish import publish_lora
from lora_train.upload import UploadError, distribute_release, parse_destination
from tests.core.test_publish import config, make_lora

TOKEN = "hf_double_token_never_logged_123"


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the double speaks LFS, not Xet
    with HubDouble(token=TOKEN) as double:
        monkeypatch.setenv("HF_ENDPOINT", double.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield double


@pytest.fixture
def release(tmp_path):
    lora = tmp_path / "trained.safetensors"
    make_lora(lora, seed=2)
    return publish_lora(config(), lora, tmp_path / "releases")


def test_hub_upload_commits_the_manifest_last_and_resolve_links_fetch(hub, release, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    dest = parse_destination("hf://alice/pixelart/loras")
    result = distribute_release(release.release_dir, [dest])
    weights = release.weights_path.name
    files = hub.repos["alice/pixelart"]
    assert files[f"loras/{weights}"] == release.weights_path.read_bytes()
    assert files["loras/manifest.json"] == release.manifest_path.read_bytes()
    assert [paths for _, paths in hub.commits] == [[f"loras/{weights}"], ["loras/README.md"],
                                                   ["loras/manifest.json"]]  # fmt: skip
    link = f"{hub.url}/alice/pixelart/resolve/main/loras/{weights}"
    assert load_manifest(release.manifest_path).releases[0].files[0].urls == [link]
    assert result.manifest_links[str(dest)] == f"{hub.url}/alice/pixelart/resolve/main/loras/manifest.json"
    cfg = FetchConfig.from_dict({"urls": result.manifest_links[str(dest)], "allow_private_addresses": True,
                                 "cache_dir": str(tmp_path / "cache")})  # fmt: skip
    (tmp_path / "loras").mkdir()
    assert fetch_lora(cfg, tmp_path / "loras").sha256 == release.sha256
    assert TOKEN not in caplog.text and TOKEN not in release.manifest_path.read_text()


def test_hub_wrong_token_names_the_repo_and_step_and_writes_no_manifest(hub, release, monkeypatch):
    before = release.manifest_path.read_bytes()
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(UploadError, match=r"hf hf://alice/pixelart: creating or finding repo alice/pixelart: the "
                       "Hub refused the token \\(HTTP 401\\)") as caught:  # fmt: skip
        distribute_release(release.release_dir, [parse_destination("hf://alice/pixelart")])
    assert "hf_wrong" not in str(caught.value)
    assert release.manifest_path.read_bytes() == before and hub.commits == []
