"""`python -m lora_train fetch` as a user runs it, against a real loopback server."""

from __future__ import annotations

import subprocess
import sys

from lora_train.dev.http_server import Route
from tests.conftest import REPO_ROOT
from tests.core.test_fetch import make_lora, sha

pytest_plugins = ["tests.core.test_fetch"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_train", "fetch", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_cli_fetches_into_dest_and_prints_the_path(server, loras, tmp_path):
    lora = make_lora()
    url = server.add("/style.safetensors", Route(body=lora))
    done = run_cli(url, "--sha256", sha(lora), "--dest", str(loras), "--allow-private",
                   "--set", f"cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (loras / "style.safetensors").read_bytes() == lora
    assert str(loras / "style.safetensors") in done.stdout and "downloaded" in done.stdout


def test_cli_reports_failures_with_exit_code_and_reason(server, loras, tmp_path):
    done = run_cli(server.url("/nope.safetensors"), "--dest", str(loras), "--allow-private",
                   "--set", f"cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert done.returncode == 1 and "HTTP 404" in done.stderr
    bad = run_cli(server.url("/x"), "--dest", str(loras), "--set", "retrys=2")
    assert bad.returncode == 2 and "did you mean 'retries'" in bad.stderr


def test_two_processes_fetching_one_file_share_one_download(server, loras, tmp_path):
    lora = make_lora(seed=3)
    url = server.add("/shared.safetensors", Route(body=lora, trickle=(4096, 0.01)))
    common = ["--sha256", sha(lora), "--allow-private", "--set", f"cache_dir={tmp_path / 'cache'}"]
    procs = [subprocess.Popen([sys.executable, "-m", "lora_train", "fetch", url, "--dest", str(loras / sub), *common],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for sub in ("one", "two")]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert len(server.seen("/shared.safetensors")) == 1, "the second process waited for the first, then used its file"
    assert (
        (loras / "one" / "shared.safetensors").read_bytes()
        == lora
        == (loras / "two" / "shared.safetensors").read_bytes()
    )
