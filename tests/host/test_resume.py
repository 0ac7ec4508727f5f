"""Resume: a training process killed at an arbitrary point continues, bit-identically, from its last state."""

import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from lora_train.dev.tiny_models import TINY_SD15_NAME
from lora_train.training.resume import ResumeError, load_state
from tests.cli import run_cli, write_config
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.host


def _job(tmp_path, tiny_models_dir, style_dataset_dir, out, **extra):
    values = dict(
        train_data_dir=style_dataset_dir,
        base_model=tiny_models_dir / "checkpoints" / TINY_SD15_NAME,
        output_dir=out,
        rank=4,
        batch_size=2,
        steps=8,
        save_steps=2,
        resolution=64,
        learning_rate="1e-3",
        dropout=0.1,
        log_every=1,
        output_name="resumable",
        **extra,
    )
    return write_config(tmp_path / f"{out.name}.yaml", **values)


def test_killed_run_resumes_to_bit_identical_weights(host, tmp_path, tiny_models_dir, style_dataset_dir):
    reference = _job(tmp_path, tiny_models_dir, style_dataset_dir, tmp_path / "straight")
    assert run_cli(host, "train", "--config", reference, "--comfyui", str(host.comfyui), "--cpu").returncode == 0

    out = tmp_path / "killed"
    config = _job(tmp_path, tiny_models_dir, style_dataset_dir, out)
    cmd = [str(host.python), "-m", "lora_train", "train", "--config", config, "--comfyui", str(host.comfyui), "--cpu"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "resumable.lora_state"
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for a condition (the first save), not for time to pass
    proc.send_signal(signal.SIGKILL)  # no polite stop: wherever it is now
    proc.wait()
    assert state.exists(), "the run never wrote a resume state"
    assert not (out / "resumable.safetensors").exists(), "killed too late: the run had already finished"
    killed_at = load_state(state).step

    resumed = run_cli(host, "train", "--config", config, "--comfyui", str(host.comfyui), "--cpu")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming resumable.lora_state at step {killed_at}" in (out / "resumable.log").read_text()
    expected, actual = (
        load_file(tmp_path / "straight" / "resumable.safetensors"),
        load_file(out / "resumable.safetensors"),
    )
    assert expected.keys() == actual.keys()
    different = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not different, f"resumed weights differ from the uninterrupted run: {different[:5]}"
    assert not state.exists(), "a finished run must remove its resume state"


def test_a_corrupt_state_gives_a_clear_error(tmp_path):
    broken = tmp_path / "x.lora_state"
    broken.write_bytes(b"not a state")
    with pytest.raises(ResumeError, match="damaged"):
        load_state(broken)
