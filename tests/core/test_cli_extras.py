"""The command line's extra folders (class images, validation images), TensorBoard default and validation log."""

import logging

import pytest

from lora_train.cli.config import load_job
from lora_train.cli.train import ProgressHost, load_extra_folder, with_cli_defaults
from lora_train.dataset import DatasetError
from lora_train.training import Progress, tensorboard_available
from tests.cli import write_config
from tests.core.standin import StandInHost, write_images


def test_tensorboard_is_on_when_installed_unless_the_config_says_otherwise(tmp_path):
    assert with_cli_defaults(load_job(None)).tensorboard is tensorboard_available()
    assert with_cli_defaults(load_job(write_config(tmp_path / "job.yaml", tensorboard="false"))).tensorboard is False


def test_extra_folders_load_or_name_the_setting(tmp_path):
    cfg = load_job(None).train
    assert load_extra_folder("", "reg_data_dir", cfg) is None
    dataset = load_extra_folder(str(write_images(tmp_path / "dogs", 3, (64, 64))), "reg_data_dir", cfg)
    assert len(dataset.items) == 3
    with pytest.raises(DatasetError, match=r"reg_data_dir '.*nowhere' does not exist"):
        load_extra_folder(str(tmp_path / "nowhere"), "reg_data_dir", cfg)


def test_the_log_line_carries_the_validation_loss(caplog):
    host = ProgressHost(StandInHost(), show=True)
    with caplog.at_level(logging.INFO, logger="lora_train.progress"):
        host.report(Progress(4, 8, 0.5, 0.6, 1e-4, 3.0, 2.0, validation_loss=0.25))
        host.report(Progress(8, 8, 0.4, 0.5, 1e-4, 0.0, 4.0))
    host.close()
    lines = [r.getMessage() for r in caplog.records]
    assert "validation 0.250000" in lines[0] and "validation" not in lines[1]
