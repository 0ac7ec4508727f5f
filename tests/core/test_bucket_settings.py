"""Bucket settings: min/max side, step, no-upscale and buckets off; shown in the dataset report and the file."""

from types import SimpleNamespace

import pytest

from lora_train.dataset import BucketOptions, assign_buckets, load_dataset
from lora_train.settings import SettingsError
from lora_train.training import TrainConfig, train_lora, training_buckets
from tests.core.standin import StandInHost, write_images


def _items(*sizes):
    return [SimpleNamespace(width=w, height=h) for w, h in sizes]


def test_no_upscale_keeps_small_images_at_their_size_and_shrinks_big_ones_to_the_area():
    chosen = assign_buckets(_items((100, 60), (2000, 1000), (300, 300)), 512, step=8, no_upscale=True)
    assert chosen[0] == (96, 56)  # its own size rounded down to the step
    w, h = chosen[1]
    assert w * h <= 512 * 512 and abs(w / h - 2.0) < 0.05 and w % 8 == 0 and h % 8 == 0
    assert chosen[2] == (296, 296)
    assert assign_buckets(_items((100, 60)), 512, step=8) != chosen[:1], "control: buckets upscale by default"


def test_min_and_max_sides_bound_every_bucket_and_off_means_one_square():
    wide_and_tall = _items((4000, 500), (500, 4000), (800, 600))
    for width, height in assign_buckets(wide_and_tall, 512, min_size=384, max_size=640):
        assert 384 <= width <= 640 and 384 <= height <= 640
    assert assign_buckets(wide_and_tall, 512, enabled=False) == [(512, 512)] * 3


def test_training_uses_the_bucket_settings(tmp_path):
    folder = write_images(tmp_path / "wide", 2, (128, 64))
    items = load_dataset(folder).items
    cfg = TrainConfig.from_dict({"resolution": 64, "bucket_step": 16, "buckets": False})
    assert training_buckets(items, cfg) == [(64, 64), (64, 64)]
    assert training_buckets(items, cfg.replace(buckets=True)) == [(80, 48)] * 2  # the nearest aspect within 64²
    result = train_lora(cfg.replace(steps=1, rank=2), load_dataset(folder), StandInHost(), tmp_path / "out")
    meta = result.metadata
    assert meta["ss_enable_bucket"] == "False" and meta["ss_bucket_no_upscale"] == "False"
    assert meta["ss_min_bucket_reso"] == "32" and meta["ss_max_bucket_reso"] == "128"
    assert '"resolution": [64, 64], "count": 2' in meta["ss_bucket_info"]


def test_the_dataset_report_says_how_buckets_were_chosen(tmp_path):
    folder = write_images(tmp_path / "d", 2, (100, 60))
    report = load_dataset(folder, resolution=512, bucket_step=8, bucket_no_upscale=True).report
    assert "buckets (buckets 256-1024 px, step 8, no upscale): 96x56 (2)" in report.summary()
    assert BucketOptions(enabled=False).describe(512) == "buckets off: every image center-cropped to 512x512"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bucket_min": 1024}, "bucket_min (1024) is larger than resolution (512)"),
        ({"bucket_max": 256}, "bucket_max (256) is smaller than resolution (512)"),
        ({"bucket_step": 12}, "bucket_step must be a multiple of 8"),
    ],
)
def test_bucket_settings_that_cannot_work_are_refused(values, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig.from_dict(values)
