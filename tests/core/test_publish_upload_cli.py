"""`python -m lora_train publish ... --to DEST --sign KEY` and `publish --release DIR --resign` as a user types
them, against moto's S3 server (behind the expiry proxy) and a local folder; then fetch by the printed link."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys

from lora_train.dev.storage_servers import moto_s3
from lora_train.release import load_manifest
from tests.conftest import REPO_ROOT
from tests.core.test_publish import make_lora

SECRET = "cli-secret-never-printed-42"


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIACLI", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "lora_train", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip


def test_publish_to_two_destinations_signed_then_resign_renews_the_s3_links(tmp_path):
    lora = tmp_path / "trained.safetensors"
    make_lora(lora, seed=5)
    keygen = cli("keygen", "carol", "--dir", str(tmp_path / "keys"))
    assert keygen.returncode == 0, keygen.stderr
    key = str(tmp_path / "keys" / "carol.key")
    with moto_s3() as s3:
        s3_dest = f"s3://releases/carol?endpoint={s3.endpoint}"
        out = cli(
            "publish",
            str(lora),
            "--name",
            "ink_style",
            "--output-dir",
            str(tmp_path / "rel"),
            "--to",
            s3_dest,
            "--to",
            str(tmp_path / "copy"),
            "--sign",
            key,
            "--expires",
            "2h",
            "--date",
            "2026-11-30",
        )
        assert out.returncode == 0, out.stderr
        assert "uploaded v1: 8 file(s), each verified" in out.stdout
        link = re.search(r"manifest at s3: (\S+)", out.stdout)[1]
        assert "X-Amz-Expires=7200" in link
        release = tmp_path / "rel" / "ink_style"
        manifest = load_manifest(release / "manifest.json")
        assert manifest.signer["name"] == "carol"
        assert [d["kind"] for d in manifest.releases[0].destinations] == ["s3", "folder"]
        assert (tmp_path / "copy" / "manifest.json").read_bytes() == (release / "manifest.json").read_bytes()
        assert (tmp_path / "copy" / "manifest.json.sig").is_file()

        s3.proxy.offset = datetime.timedelta(hours=3)
        renewed = cli("publish", "--release", str(release), "--resign", "--sign", key, "--expires", "5h")
        assert renewed.returncode == 0, renewed.stderr
        assert "X-Amz-Expires=18000" in load_manifest(release / "manifest.json").releases[0].files[0].urls[0]
        loras = tmp_path / "loras"
        new_link = re.search(r"manifest at s3: (\S+)", renewed.stdout)[1]
        sig_link = re.search(r"signature: (\S+)", renewed.stdout)[1]
        fetched = cli("fetch", new_link, "--dest", str(loras), "--allow-private", "--trusted-keys",
                      str(tmp_path / "keys" / "carol.pub"), "--signature-policy", "refuse", "--set",
                      f"signature={sig_link}", "--set", f"cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    assert "signature verified: signed by carol" in fetched.stdout
    assert (loras / "ink_style_v1.safetensors").read_bytes() == (release / "ink_style_v1.safetensors").read_bytes()
    for text in (out.stdout, out.stderr, renewed.stdout, renewed.stderr, (release / "manifest.json").read_text(),
                 (release / "README.md").read_text()):  # fmt: skip
        assert SECRET not in text


def test_resign_without_presigned_links_and_bad_destinations_are_clear_errors(tmp_path):
    lora = tmp_path / "trained.safetensors"
    make_lora(lora, seed=6)
    bad = cli("publish", str(lora), "--name", "ink_style", "--output-dir", str(tmp_path / "rel"),
              "--to", "ftp://example.invalid/x")  # fmt: skip
    assert bad.returncode == 1 and "unknown kind 'ftp'" in bad.stderr
    assert not (tmp_path / "rel").exists(), "a mistyped destination costs nothing"
    ok = cli("publish", str(lora), "--name", "ink_style", "--output-dir", str(tmp_path / "rel"))
    assert ok.returncode == 0, ok.stderr
    resign = cli("publish", "--release", str(tmp_path / "rel" / "ink_style"), "--resign")
    assert resign.returncode == 1 and "records no presigned (s3) links to renew" in resign.stderr
