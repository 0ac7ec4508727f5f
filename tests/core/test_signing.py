"""Signed releases: keygen, publish --sign, and fetch verifying the manifest against the user's trusted keys, with
the manifest and signature served by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lora_train.dev.http_server import FaultServer, Route
from lora_train.fetch import FetchConfig, FetchError, fetch_lora
from lora_train.release import SigningError, generate_key, load_manifest, load_trusted_keys
from lora_train.release.publish import publish_lora
from tests.conftest import REPO_ROOT
from tests.core.test_publish import config, make_lora


@pytest.fixture
def keys(tmp_path):
    """A publisher key pair, the fetcher's trusted folder holding its .pub, and a stranger's key pair."""
    private, public, key = generate_key(tmp_path / "keys", "alice")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "alice.pub").write_bytes(public.read_bytes())
    stranger, _, _ = generate_key(tmp_path / "keys", "mallory")
    return {"private": private, "public": public, "key": key, "trusted": trusted, "stranger": stranger}


@pytest.fixture
def release(tmp_path, keys):
    """A release signed by alice."""
    lora = tmp_path / "trained.safetensors"
    make_lora(lora)
    return publish_lora(config(sign_key=str(keys["private"])), lora, tmp_path / "releases")


@pytest.fixture
def served(release):
    """The release folder on a loopback server: manifest, signature and weights under /rel/."""
    with FaultServer() as server:
        for path in release.release_dir.iterdir():
            server.add(f"/rel/{path.name}", Route(file=path))
        manifest = json.loads(release.manifest_path.read_text())
        manifest["mirrors"] = [server.url("/rel/")]
        yield server, manifest


def serve_manifest(server: FaultServer, manifest: dict | bytes, signature: bytes | None) -> str:
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest, indent=2).encode()
    if signature is not None:
        server.add("/pub/manifest.json.sig", Route(body=signature))
    return server.add("/pub/manifest.json", Route(body=body, content_type="application/json"))


def fetch(url: str, tmp_path, **changes):
    cfg = FetchConfig.from_dict({"urls": url, "allow_private_addresses": True, "backoff": 0.0,
                                 "cache_dir": str(tmp_path / "cache"), **changes})  # fmt: skip
    loras = tmp_path / "loras"
    loras.mkdir(exist_ok=True)
    return fetch_lora(cfg, loras)


def resign(manifest: dict, private_path) -> tuple[bytes, bytes]:
    """The manifest re-dumped and signed again (as publish would, after adding mirrors)."""
    from lora_train.release import dump_manifest, load_private_key, sign_bytes
    from lora_train.release.manifest import manifest_from_dict

    text = dump_manifest(manifest_from_dict(manifest)).encode()
    return text, sign_bytes(text, load_private_key(private_path))


def test_keygen_writes_a_private_key_only_its_owner_reads_and_a_shareable_public_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lora_train", "keygen", "bob", "--dir", str(tmp_path)],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    assert (tmp_path / "bob.key").stat().st_mode & 0o777 == 0o600
    line = (tmp_path / "bob.pub").read_text().strip()
    assert line.startswith("ssh-ed25519 ") and line.endswith(" bob")
    key_id = next(iter(load_trusted_keys(tmp_path / "bob.pub")))
    assert f"key id       {key_id}" in out.stdout
    again = subprocess.run([sys.executable, "-m", "lora_train", "keygen", "bob", "--dir", str(tmp_path)],
                           cwd=REPO_ROOT, capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 2 and "never overwritten" in again.stderr


def test_publish_sign_writes_a_detached_signature_and_the_key_id(release, keys):
    manifest = load_manifest(release.manifest_path)
    assert manifest.signer == {"key_id": keys["key"].key_id, "name": "alice"}
    signature = json.loads((release.release_dir / "manifest.json.sig").read_text())
    assert signature["key_id"] == keys["key"].key_id and signature["algorithm"] == "ed25519"
    assert release.release_dir / "manifest.json.sig" in release.written


def test_fetch_verifies_a_signed_manifest_against_trusted_keys(served, keys, tmp_path, release):
    server, manifest = served
    text, signature = resign(manifest, keys["private"])
    result = fetch(serve_manifest(server, text, signature), tmp_path, trusted_keys=str(keys["trusted"]),
                   signature_policy="refuse")  # fmt: skip
    assert result.signature == f"verified: signed by alice ({keys['key'].key_id})"
    assert result.sha256 == release.sha256


def test_fetch_refuses_a_manifest_changed_after_signing(served, keys, tmp_path):
    server, manifest = served
    text, signature = resign(manifest, keys["private"])
    forged = text.replace(manifest["releases"][0]["files"][0]["sha256"].encode(), b"0" * 64)
    url = serve_manifest(server, forged, signature)
    with pytest.raises(FetchError, match=r"BAD SIGNATURE for trusted key .* changed after it was signed"):
        fetch(url, tmp_path, trusted_keys=str(keys["trusted"]))  # refused even under the lenient policy
    assert not list((tmp_path / "loras").iterdir())


def test_fetch_refuses_a_signed_claim_whose_signature_was_stripped(served, keys, tmp_path):
    server, manifest = served
    text, _ = resign(manifest, keys["private"])
    with pytest.raises(FetchError, match=f"signed by key {keys['key'].key_id} but no signature was found"):
        fetch(serve_manifest(server, text, None), tmp_path, trusted_keys=str(keys["trusted"]))


def test_a_stranger_re_signing_a_rewritten_manifest_is_not_trusted(served, keys, tmp_path):
    server, manifest = served
    manifest.pop("signer")
    text, signature = resign(manifest, keys["stranger"])
    url = serve_manifest(server, text, signature)
    with pytest.raises(FetchError, match="not among your trusted keys; refused by signature_policy=refuse"):
        fetch(url, tmp_path, trusted_keys=str(keys["trusted"]), signature_policy="refuse")
    result = fetch(url, tmp_path, trusted_keys=str(keys["trusted"]))
    assert result.signature.startswith("untrusted: ") and "not among your trusted keys" in result.signature


def test_unsigned_manifest_is_reported_or_refused_by_policy(served, keys, tmp_path, caplog):
    server, manifest = served
    manifest.pop("signer")
    url = serve_manifest(server, manifest, None)
    with pytest.raises(FetchError, match="is not signed; refused by signature_policy=refuse"):
        fetch(url, tmp_path, trusted_keys=str(keys["trusted"]), signature_policy="refuse")
    result = fetch(url, tmp_path, trusted_keys=str(keys["trusted"]))
    assert result.signature.startswith("unsigned: ")
    assert "is not signed; fetching anyway" in caplog.text


def test_trusted_keys_from_the_environment_and_bad_trust_settings_are_named(served, keys, tmp_path, monkeypatch):
    server, manifest = served
    text, signature = resign(manifest, keys["private"])
    url = serve_manifest(server, text, signature)
    monkeypatch.setenv("LORA_TRAIN_TRUSTED_KEYS", str(keys["trusted"] / "alice.pub"))
    assert fetch(url, tmp_path).signature.startswith("verified")
    with pytest.raises(FetchError, match=r"trusted_keys: .*nowhere is neither a folder"):
        fetch(url, tmp_path, trusted_keys=str(tmp_path / "nowhere"))
    (tmp_path / "junk.pub").write_text("ssh-rsa AAAAB3NzaC1yc2E= someone\n")
    with pytest.raises(FetchError, match=r"junk.pub:1: expected a line 'ssh-ed25519"):
        fetch(url, tmp_path, trusted_keys=str(tmp_path / "junk.pub"))


def test_a_local_manifest_file_is_verified_with_the_signature_beside_it(release, keys, tmp_path):
    manifest = load_manifest(release.manifest_path)
    assert manifest.signer["key_id"] == keys["key"].key_id
    with FaultServer() as server:
        server.add(f"/rel/{release.weights_path.name}", Route(file=release.weights_path))
        data = json.loads(release.manifest_path.read_text())
        data["mirrors"] = [server.url("/rel/")]
        text, signature = resign(data, keys["private"])
        (tmp_path / "local").mkdir()
        (tmp_path / "local" / "manifest.json").write_bytes(text)
        (tmp_path / "local" / "manifest.json.sig").write_bytes(signature)
        result = fetch(str(tmp_path / "local" / "manifest.json"), tmp_path, trusted_keys=str(keys["trusted"]))
    assert result.signature.startswith("verified")


def test_publish_with_an_unusable_key_names_it_and_writes_nothing(tmp_path):
    lora = tmp_path / "trained.safetensors"
    make_lora(lora)
    (tmp_path / "rsa.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    from lora_train.release import PublishError

    with pytest.raises(PublishError, match=r"sign_key: .*rsa.key is not a usable private key"):
        publish_lora(config(sign_key=str(tmp_path / "rsa.key")), lora, tmp_path / "releases")
    assert not (tmp_path / "releases" / "pixelart_style").exists()


def test_unreadable_signature_file_is_a_clear_error():
    from lora_train.release.signing import read_signature

    with pytest.raises(SigningError, match="not a lora_train signature file"):
        read_signature(b"<html>oops</html>")


def test_next_version_of_a_signed_release_needs_the_key(release, keys, tmp_path):
    from lora_train.release import PublishError

    lora = tmp_path / "next.safetensors"
    make_lora(lora, seed=1)
    with pytest.raises(PublishError, match="is signed by alice: give sign_key"):
        publish_lora(config(), lora, tmp_path / "releases")
    second = publish_lora(config(sign_key=str(keys["private"])), lora, tmp_path / "releases")
    assert second.version == 2 and load_manifest(second.manifest_path).signer["name"] == "alice"
    assert "## Signature" in second.readme_path.read_text() and keys["key"].key_id in second.readme_path.read_text()
