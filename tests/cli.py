"""Running `python -m lora_train` as a user types it, for the tests of the command line."""

from __future__ import annotations

import subprocess

from tests.conftest import REPO_ROOT


def run_cli(host, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m lora_train ARGS` with the host venv, from the repo root (as a user types it)."""
    return subprocess.run(
        [str(host.python), "-m", "lora_train", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def write_config(path, **values) -> str:
    """A YAML config file of `values` (one `key: value` line each); returns its path."""
    path.write_text("".join(f"{key}: {value}\n" for key, value in values.items()), encoding="utf-8")
    return str(path)
