"""Regularisation (class) images: mixed in at `reg_ratio`, weighted by `prior_loss_weight`, recorded as kohya does."""

import json

import pytest
import torch

from lora_train.dataset import load_dataset
from lora_train.training import TrainConfig, TrainingError, train_lora
from lora_train.training.data import reg_repeats
from lora_train.training.losses import diffusion_batch, training_loss
from tests.core.standin import CancelAt, FlowSampling, Interrupted, StandInHost, write_images

BASE = {"resolution": 64, "rank": 4, "alpha": 4.0, "steps": 4, "log_every": 1, "trigger_word": "zkw"}


def test_reg_repeats_fill_the_epoch_at_the_ratio():
    assert reg_repeats(train_count=6, reg_count=4, ratio=1.0) == [2, 2, 1, 1]
    assert reg_repeats(train_count=2, reg_count=4, ratio=1.0) == [1, 1, 0, 0]  # surplus class images sit out
    assert sum(reg_repeats(train_count=10, reg_count=3, ratio=0.5)) == 5


def test_per_sample_weights_scale_each_images_loss():
    latents, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    batch = diffusion_batch(FlowSampling(), latents, noise, torch.tensor([0.3, 0.6]))
    pred = torch.zeros_like(latents)
    first_only = training_loss(pred, batch, weights=torch.tensor([1.0, 0.0]))
    alone = training_loss(pred[:1], diffusion_batch(FlowSampling(), latents[:1], noise[:1], torch.tensor([0.3])))
    assert torch.allclose(first_only, alone / 2)


def test_class_images_train_without_the_trigger_and_are_recorded_in_the_metadata(tmp_path):
    data = load_dataset(write_images(tmp_path / "data", 3, (64, 64)))
    reg = load_dataset(write_images(tmp_path / "1_dog", 5, (64, 64), seed=4, caption="a photo of a dog"))
    host = StandInHost()
    result = train_lora(TrainConfig.from_dict({**BASE, "prior_loss_weight": 0.5}), data, host, tmp_path / "o",
                        reg_dataset=reg)  # fmt: skip
    reg_captions, train_captions = host.encoded
    assert all(c.startswith("a photo of a dog") for c in reg_captions)
    assert all(c.startswith("zkw, a thing") for c in train_captions)
    meta = result.metadata
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_dog": {"n_repeats": 1, "img_count": 5}}
    assert meta["ss_num_reg_images"] == "3"  # reg_ratio 1: as many class images per epoch as training images
    assert meta["ss_prior_loss_weight"] == "0.5"


def test_without_class_images_the_metadata_says_none(tmp_path):
    data = load_dataset(write_images(tmp_path / "data", 2, (64, 64)))
    meta = train_lora(TrainConfig.from_dict({**BASE, "steps": 1}), data, StandInHost(), tmp_path / "o").metadata
    assert meta["ss_reg_dataset_dirs"] == "{}" and meta["ss_num_reg_images"] == "0"


def test_an_empty_regularisation_folder_is_refused_before_encoding(tmp_path):
    data = load_dataset(write_images(tmp_path / "data", 2, (64, 64)))
    (tmp_path / "empty").mkdir()
    host, empty = StandInHost(), load_dataset(tmp_path / "empty")
    with pytest.raises(TrainingError, match=r"regularisation dataset \(.*empty\) has no images"):
        train_lora(TrainConfig.from_dict(BASE), data, host, tmp_path / "o", reg_dataset=empty)
    assert host.encoded == []


def test_resuming_with_other_class_images_is_refused_with_the_reason(tmp_path):
    data = load_dataset(write_images(tmp_path / "data", 3, (64, 64)))
    reg = load_dataset(write_images(tmp_path / "1_dog", 5, (64, 64), seed=4, caption="a photo of a dog"))
    cfg = TrainConfig.from_dict({**BASE, "steps": 6})
    with pytest.raises(Interrupted):
        train_lora(cfg, data, CancelAt(2), tmp_path / "o", reg_dataset=reg)
    with pytest.raises(TrainingError, match=r"written for 6 examples .* this run has 3"):
        train_lora(cfg, data, StandInHost(), tmp_path / "o")
