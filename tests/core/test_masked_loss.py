"""Masked loss: `<name>_mask.png` or alpha masks; masked-out pixels contribute nothing; bad masks are named."""

import numpy as np
import pytest
import torch
from PIL import Image

from lora_train.dataset import load_dataset
from lora_train.training import TrainConfig, TrainingError, train_lora
from tests.core.standin import StandInHost

BASE = {"resolution": 64, "rank": 4, "alpha": 4.0, "steps": 2, "log_every": 1, "learning_rate": 0.5,
        "optimizer": "sgd", "weight_decay": 0.0, "max_grad_norm": 0.0}  # fmt: skip
# The left half (x < 32, whole 8-pixel latent cells) is masked out.
MASK = np.concatenate([np.zeros((64, 32), np.uint8), np.full((64, 32), 255, np.uint8)], axis=1)


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def _folder(tmp_path, name: str, left_seed: int, mask: np.ndarray | None = MASK) -> str:
    """One 64x64 image whose masked-out left half comes from `left_seed`, with its mask file."""
    folder = tmp_path / name
    folder.mkdir()
    pixels = _pixels(0)
    pixels[:, :32] = _pixels(left_seed)[:, :32]
    Image.fromarray(pixels).save(folder / "img.png")
    (folder / "img.txt").write_text("a thing")
    if mask is not None:
        Image.fromarray(mask).save(folder / "img_mask.png")
    return str(folder)


def _train(cfg: dict, folder: str, out) -> dict[str, torch.Tensor]:
    return train_lora(TrainConfig.from_dict({**BASE, **cfg}), load_dataset(folder), StandInHost(), out).lora_tensors


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_changing_masked_out_pixels_leaves_the_training_identical(tmp_path):
    one, other = _folder(tmp_path, "one", left_seed=1), _folder(tmp_path, "other", left_seed=2)
    masked = [_train({"masked_loss": True}, folder, tmp_path / f"m{i}") for i, folder in enumerate((one, other))]
    assert _same(*masked), "masked-out pixels changed the gradients"
    unmasked = [_train({}, folder, tmp_path / f"u{i}") for i, folder in enumerate((one, other))]
    assert not _same(*unmasked), "control: without the mask the left half does matter"
    assert not _same(masked[0], unmasked[0])


def test_an_alpha_channel_masks_like_a_mask_file(tmp_path):
    alpha_folder = tmp_path / "alpha"
    alpha_folder.mkdir()
    Image.fromarray(np.dstack([_pixels(0), MASK])).save(alpha_folder / "img.png")
    (alpha_folder / "img.txt").write_text("a thing")
    mask_file = tmp_path / "file"
    mask_file.mkdir()
    flattened = load_dataset(alpha_folder).items[0].load()  # what training sees: alpha flattened onto white
    flattened.save(mask_file / "img.png")
    (mask_file / "img.txt").write_text("a thing")
    Image.fromarray(MASK).save(mask_file / "img_mask.png")
    assert _same(_train({"masked_loss": True}, str(alpha_folder), tmp_path / "a"),
                 _train({"masked_loss": True}, str(mask_file), tmp_path / "b"))  # fmt: skip


def test_a_mask_file_is_not_a_training_image_and_the_report_counts_it(tmp_path):
    dataset = load_dataset(_folder(tmp_path, "d", left_seed=1))
    assert [item.path.name for item in dataset.items] == ["img.png"]
    assert dataset.items[0].mask_path.name == "img_mask.png"
    assert "masks: 1 image(s)" in dataset.report.summary()


def test_a_mask_of_the_wrong_size_is_named_before_encoding(tmp_path):
    folder = _folder(tmp_path, "bad", left_seed=1, mask=MASK[:32, :32])
    host = StandInHost()
    with pytest.raises(TrainingError, match=r"img_mask\.png is 32x32 but its image .*img\.png is 64x64"):
        train_lora(TrainConfig.from_dict({**BASE, "masked_loss": True}), load_dataset(folder), host, tmp_path / "o")
    assert host.encoded == []
