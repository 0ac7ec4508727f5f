"""Uploading releases to real servers on 127.0.0.1: a local folder, WebDAV (rclone serve webdav, with auth) and S3
(moto's server behind a proxy enforcing presigned-link expiry); the manifest is written last, links renew, and
failures name the destination and step and leave no manifest pointing at a missing or partial file."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from lora_train.dev.storage_servers import moto_s3, rclone_webdav
from lora_train.fetch import FetchConfig, fetch_lora
from lora_train.release import generate_key, load_manifest
from lora_train.release.publish import publish_lora
from lora_train.upload import UploadError, distribute_release, parse_destination, renew_links
from tests.core.test_publish import config, make_lora

AWS_SECRET = "aws-secret-never-shown-0123456789"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTUPLOADER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def release(tmp_path):
    lora = tmp_path / "trained.safetensors"
    make_lora(lora)
    return publish_lora(config(), lora, tmp_path / "releases")


@contextlib.contextmanager
def static_site(root: Path):
    """A plain HTTP file server for `root` (what a public web folder is)."""
    handler = functools.partial(QuietFiles, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def fetch(manifest_url: str, tmp_path: Path, cache: str):
    cfg = FetchConfig.from_dict({"urls": manifest_url, "allow_private_addresses": True, "backoff": 0.0,
                                 "cache_dir": str(tmp_path / cache)})  # fmt: skip
    target = tmp_path / f"loras-{cache}"
    target.mkdir()
    return fetch_lora(cfg, target)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- local folder ----------------------------------------------------------------------------------------------
def test_folder_destination_copies_verifies_and_writes_the_manifest_last(release, tmp_path):
    site = tmp_path / "site"
    with static_site(site) as base:
        dest = parse_destination(f"{site}?url={base}")
        result = distribute_release(release.release_dir, [dest])
        fetched = fetch(base + "manifest.json", tmp_path, "a")
    assert fetched.sha256 == release.sha256 and fetched.path.read_bytes() == release.weights_path.read_bytes()
    assert [u.rsplit(": ", 1)[1] for u in result.uploaded] == [
        release.weights_path.name, "README.md", "manifest.json"]  # fmt: skip
    manifest = load_manifest(release.manifest_path)
    assert manifest.releases[0].files[0].urls == [base + release.weights_path.name]
    assert manifest.releases[0].destinations == [{"kind": "folder", "location": f"folder:{site}?url={base}"}]
    assert (site / "manifest.json").read_bytes() == release.manifest_path.read_bytes()
    assert "## Uploaded to" in (site / "README.md").read_text()
    assert sorted(p.name for p in site.iterdir()) == ["README.md", "manifest.json", release.weights_path.name]


def test_credentials_in_a_destination_are_refused_before_anything_is_recorded():
    with pytest.raises(UploadError, match="credentials do not go in the destination") as caught:
        parse_destination("webdav://bob:hunter2@127.0.0.1:1/dav")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(UploadError, match="unknown kind 'ftp'"):
        parse_destination("ftp://example.invalid/x")
    with pytest.raises(UploadError, match="expires must be between 1 second and 7 days"):
        parse_destination("s3://bucket/x?expires=8d")


# ---- WebDAV ----------------------------------------------------------------------------------------------------
def test_webdav_upload_with_auth_verifies_and_never_records_the_password(release, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with rclone_webdav(tmp_path / "dav") as dav:
        monkeypatch.setenv("LORA_TRAIN_WEBDAV_USER", dav.user)
        monkeypatch.setenv("LORA_TRAIN_WEBDAV_PASSWORD", dav.password)
        dest = parse_destination(dav.url.replace("http://", "webdav://") + "loras/pixel")
        distribute_release(release.release_dir, [dest])
    remote = dav.root / "loras" / "pixel"
    assert sha(remote / release.weights_path.name) == release.sha256
    assert (remote / "manifest.json").read_bytes() == release.manifest_path.read_bytes()
    assert not [p.name for p in remote.iterdir() if p.name.startswith(".")], "temporary upload names are gone"
    manifest = release.manifest_path.read_text()
    assert f"{dav.url}loras/pixel/{release.weights_path.name}" in manifest
    for text in (manifest, (release.release_dir / "README.md").read_text(), caplog.text):
        assert dav.password not in text


def test_webdav_wrong_password_names_the_destination_and_step_and_changes_no_manifest(release, tmp_path, monkeypatch):
    before = release.manifest_path.read_bytes()
    with rclone_webdav(tmp_path / "dav") as dav:
        monkeypatch.setenv("LORA_TRAIN_WEBDAV_USER", dav.user)
        monkeypatch.setenv("LORA_TRAIN_WEBDAV_PASSWORD", "wrong-password-xyz")
        dest = parse_destination(dav.url.replace("http://", "webdav://") + "loras")
        with pytest.raises(UploadError) as caught:
            distribute_release(release.release_dir, [dest])
    message = str(caught.value)
    assert "webdav webdav://127.0.0.1" in message and "MKCOL /loras/" in message
    assert "refused the credentials (HTTP 401)" in message and "wrong-password-xyz" not in message
    assert release.manifest_path.read_bytes() == before
    assert not (dav.root / "loras").exists()


class FaultyDav(BaseHTTPRequestHandler):
    """A WebDAV test double: MKCOL succeeds; PUT answers 507 (full disk) or drops the connection mid-body (cut)."""

    protocol_version = "HTTP/1.1"
    mode = "full"
    puts: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_MKCOL(self) -> None:
        self._reply(201)

    def do_DELETE(self) -> None:
        self._reply(204)

    def do_PUT(self) -> None:
        type(self).puts.append(self.path)
        if self.mode == "full":
            self.rfile.read(int(self.headers["Content-Length"]))
            return self._reply(507)
        self.rfile.read(1000)  # half-way: the connection is cut
        self.close_connection = True
        self.connection.shutdown(2)


@pytest.mark.parametrize("mode", ["full", "cut"])
def test_webdav_full_disk_or_cut_upload_is_a_clear_error_and_no_manifest(release, tmp_path, mode):
    before = release.manifest_path.read_bytes()
    handler = type("Dav", (FaultyDav,), {"mode": mode, "puts": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        dest = parse_destination(f"webdav://127.0.0.1:{server.server_address[1]}/dav?retries=2&backoff=0")
        with pytest.raises(UploadError) as caught:
            distribute_release(release.release_dir, [dest])
    finally:
        server.shutdown()
        server.server_close()
    message = str(caught.value)
    assert f"PUT {release.weights_path.name}" in message
    if mode == "full":
        assert "out of space (HTTP 507 Insufficient Storage)" in message
        assert len(handler.puts) == 1, "a full disk is not retried"
    else:
        assert "connection failed" in message and "gave up after 2 retries" in message
        assert len(handler.puts) == 3
    assert all("manifest.json" not in path for path in handler.puts)
    assert all(f"/dav/.{release.weights_path.name}.upload-" in path for path in handler.puts)
    assert release.manifest_path.read_bytes() == before


# ---- S3 --------------------------------------------------------------------------------------------------------
def big_release(tmp_path: Path):
    """A release whose weights are about 11 MiB, so 5 MiB parts make a three-part multipart upload."""
    from lora_train.dev.http_server import write_big_safetensors

    lora = tmp_path / "big.safetensors"
    write_big_safetensors(lora, 11 * 1024 * 1024, seed=3)
    return publish_lora(config(name="big_style"), lora, tmp_path / "releases")


def s3_objects(endpoint: str, bucket: str = "releases") -> dict[str, dict]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    return {o["Key"]: o for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_s3_multipart_presigned_links_expire_and_fetch_falls_back_to_the_next_destination(tmp_path, caplog):
    release = big_release(tmp_path)
    site = tmp_path / "site"
    with moto_s3() as s3, static_site(site) as base:
        s3_dest = parse_destination(f"s3://releases/loras/big?endpoint={s3.endpoint}&region=us-east-1&part_mb=5"
                                    "&expires=1h")  # fmt: skip
        result = distribute_release(release.release_dir, [s3_dest, parse_destination(f"{site}?url={base}")])
        objects = s3_objects(s3.endpoint)
        assert objects[f"loras/big/{release.weights_path.name}"]["ETag"].endswith('-3"'), "three parts"
        urls = load_manifest(release.manifest_path).releases[0].files[0].urls
        assert urls[0].startswith(f"{s3.endpoint}/releases/loras/big/{release.weights_path.name}?")
        assert "X-Amz-Expires=3600" in urls[0] and urls[1] == base + release.weights_path.name

        first = fetch(result.manifest_links[str(s3_dest)], tmp_path, "before")
        assert first.mirror.startswith(f"{s3.endpoint}/releases/") and first.sha256 == release.sha256

        s3.proxy.offset = __import__("datetime").timedelta(hours=2)  # the presigned links are now 1 h stale
        later = fetch(base + "manifest.json", tmp_path, "after")
    assert s3.proxy.expired_answers == 1
    assert any("signature expired; ask for a fresh link" in line for line in later.attempts), later.attempts
    assert later.mirror == base + release.weights_path.name
    assert later.path.read_bytes() == release.weights_path.read_bytes()
    record = load_manifest(release.manifest_path).releases[0].destinations[0]
    assert record["kind"] == "s3" and "expires" in record and "expires=" not in record["location"]
    for text in (release.manifest_path.read_text(), (release.release_dir / "README.md").read_text(), caplog.text):
        assert AWS_SECRET not in text


def test_resign_renews_presigned_links_without_uploading_and_signs_again(release, tmp_path):
    key, _, _ = generate_key(tmp_path / "keys", "alice")
    with moto_s3() as s3:
        dest = parse_destination(f"s3://releases/v?endpoint={s3.endpoint}&expires=1h")
        distribute_release(release.release_dir, [dest], sign_key=str(key))
        stamp = s3_objects(s3.endpoint)[f"v/{release.weights_path.name}"]["LastModified"]
        s3.proxy.offset = __import__("datetime").timedelta(hours=2)
        old = load_manifest(release.manifest_path).releases[0].files[0].urls[0]
        with pytest.raises(UploadError, match="signed by alice: pass the signing key"):
            renew_links(release.release_dir, expires="3h")
        result = renew_links(release.release_dir, expires="3h", sign_key=str(key))
        new = load_manifest(release.manifest_path).releases[0].files[0].urls[0]
        assert new != old and "X-Amz-Expires=10800" in new
        assert s3_objects(s3.endpoint)[f"v/{release.weights_path.name}"]["LastModified"] == stamp, "not re-uploaded"
        assert [u.rsplit(": ", 1)[1] for u in result.uploaded] == ["README.md", "manifest.json.sig", "manifest.json"]
        trusted = tmp_path / "keys" / "alice.pub"
        (manifest_link,), (signature_link,) = result.manifest_links.values(), result.signature_links.values()
        cfg = FetchConfig.from_dict({"urls": manifest_link, "allow_private_addresses": True,
                                     "cache_dir": str(tmp_path / "c"), "trusted_keys": str(trusted),
                                     "signature": signature_link,
                                     "signature_policy": "refuse"})  # fmt: skip
        (tmp_path / "loras").mkdir()
        fetched = fetch_lora(cfg, tmp_path / "loras")
    assert fetched.signature.startswith("verified: signed by alice") and fetched.sha256 == release.sha256


def test_s3_missing_bucket_is_named_before_any_upload(release, tmp_path):
    before = release.manifest_path.read_bytes()
    with moto_s3(bucket=None) as s3:
        dest = parse_destination(f"s3://no-such-bucket/x?endpoint={s3.endpoint}")
        with pytest.raises(UploadError, match=r"s3 s3://no-such-bucket/x.*checking bucket no-such-bucket: the "
                           "bucket does not exist"):  # fmt: skip
            distribute_release(release.release_dir, [dest])
    assert release.manifest_path.read_bytes() == before


def test_s3_wrong_credentials_name_the_destination_and_step_and_never_show_the_secret(release, caplog):
    before = release.manifest_path.read_bytes()
    with moto_s3() as s3:
        s3.proxy.access_keys = {"AKIASOMEONEELSE"}  # the endpoint knows another key than the one in the environment
        dest = parse_destination(f"s3://releases/x?endpoint={s3.endpoint}&retries=0")
        with pytest.raises(UploadError) as refused:
            distribute_release(release.release_dir, [dest])
        s3.proxy.access_keys = None
        assert s3_objects(s3.endpoint) == {}, "nothing was uploaded"
    message = str(refused.value)
    assert message.startswith("s3 s3://releases/x") and "checking bucket releases: access denied" in message
    assert "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in message
    assert AWS_SECRET not in message and AWS_SECRET not in caplog.text
    assert release.manifest_path.read_bytes() == before


def test_s3_upload_cut_midway_leaves_no_object_nor_manifest_and_resumes_on_the_next_run(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    release = big_release(tmp_path)
    before = release.manifest_path.read_bytes()
    weights = release.weights_path.name
    with moto_s3() as s3:
        s3.proxy.fail_part = 2  # part 1 goes up, part 2 fails every time: the run stops there
        dest = parse_destination(f"s3://releases/x?endpoint={s3.endpoint}&part_mb=5&retries=0")
        with pytest.raises(UploadError, match=rf"s3 s3://releases/x.*uploading {weights} \(an interrupted upload "
                           r"resumes on the next run\)"):  # fmt: skip
            distribute_release(release.release_dir, [dest])
        assert s3_objects(s3.endpoint) == {}, "no object, no manifest: S3 shows nothing before completion"
        assert release.manifest_path.read_bytes() == before
        assert json.loads(before)["releases"][0]["files"][0].get("urls", []) == []

        s3.proxy.fail_part, first_run = None, len(s3.proxy.puts)
        distribute_release(release.release_dir, [dest])
        parts = [p.split("partNumber=")[1].split("&")[0] for p in s3.proxy.puts[first_run:] if "partNumber=" in p]
        assert sorted(parts) == ["2", "3"], "part 1 was kept from the cut run"
        objects = s3_objects(s3.endpoint)
    assert objects[f"x/{weights}"]["Size"] == release.weights_path.stat().st_size
    assert "resumed, 1 part(s) were already uploaded" in caplog.text
    assert load_manifest(release.manifest_path).releases[0].files[0].urls[0].startswith(f"{s3.endpoint}/releases/x/")


def test_earlier_mirrors_stay_after_the_new_links_relative_ones_unresolved(tmp_path):
    lora = tmp_path / "trained.safetensors"
    make_lora(lora)
    release = publish_lora(config(mirrors="./, https://cdn.example/x"), lora, tmp_path / "releases")
    site = tmp_path / "site"
    distribute_release(release.release_dir, [parse_destination(f"{site}?url=https://files.example/p/")])
    name = release.weights_path.name
    assert load_manifest(release.manifest_path).releases[0].files[0].urls == [
        f"https://files.example/p/{name}", f"./{name}", f"https://cdn.example/x/{name}"]  # fmt: skip
