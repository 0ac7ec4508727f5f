"""`python -m lora_train train --config` from a shell, on the tiny checkpoint with ComfyUI's own loader."""

import os
import shutil

import pytest
from safetensors import safe_open

from lora_train.dev.tiny_models import TINY_SD15_NAME
from tests.cli import run_cli, write_config

pytestmark = pytest.mark.host


@pytest.fixture()
def small_job(tmp_path, tiny_models_dir, style_dataset_dir):
    """A seed-style config (aliases included) for 3 steps at 64 px on the tiny checkpoint."""
    return dict(
        train_data_dir=style_dataset_dir,
        base_model=tiny_models_dir / "checkpoints" / TINY_SD15_NAME,
        output_dir=tmp_path / "out",
        lora_rank=4,
        batch_size=2,
        steps=3,
        resolution=64,
        learning_rate="1e-3",
        log_every=1,
        output_name="cli_lora",
    )


def test_train_from_a_config_writes_the_lora_and_a_log(host, tmp_path, small_job):
    data = tmp_path / "data"
    shutil.copytree(small_job["train_data_dir"], data)
    (data / "captions.csv").write_text(
        "file_name,text\n" + "".join(f"{p.name},zkw csv caption\n" for p in sorted(data.glob("*.png"))),
        encoding="utf-8",
    )
    config = write_config(tmp_path / "job.yaml", **{**small_job, "train_data_dir": data})
    done = run_cli(
        host, "train", "--config", config, "--set", f"metadata_path={data / 'captions.csv'}", "--set", "alpha=2",
        "--comfyui", str(host.comfyui), "--cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lora = tmp_path / "out" / "cli_lora.safetensors"
    assert done.stdout.strip().splitlines()[-1] == str(lora)
    with safe_open(str(lora), "pt") as handle:
        meta = handle.metadata()
        keys = list(handle.keys())
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] in ("2", "2.0")
    assert meta["ss_sd_model_name"] == TINY_SD15_NAME
    assert "zkw csv caption" in meta["ss_tag_frequency"], "metadata_path's captions should be the ones trained"
    log = (tmp_path / "out" / "cli_lora.log").read_text(encoding="utf-8")
    assert "step 3/3 loss" in log and f"wrote {lora}" in log
    assert "captions for 8 of 8 images" in log
    assert "3/3" in done.stderr, "the tqdm bar should reach 3/3"
    # TensorBoard is installed in the test host: the command line writes its events unless the config says no.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cli_lora.log", "cli_lora.safetensors",
                                                                    "tensorboard"]  # fmt: skip
    assert list((tmp_path / "out" / "tensorboard" / "cli_lora").glob("events.out.tfevents.*"))


def test_a_run_that_cannot_train_exits_non_zero_with_the_error_and_no_lora(host, tmp_path, small_job):
    data = tmp_path / "uncaptioned"
    data.mkdir()
    for image in sorted(small_job["train_data_dir"].glob("*.png"))[:2]:
        shutil.copy(image, data / image.name)
    config = write_config(tmp_path / "job.yaml", **{**small_job, "train_data_dir": data})
    done = run_cli(host, "train", "--config", config, "--comfyui", str(host.comfyui), "--cpu")
    assert done.returncode == 1
    assert "training failed: 2 image(s) have no caption" in done.stderr
    assert "Traceback" not in done.stderr
    out = tmp_path / "out"
    assert not list(out.glob("*.safetensors"))
    assert "have no caption" in (out / "cli_lora.log").read_text(encoding="utf-8")


def test_a_missing_base_model_and_a_missing_comfyui_are_named(host, tmp_path, small_job):
    config = write_config(tmp_path / "job.yaml", **{**small_job, "base_model": "no_such_model.safetensors"})
    done = run_cli(host, "train", "--config", config, "--comfyui", str(host.comfyui), "--cpu")
    assert done.returncode == 2
    assert "base_model 'no_such_model.safetensors' is neither a file nor a checkpoint" in done.stderr
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    lost = run_cli(host, "train", "--config", config, "--comfyui", str(tmp_path / "nowhere"), env=env)
    assert lost.returncode == 2
    assert "no ComfyUI found" in lost.stderr and "--comfyui /path/to/ComfyUI" in lost.stderr


def test_base_model_by_name_is_found_in_comfyuis_checkpoints_folder(comfy_lib, tiny_models_dir, tmp_path):
    import folder_paths

    from lora_train.cli.config import ConfigError
    from lora_train.cli.train import resolve_base_model

    folder = tmp_path / "more_checkpoints"
    folder.mkdir()
    (folder / "mine.safetensors").symlink_to(tiny_models_dir / "checkpoints" / TINY_SD15_NAME)
    folder_paths.add_model_folder_path("checkpoints", str(folder))
    assert resolve_base_model("mine.safetensors") == folder / "mine.safetensors"
    assert resolve_base_model("mine") == folder / "mine.safetensors"
    with pytest.raises(ConfigError, match=r"checkpoints there: .*mine\.safetensors"):
        resolve_base_model("other")
