"""Validation loss: held-out images at fixed noise and noise levels, its own series, the best step reported."""

import pytest
import torch

from lora_train.dataset import load_dataset
from lora_train.training import TrainConfig, TrainingError, train_lora
from lora_train.training.validation import VALIDATION_TIMES, split_validation
from tests.core.standin import CancelAt, Interrupted, StandInHost, write_images

BASE = {"resolution": 64, "rank": 4, "alpha": 4.0, "steps": 6, "log_every": 3, "learning_rate": 1e-2}


@pytest.fixture
def data(tmp_path):
    return load_dataset(write_images(tmp_path / "data", 6, (64, 64)))


def test_validation_loss_is_identical_when_nothing_trains(data, tmp_path):
    cfg = TrainConfig.from_dict({**BASE, "learning_rate": 0.0, "validation_split": 0.34, "validate_every": 2})
    host = StandInHost()
    result = train_lora(cfg, data, host, tmp_path / "out")
    assert [step for step, _ in result.validation_history] == [2, 4, 6]
    values = {loss for _, loss in result.validation_history}
    assert len(values) == 1, result.validation_history
    assert result.best_validation == (2, result.validation_history[0][1])  # the earliest of equal losses
    reported = [(p.step, p.validation_loss) for p in host.progress if p.validation_loss is not None]
    assert reported == result.validation_history


def test_validation_curve_repeats_run_to_run_and_falls_as_training_fits(data, tmp_path):
    cfg = TrainConfig.from_dict({**BASE, "steps": 12, "validation_split": 0.34, "validate_every": 4})
    first = train_lora(cfg, data, StandInHost(), tmp_path / "a").validation_history
    second = train_lora(cfg, data, StandInHost(), tmp_path / "b").validation_history
    assert first == second
    assert first[-1][1] < first[0][1]


def test_validating_changes_nothing_about_training(data, tmp_path):
    often = TrainConfig.from_dict({**BASE, "validation_split": 0.34, "validate_every": 1, "dropout": 0.2})
    at_end = often.replace(validate_every=0)
    a = train_lora(often, data, StandInHost(), tmp_path / "a")
    b = train_lora(at_end, data, StandInHost(), tmp_path / "b")
    assert len(a.validation_history) == 6 and [s for s, _ in b.validation_history] == [6]
    assert a.validation_history[-1] == b.validation_history[-1]
    assert all(torch.equal(a.lora_tensors[k], b.lora_tensors[k]) for k in a.lora_tensors)


def test_held_out_images_are_never_trained_on(data, tmp_path):
    cfg = TrainConfig.from_dict({**BASE, "validation_split": 0.5})
    host = StandInHost()
    train_lora(cfg, data, host, tmp_path)
    validation, training = host.encoded  # validation images are encoded first, training images last
    assert len(validation) == 3 and len(training) == 3
    assert not set(validation) & set(training)
    assert split_validation(cfg, data)[1].items == split_validation(cfg, data)[1].items  # seeded: the same split


def test_a_separate_validation_dataset_is_measured(data, tmp_path):
    extra = load_dataset(write_images(tmp_path / "val", 2, (64, 64), seed=9, caption="held"))
    host = StandInHost()
    result = train_lora(TrainConfig.from_dict(BASE), data, host, tmp_path / "out", validation_dataset=extra)
    assert host.encoded[0] == ["held 0", "held 1"]
    assert len(host.encoded[1]) == 6
    assert [s for s, _ in result.validation_history] == [6]
    assert len(VALIDATION_TIMES) == 5


def test_a_split_that_leaves_no_training_images_is_refused_before_encoding(tmp_path):
    data = load_dataset(write_images(tmp_path / "two", 2, (64, 64)))
    host = StandInHost()
    with pytest.raises(TrainingError, match=r"validation_split=0\.9 holds out 2 of the 2 image"):
        train_lora(TrainConfig.from_dict({**BASE, "validation_split": 0.9}), data, host, tmp_path)
    assert host.encoded == []


def test_a_resumed_run_continues_the_validation_curve(data, tmp_path):
    cfg = TrainConfig.from_dict({**BASE, "validation_split": 0.34, "validate_every": 2})
    straight = train_lora(cfg, data, StandInHost(), tmp_path / "straight")
    with pytest.raises(Interrupted):
        train_lora(cfg, data, CancelAt(5), tmp_path / "resumed")
    resumed = train_lora(cfg, data, StandInHost(), tmp_path / "resumed")
    assert resumed.validation_history == straight.validation_history
    assert resumed.best_validation == straight.best_validation
