"""Dataset loading: folders, repeats, captions from sidecars and metadata.csv, buckets and every kind of bad file."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_train.dataset.loading import (
    DatasetConfig,
    DatasetError,
    ImageItem,
    assign_buckets,
    bucket_resolutions,
    dataset_from_images,
    load_dataset,
    preview_grid,
    read_metadata_csv,
)
from lora_train.settings import SettingsError


def write_image(path: Path, size=(48, 32), color=(200, 30, 30), mode="RGB", fmt=None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt, **save)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width×height but holds a single empty IDAT: huge on paper, a few bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_recursive_folder_with_repeat_folders_sidecars_and_csv(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("from sidecar\n")
    write_image(tmp_path / "10_cat" / "b.jpg", size=(64, 64))
    write_image(tmp_path / "10_cat" / "deep" / "c.webp", size=(32, 64))
    write_image(tmp_path / "2_dog" / "d.bmp")
    (tmp_path / "notes.md").write_text("not an image")
    write_image(tmp_path / ".hidden" / "e.png")
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,from csv\n10_cat/b.jpg,a cat\n")

    ds = load_dataset(tmp_path)

    by_name = {item.path.relative_to(tmp_path).as_posix(): item for item in ds.items}
    assert sorted(by_name) == ["10_cat/b.jpg", "10_cat/deep/c.webp", "2_dog/d.bmp", "a.png"]
    assert by_name["a.png"].caption == "from sidecar"  # default precedence: sidecar over CSV
    assert by_name["10_cat/b.jpg"].caption == "a cat"
    assert [by_name[n].repeats for n in ("a.png", "10_cat/b.jpg", "10_cat/deep/c.webp", "2_dog/d.bmp")] == [
        1,
        10,
        10,
        2,
    ]
    assert (by_name["10_cat/deep/c.webp"].width, by_name["10_cat/deep/c.webp"].height) == (32, 64)
    assert ds.report.images == 4 and ds.report.captions == 2
    assert sorted(ds.report.missing_captions) == ["10_cat/deep/c.webp", "2_dog/d.bmp"]
    assert ds.report.sizes == {"48x32": 2, "64x64": 1, "32x64": 1}
    assert ds.report.repeats == {"10_cat": 10, "2_dog": 2}
    assert sum(ds.report.buckets.values()) == 4
    assert "4 images, 2 with captions, 2 without" in ds.report.summary()


@pytest.mark.parametrize(
    ("source", "expected"),
    [("txt_then_csv", "side"), ("csv_then_txt", "csv"), ("txt", "side"), ("csv", "csv")],
)
def test_caption_precedence_setting(tmp_path, source, expected):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "only_csv.png")
    (tmp_path / "a.txt").write_text("side")
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,csv\nonly_csv.png,fallback\n")
    ds = load_dataset(tmp_path, captions=source)
    captions = {item.path.name: item.caption for item in ds.items}
    assert captions["a.png"] == expected
    assert captions["only_csv.png"] == ("" if source == "txt" else "fallback")


def test_exif_orientation_and_alpha_are_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    write_image(tmp_path / "alpha.png", size=(8, 8), color=(255, 0, 0, 0), mode="RGBA")
    ds = load_dataset(tmp_path)
    by_name = {item.path.name: item for item in ds.items}
    rot = by_name["rot.jpg"]
    assert (rot.width, rot.height) == (20, 40)
    assert rot.load().size == (20, 40)
    flat = np.asarray(by_name["alpha.png"].load())
    assert flat.shape == (8, 8, 3) and (flat == 255).all(), "transparent pixels flatten onto white"


def test_bad_files_are_named_and_loading_continues(tmp_path):
    write_image(tmp_path / "good.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"this is not a png at all")
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "JPEG", quality=95)
    (tmp_path / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "bomb.png").write_bytes(png_header_only(20000, 20000))

    ds = load_dataset(tmp_path)

    assert [item.path.name for item in ds.items] == ["good.png"]
    reasons = ds.report.unreadable
    assert set(reasons) == {"empty.jpg", "garbage.png", "truncated.jpg", "bomb.png"}
    assert "0 bytes" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "400000000 pixels" in reasons["bomb.png"] and "decompression bomb" in reasons["bomb.png"]
    summary = ds.report.summary()
    for name in reasons:
        assert name in summary


def test_strict_mode_raises_on_the_first_bad_file(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"b\.png: empty file .*strict"):
        load_dataset(tmp_path, strict=True)


def test_max_pixels_is_a_setting(tmp_path):
    write_image(tmp_path / "a.png", size=(100, 100))
    assert "a.png" in load_dataset(tmp_path, max_pixels=5000).report.unreadable
    assert len(load_dataset(tmp_path, max_pixels=10000)) == 1


def test_csv_unknown_columns_duplicates_and_missing_files_are_reported(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    (tmp_path / "metadata.csv").write_text(
        "file_name,text,score\na.png,first,1\na.png,second,2\nghost.png,nobody,3\n,orphan,4\n"
    )
    ds = load_dataset(tmp_path)
    captions = {item.path.name: item.caption for item in ds.items}
    assert captions == {"a.png": "first", "b.png": ""}
    warnings = "\n".join(ds.report.warnings)
    assert "unknown column(s) score" in warnings
    assert "duplicate file_name rows" in warnings and "a.png" in warnings
    assert "ghost.png" in warnings
    assert "without a file_name" in warnings
    assert ds.report.missing_captions == ["b.png"]


def test_csv_without_required_columns_is_a_clear_error(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text("image,description\na.png,x\n")
    ds = load_dataset(tmp_path)
    assert "file_name,text" in ds.report.unreadable["metadata.csv"]
    assert "image, description" in ds.report.unreadable["metadata.csv"]
    with pytest.raises(DatasetError, match="needs the columns file_name,text"):
        load_dataset(tmp_path, strict=True)


def test_non_utf8_captions_are_named_and_kept(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    (tmp_path / "a.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "metadata.csv").write_bytes("file_name,text\nb.png,na\xefve\n".encode("latin-1"))
    ds = load_dataset(tmp_path)
    captions = {item.path.name: item.caption for item in ds.items}
    assert captions["a.png"] == "caf\ufffd au lait"
    assert captions["b.png"] == "na\ufffdve"
    warnings = "\n".join(ds.report.warnings)
    assert "a.txt: invalid UTF-8 (byte 0xe9 on line 1)" in warnings
    assert "metadata.csv: invalid UTF-8 (byte 0xef on line 2)" in warnings
    with pytest.raises(DatasetError, match=r"^metadata\.csv: invalid UTF-8"):
        load_dataset(tmp_path, strict=True)
    (tmp_path / "metadata.csv").unlink()
    with pytest.raises(DatasetError, match=r"^a\.txt: invalid UTF-8"):
        load_dataset(tmp_path, strict=True)


def test_csv_round_trip_with_quotes_commas_bom_and_subfolders(tmp_path):
    write_image(tmp_path / "sub" / "x.png")
    text = 'a "quoted", comma, caption'
    (tmp_path / "metadata.csv").write_text(f'\ufefffile_name,text\nsub/x.png,"{text.replace(chr(34), chr(34) * 2)}"\n')
    assert read_metadata_csv(tmp_path / "metadata.csv") == {"sub/x.png": text}
    assert load_dataset(tmp_path).items[0].caption == text


def test_bad_folder_and_settings_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no dataset folder"):
        load_dataset(DatasetConfig())
    with pytest.raises(SettingsError, match="did you mean 'captions'"):
        DatasetConfig.from_dict({"path": str(tmp_path), "caption": "txt"})
    with pytest.raises(SettingsError, match="captions must be one of"):
        DatasetConfig(path=str(tmp_path), captions="json")


def test_buckets_are_multiples_of_step_within_area_and_match_aspect():
    buckets = bucket_resolutions(512)
    assert (512, 512) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512
    items = [ImageItem("", width=w, height=h) for w, h in [(1000, 1000), (1920, 1080), (600, 1200), (4000, 500)]]
    chosen = assign_buckets(items, 512)
    assert chosen[0] == (512, 512)
    wide = chosen[1]
    assert wide[0] > wide[1] and abs(wide[0] / wide[1] - 1920 / 1080) < 0.15
    tall = chosen[2]
    assert tall[1] > tall[0] and abs(tall[1] / tall[0] - 2) < 0.25
    assert chosen[3] == max(buckets, key=lambda wh: wh[0] / wh[1]), "extreme aspect takes the widest bucket"


def test_dataset_from_comfy_image_batch_and_pil_list():
    torch = pytest.importorskip("torch")
    batch = torch.zeros(2, 16, 24, 3)
    batch[1, ..., 0] = 1.0
    ds = dataset_from_images(batch, ["first", "second"])
    assert [item.caption for item in ds.items] == ["first", "second"]
    assert ds.items[1].load().getpixel((0, 0)) == (255, 0, 0)
    assert (ds.items[0].width, ds.items[0].height) == (24, 16)
    shared = dataset_from_images([Image.new("RGB", (8, 8))] * 3, "same")
    assert [item.caption for item in shared.items] == ["same"] * 3
    with pytest.raises(DatasetError, match="2 images but 3 captions"):
        dataset_from_images(batch, ["a", "b", "c"])
    with pytest.raises(DatasetError, match=r"\[B,H,W,C\]"):
        dataset_from_images(torch.zeros(2, 3, 4, 5, 6), "x")


def test_preview_grid_tiles_images(tmp_path):
    for index in range(5):
        write_image(tmp_path / f"{index}.png", size=(40, 20), color=(index * 50, 0, 0))
    grid = preview_grid(load_dataset(tmp_path), cell=32)
    assert grid.size == (96, 64)  # 5 images -> 3 columns x 2 rows
    assert grid.getpixel((16, 16))[0] == 0 and grid.getpixel((32 + 16, 16))[0] == 50
