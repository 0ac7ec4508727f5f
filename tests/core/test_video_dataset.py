"""Video clips in a dataset folder: GIF/mp4 files through PyAV and `<name>.frames/` folders, frame buckets (4k+1),
resampling to a frame rate, sidecar captions, and broken or short clips named in the report."""

from __future__ import annotations

import pytest
from PIL import Image

from lora_train.dataset import DatasetError, load_dataset, load_frames
from lora_train.dev.synthetic import style_frames, write_clip_dataset

av = pytest.importorskip("av")


def _write_mp4(path, frames: int, fps: int, size: int = 64) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for image in style_frames(3, frames, size):
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())


def test_clips_and_frame_folders_load_with_captions_and_4k_plus_1_frame_buckets(tmp_path):
    write_clip_dataset(tmp_path, count=1, frames=10)  # a 10-frame GIF -> 9 frames (4k+1)
    folder = tmp_path / "walk.frames"
    folder.mkdir()
    for index, frame in enumerate(style_frames(1, 7, 48)):
        frame.save(folder / f"{index:04d}.png")
    (tmp_path / "walk.txt").write_text("redstyle, walking", encoding="utf-8")
    Image.new("RGB", (64, 64), (200, 20, 20)).save(tmp_path / "still.png")
    (tmp_path / "still.txt").write_text("redstyle, still", encoding="utf-8")

    dataset = load_dataset(tmp_path)
    by_name = {item.path.name: item for item in dataset.items}
    assert set(by_name) == {"clip00_circle.gif", "walk.frames", "still.png"}, "frame-folder images are no stills"
    assert (by_name["clip00_circle.gif"].frames, by_name["walk.frames"].frames, by_name["still.png"].frames) == (
        9,
        5,
        0,
    )
    assert by_name["walk.frames"].caption == "redstyle, walking"
    assert (by_name["walk.frames"].width, by_name["walk.frames"].height) == (48, 48)
    assert dataset.report.clip_frames == {"9": 1, "5": 1}
    frames = load_frames(by_name["clip00_circle.gif"])
    assert len(frames) == 9 and frames[0].size == (64, 64)
    assert frames[0].tobytes() != frames[1].tobytes(), "the frames are the clip's, in order"


def test_the_frames_setting_fixes_the_count_and_a_short_clip_is_reported_by_name(tmp_path):
    write_clip_dataset(tmp_path, count=2, frames=6)
    assert {item.frames for item in load_dataset(tmp_path, frames=5).items} == {5}
    report = load_dataset(tmp_path, frames=9).report
    assert set(report.unreadable) == {"clip00_circle.gif", "clip01_square.gif"}
    assert "has 6 frames, fewer than frames=9" in report.unreadable["clip00_circle.gif"]
    with pytest.raises(DatasetError, match=r"clip00_circle.gif: has 6 frames, fewer than frames=9"):
        load_dataset(tmp_path, frames=9, strict=True)


def test_a_clip_that_cannot_be_decoded_is_named_and_mp4_resamples_to_fps(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    _write_mp4(tmp_path / "moving.mp4", frames=24, fps=24)
    dataset = load_dataset(tmp_path, fps=8)  # 24 frames at 24 fps = 1 s = 8 frames at 8 fps -> 5 (4k+1)
    assert "cannot decode video" in dataset.report.unreadable["broken.mp4"]
    (item,) = dataset.items
    assert item.frames == 5 and item.fps == 8.0
    assert len(load_frames(item)) == 5
    assert load_dataset(tmp_path).items[0].frames == 21, "its own rate: 24 frames -> 21"


def test_a_clips_latent_cache_key_covers_its_files_and_the_frames_it_trains_on(tmp_path):
    from lora_train.training import image_digest

    folder = tmp_path / "walk.frames"
    folder.mkdir()
    for index, frame in enumerate(style_frames(1, 9, 32)):
        frame.save(folder / f"{index:04d}.png")
    (tmp_path / "walk.txt").write_text("redstyle", encoding="utf-8")
    nine, five = load_dataset(tmp_path).items[0], load_dataset(tmp_path, frames=5).items[0]
    assert image_digest(nine) == image_digest(load_dataset(tmp_path).items[0]), "stable across loads"
    assert image_digest(nine) != image_digest(five), "the frames trained on are part of the key"
    before = image_digest(nine)
    style_frames(2, 1, 32)[0].save(folder / "0008.png")  # one frame edited
    assert image_digest(load_dataset(tmp_path).items[0]) != before
