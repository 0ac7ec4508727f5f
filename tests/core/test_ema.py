"""EMA of the adapter weights: the average is what is saved, training itself is unchanged, resume continues it."""

import pytest
import torch

from lora_train.dataset import load_dataset
from lora_train.training import TrainConfig, train_lora
from lora_train.training.ema import AdapterEMA
from lora_train.training.lora_io import load_lora
from tests.core.standin import CancelAt, Interrupted, StandInHost, write_images

BASE = {"resolution": 64, "rank": 4, "alpha": 4.0, "steps": 6, "log_every": 1, "learning_rate": 1e-2}


@pytest.fixture
def data(tmp_path):
    return load_dataset(write_images(tmp_path / "data", 4, (64, 64)))


def test_average_follows_the_warmed_up_decay():
    param = torch.nn.Parameter(torch.zeros(3))
    ema = AdapterEMA([param], decay=0.9)
    expected = torch.zeros(3)
    for step in range(5):
        with torch.no_grad():
            param.add_(1.0)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * param.detach()
        ema.update()
        assert torch.allclose(ema.shadow[0], expected)
    with ema.applied():
        assert torch.allclose(param, expected)
    assert torch.equal(param.detach(), torch.full((3,), 5.0)), "the trained weights come back after applied()"


def test_the_saved_lora_is_the_average_and_training_is_unchanged(data, tmp_path):
    plain = train_lora(TrainConfig.from_dict(BASE), data, StandInHost(), tmp_path / "plain")
    averaged = train_lora(TrainConfig.from_dict({**BASE, "ema_decay": 0.9}), data, StandInHost(), tmp_path / "ema")
    assert plain.loss_history == averaged.loss_history, "EMA must not change what is trained"
    ups = [k for k in plain.lora_tensors if k.endswith("lora_up.weight")]
    assert all(not torch.equal(plain.lora_tensors[k], averaged.lora_tensors[k]) for k in ups)
    # The average lags behind the trained weights: smaller up matrices (they start at zero).
    assert sum(averaged.lora_tensors[k].norm() for k in ups) < sum(plain.lora_tensors[k].norm() for k in ups)
    on_disk, _ = load_lora(averaged.lora_path)
    assert all(torch.equal(on_disk[k], averaged.lora_tensors[k]) for k in on_disk)


def test_resume_restores_the_average(data, tmp_path):
    cfg = TrainConfig.from_dict({**BASE, "ema_decay": 0.8})
    straight = train_lora(cfg, data, StandInHost(), tmp_path / "straight")
    with pytest.raises(Interrupted):
        train_lora(cfg, data, CancelAt(3), tmp_path / "resumed")
    assert (tmp_path / "resumed" / "my_lora.lora_state").is_file()
    resumed = train_lora(cfg, data, StandInHost(), tmp_path / "resumed")
    assert resumed.loss_history[-3:] == straight.loss_history[-3:]
    assert all(torch.equal(resumed.lora_tensors[k], straight.lora_tensors[k]) for k in straight.lora_tensors)
