"""TensorBoard event files: loss, validation loss and lr under <output>/tensorboard/<output_name>."""

import pytest

from lora_train.dataset import load_dataset
from lora_train.training import TrainConfig, TrainingError, tensorboard_log, train_lora
from tests.core.standin import StandInHost, write_images

BASE = {"resolution": 64, "rank": 4, "alpha": 4.0, "steps": 4, "log_every": 2, "tensorboard": True,
        "validation_split": 0.34, "validate_every": 2}  # fmt: skip


def test_event_files_hold_loss_validation_lr_and_previews(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = load_dataset(write_images(tmp_path / "data", 3, (64, 64)))
    result = train_lora(TrainConfig.from_dict({**BASE, "sample_every": 2}), data, StandInHost(), tmp_path / "out")
    folder = tmp_path / "out" / "tensorboard" / "my_lora"
    assert list(folder.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(folder))
    events.Reload()
    assert {"loss/train", "loss/train_smoothed", "lr", "loss/validation"} <= set(events.Tags()["scalars"])
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("loss/validation")] == [
        (step, pytest.approx(value)) for step, value in result.validation_history
    ]
    assert [e.step for e in events.Scalars("loss/train")] == [2, 4]
    assert [e.step for e in events.Images("preview/0")] == [2, 4]


def test_tensorboard_on_without_the_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard_log, "tensorboard_available", lambda: False)
    data = load_dataset(write_images(tmp_path / "data", 3, (64, 64)))
    with pytest.raises(TrainingError, match="pip install tensorboard"):
        train_lora(TrainConfig.from_dict(BASE), data, StandInHost(), tmp_path / "out")
    assert not (tmp_path / "out" / "my_lora.safetensors").exists()


def test_off_by_default_writes_nothing(tmp_path):
    data = load_dataset(write_images(tmp_path / "data", 2, (64, 64)))
    train_lora(TrainConfig.from_dict({**BASE, "tensorboard": False, "validation_split": 0}), data, StandInHost(),
               tmp_path / "out")  # fmt: skip
    assert not (tmp_path / "out" / "tensorboard").exists()
    assert TrainConfig().tensorboard is False
