"""Training datasets: images with captions, from a folder or from the graph.

`LoraDataset` is what the Load Dataset node outputs (ComfyUI type `LORA_DATASET`) and the trainer consumes.

Folder layout understood by :func:`load_dataset`:

- png/jpg/jpeg/webp/bmp images anywhere below the folder (hidden files and folders are skipped);
- kohya repeat folders: a sub-folder named ``N_name`` (``10_mychar``) repeats its images N times per epoch;
- captions from ``<image stem>.txt`` sidecars and/or ``metadata.csv`` files (columns ``file_name,text`` as in
  Hugging Face ``imagefolder``; ``file_name`` is relative to the CSV's own folder; a CSV deeper in the tree wins
  over one higher up for the same image). With ``captions="txt_then_csv"`` (the default) a non-empty sidecar wins
  over the CSV, because it is the per-image file people edit by hand; ``csv_then_txt`` reverses that, ``txt`` and
  ``csv`` use one source only.

One bad file never stops loading unless ``strict`` is set: it is named in the report instead.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_train.dataset.buckets import BucketOptions, assign_buckets, bucket_counts, bucket_resolutions, buckets_with
from lora_train.dataset.images import (
    CONTROL_SUFFIX,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    DatasetError,
    find_images,
    probe_image,
    split_masks,
)
from lora_train.dataset.report import DatasetReport, short_names
from lora_train.dataset.video import clip_item, find_clips, is_clip, load_frames, probe_clip
from lora_train.settings import Settings, setting

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

__all__ = [
    "DatasetConfig", "DatasetError", "DatasetReport", "ImageItem", "LoraDataset", "assign_buckets",
    "bucket_resolutions", "dataset_from_images", "folder_fingerprint", "load_dataset", "preview_grid",
    "probe_image", "read_metadata_csv",
]  # fmt: skip

METADATA_CSV = "metadata.csv"
CSV_FILE_COLUMN = "file_name"
CSV_TEXT_COLUMNS = ("text", "caption")  # "text" is Hugging Face's name; "caption" is accepted as well
REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
CAPTION_SOURCES = ("txt_then_csv", "csv_then_txt", "txt", "csv")


@dataclass
class ImageItem:
    """One training image: a file on disk or an in-memory image, its caption and how often an epoch repeats it."""

    caption: str
    path: Path | None = None
    image: Image.Image | None = None
    repeats: int = 1
    width: int = 0
    height: int = 0
    mask_path: Path | None = None  # `<stem>_mask.png` beside the image (masked loss)
    frames: int = 0  # a video clip (lora_train.dataset.video): the frames it trains on; 0 = a still image
    fps: float = 0.0
    resample_fps: int = 0
    control_path: Path | None = None  # `<stem>_control.*` beside the image: its source image (edit models)

    def load_oriented(self) -> Image.Image:
        """The image as stored (its mode and alpha kept), EXIF orientation applied; a clip's first frame."""
        from PIL import Image, ImageOps

        if self.image is not None:
            return self.image
        if self.frames:
            return load_frames(self)[0]
        if self.path is None:
            raise ValueError("ImageItem has neither a path nor an image")
        with Image.open(self.path) as opened:
            img = ImageOps.exif_transpose(opened)
            img.load()
        return img

    def load(self) -> Image.Image:
        """The image as RGB: EXIF orientation applied, alpha flattened onto white."""
        from PIL import Image

        img = self.load_oriented()
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return img.convert("RGB")

    @property
    def name(self) -> str:
        """A short label for reports: the file path, or `<image N>` for in-memory images."""
        return str(self.path) if self.path is not None else "<in-memory image>"


@dataclass
class LoraDataset:
    """Images (and video clips) with captions plus the report of how they were found."""

    items: list[ImageItem]
    root: Path | None = None
    report: DatasetReport = field(default_factory=DatasetReport)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class DatasetConfig(Settings):
    """How to read an image folder into a dataset."""

    path: str = setting("", "Folder of training images (searched recursively).")
    captions: str = setting(
        "txt_then_csv",
        "Where captions come from: txt_then_csv = <image>.txt sidecar, else metadata.csv; csv_then_txt = the "
        "reverse; txt or csv = that source only.",
        choices=CAPTION_SOURCES,
    )
    default_caption: str = setting("", "Caption for images that have none (empty: leave empty and report them).")
    repeats: int = setting(1, "Repeats per epoch for images outside kohya 'N_name' folders.", min=1, max=1000)
    resolution: int = setting(512, "Training resolution, for the aspect-ratio buckets in the report.", min=64,
                              max=4096, step=64)  # fmt: skip
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS,
        "Images with more pixels than this are refused unread (decompression-bomb guard).",
        min=1,
        max=2**40,
        advanced=True,
    )
    strict: bool = setting(False, "Stop at the first unreadable image or caption instead of reporting it.")
    # Appended after the original widgets so saved workflows keep their widget order.
    buckets: bool = setting(
        True, "Aspect-ratio buckets in the report (as Train LoRA's `buckets`); off = one square.", advanced=True
    )
    bucket_min: int = setting(0, "Smallest bucket side for the report; 0 = resolution / 2.", min=0, max=8192,
                              advanced=True)  # fmt: skip
    bucket_max: int = setting(0, "Largest bucket side for the report; 0 = resolution x 2.", min=0, max=16384,
                              advanced=True)  # fmt: skip
    bucket_step: int = setting(64, "Bucket sides are multiples of this.", min=8, max=512, step=8, advanced=True)
    bucket_no_upscale: bool = setting(
        False, "Small images keep their size (rounded down to bucket_step) instead of being upscaled.", advanced=True
    )
    frames: int = setting(0, "Frames per video clip; 0 = as many as it has, rounded down to 4k+1 (Wan), at most 81.",
                          min=0, max=1025, advanced=True)  # fmt: skip
    fps: int = setting(0, "Resample video clips to this frame rate (Wan 16, HunyuanVideo 24); 0 = their own.", min=0,
                       max=240, advanced=True)  # fmt: skip

    def bucket_options(self) -> BucketOptions:
        """The bucket settings as `BucketOptions`."""
        return BucketOptions(self.buckets, self.bucket_min, self.bucket_max, self.bucket_step, self.bucket_no_upscale)


# ---- loading ------------------------------------------------------------------------------------------------


def load_dataset(cfg: DatasetConfig | str | os.PathLike, **overrides: Any) -> LoraDataset:
    """Read a folder of images and captions into a `LoraDataset` (see the module docstring for the layout)."""
    if not isinstance(cfg, DatasetConfig):
        cfg = DatasetConfig(path=str(cfg))
    if overrides:
        cfg = cfg.replace(**overrides)
    if not cfg.path:
        raise DatasetError("no dataset folder given: set path to a folder of images")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} does not exist or is not a folder")
    report = DatasetReport()
    problems = _Problems(report, cfg.strict)
    image_paths, mask_paths = split_masks(list(find_images(root)))
    image_paths, control_paths = split_masks(image_paths, CONTROL_SUFFIX, IMAGE_EXTENSIONS)
    csv_captions = _read_csv_captions(root, problems) if cfg.captions != "txt" else {}
    _warn_shared_sidecars(image_paths, report)
    items: list[ImageItem] = []
    for path in image_paths + find_clips(root):
        rel = _rel(path, root)
        try:
            clip = probe_clip(path, cfg.frames, cfg.fps, cfg.max_pixels) if is_clip(path) else None
            width, height = (clip.width, clip.height) if clip else probe_image(path, cfg.max_pixels)
        except DatasetError as exc:
            problems.bad_file(rel, str(exc))
            continue
        caption = _pick_caption(path, csv_captions.get(path.resolve()), cfg.captions, problems, rel)
        if not caption:
            report.missing_captions.append(rel)
            caption = cfg.default_caption
        repeats = _repeats_for(path, root, cfg.repeats, report)
        mask = mask_paths.get(path)
        item = ImageItem(caption, path, repeats=repeats, width=width, height=height, mask_path=mask,
                         control_path=control_paths.get(path))  # fmt: skip
        items.append(clip_item(item, clip, cfg.fps) if clip else item)
    report.images = len(items)
    report.captions = sum(1 for item in items if item.caption)
    report.sizes = dict(Counter(f"{item.width}x{item.height}" for item in items))
    report.buckets = bucket_counts(buckets_with(items, cfg.resolution, cfg.bucket_options()))
    report.bucket_rules = cfg.bucket_options().describe(cfg.resolution)
    report.masks = sum(1 for item in items if item.mask_path is not None)
    report.controls = sum(1 for item in items if item.control_path is not None)
    report.clip_frames = dict(Counter(str(item.frames) for item in items if item.frames))
    unknown = sorted(set(csv_captions) - {p.resolve() for p in image_paths})
    if unknown:
        report.warnings.append(
            f"{METADATA_CSV} names {len(unknown)} file(s) that are not images in the folder: "
            + short_names([_rel(p, root) for p in unknown], 10)
        )
    if not items:
        report.warnings.append(f"no readable images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    log.info("dataset %s: %s", root, report.summary().splitlines()[0])
    return LoraDataset(items=items, root=root, report=report)


@dataclass
class _Problems:
    """Where bad files go: the report, or (strict mode) an exception naming the first one."""

    report: DatasetReport
    strict: bool

    def bad_file(self, name: str, reason: str) -> None:
        """A file that could not be used at all."""
        self._raise_if_strict(name, reason)
        self.report.unreadable[name] = reason

    def damaged(self, name: str, reason: str) -> None:
        """A file used with a repair (invalid UTF-8 replaced)."""
        self._raise_if_strict(name, reason)
        self.report.warnings.append(f"{name}: {reason}")

    def _raise_if_strict(self, name: str, reason: str) -> None:
        if self.strict:
            raise DatasetError(f"{name}: {reason} (strict mode stops at the first bad file)")


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _decode_text(raw: bytes, name: str, problems: _Problems) -> str:
    """UTF-8 (BOM allowed); invalid bytes are named, then replaced with U+FFFD so one bad byte loses no caption."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problems.damaged(name, f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} on line {line}) replaced with U+FFFD; "
                               "save the file as UTF-8")  # fmt: skip
        return raw.decode("utf-8-sig", errors="replace")


def read_caption_file(path: Path) -> str:
    """A sidecar caption as one line: UTF-8, whitespace runs collapsed, invalid bytes replaced."""
    return " ".join(path.read_bytes().decode("utf-8-sig", errors="replace").split())


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".txt")


def _pick_caption(path: Path, csv_caption: str | None, source: str, problems: _Problems, rel: str) -> str:
    sidecar = _sidecar(path)
    txt_caption = ""
    if source != "csv" and sidecar.is_file():
        txt_caption = " ".join(_decode_text(sidecar.read_bytes(), _rel_sidecar(rel), problems).split())
    order = {"txt_then_csv": (txt_caption, csv_caption), "csv_then_txt": (csv_caption, txt_caption),
             "txt": (txt_caption,), "csv": (csv_caption,)}[source]  # fmt: skip
    return next((c for c in order if c), "")


def _rel_sidecar(rel: str) -> str:
    return str(Path(rel).with_suffix(".txt").as_posix())


def _warn_shared_sidecars(paths: list[Path], report: DatasetReport) -> None:
    by_sidecar: dict[Path, list[str]] = {}
    for path in paths:
        by_sidecar.setdefault(_sidecar(path), []).append(path.name)
    for sidecar, names in by_sidecar.items():
        if len(names) > 1:
            report.warnings.append(f"{', '.join(names)} share one caption file {sidecar.name}; rename one of them")


def _repeats_for(path: Path, root: Path, default: int, report: DatasetReport) -> int:
    """Repeats from the nearest kohya `N_name` folder between the image and `root` (the root itself excluded)."""
    for folder in path.relative_to(root).parents:
        if folder == Path("."):
            break
        match = REPEAT_FOLDER.match(folder.name)
        if match:
            repeats = int(match.group(1))
            if repeats < 1:
                report.warnings.append(f"folder {folder.as_posix()} asks for {repeats} repeats; using 1")
                repeats = 1
            report.repeats[folder.as_posix()] = repeats
            return repeats
    return default


# ---- metadata.csv -------------------------------------------------------------------------------------------


def _read_csv_captions(root: Path, problems: _Problems) -> dict[Path, str]:
    """Captions from every metadata.csv below `root`, keyed by resolved image path; deeper CSVs win."""
    csv_paths = [Path(d) / METADATA_CSV for d, dirs, files in os.walk(root) if METADATA_CSV in files
                 and not any(part.startswith(".") for part in Path(d).relative_to(root).parts)]  # fmt: skip
    captions: dict[Path, str] = {}
    for csv_path in sorted(csv_paths, key=lambda p: len(p.parts)):
        name = _rel(csv_path, root)
        try:
            rows = _parse_metadata_csv(csv_path, name, problems)
        except DatasetError as exc:
            if problems.strict:
                raise
            problems.bad_file(name, str(exc))
            continue
        for file_name, text in rows.items():
            captions[(csv_path.parent / file_name).resolve()] = text
    return captions


def read_metadata_csv(path: Path, report: DatasetReport | None = None) -> dict[str, str]:
    """`file_name -> text` from a metadata.csv. Unknown columns, duplicate names and invalid UTF-8 are reported
    in `report.warnings`, not fatal. Raises DatasetError when the file has no `file_name` or no text column."""
    return _parse_metadata_csv(Path(path), Path(path).name, _Problems(report or DatasetReport(), strict=False))


def _parse_metadata_csv(path: Path, name: str, problems: _Problems) -> dict[str, str]:
    report = problems.report
    text = _decode_text(path.read_bytes(), name, problems)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    text_column = next((c for c in CSV_TEXT_COLUMNS if c in columns), None)
    if CSV_FILE_COLUMN not in columns or text_column is None:
        raise DatasetError(
            f"{name} needs the columns {CSV_FILE_COLUMN},text (found: {', '.join(columns) or 'none'}); "
            "the first line must be the header 'file_name,text'"
        )
    extra = [c for c in columns if c not in (CSV_FILE_COLUMN, text_column)]
    if extra:
        report.warnings.append(f"{name}: ignoring unknown column(s) {', '.join(extra)}")
    rows: dict[str, str] = {}
    duplicates: list[str] = []
    blank = 0
    for row in reader:
        file_name = (row.get(CSV_FILE_COLUMN) or "").strip().replace("\\", "/")
        if not file_name:
            blank += 1
            continue
        if file_name in rows:
            duplicates.append(file_name)
            continue
        rows[file_name] = " ".join((row.get(text_column) or "").split())
    if duplicates:
        report.warnings.append(f"{name}: duplicate file_name rows (first one kept): {short_names(duplicates, 10)}")
    if blank:
        report.warnings.append(f"{name}: {blank} row(s) without a file_name ignored")
    return rows


# ---- in-memory datasets and previews ------------------------------------------------------------------------


def dataset_from_images(images: Any, captions: Sequence[str] | str = ()) -> LoraDataset:
    """A dataset from a ComfyUI IMAGE batch ([B,H,W,C] floats in 0..1) or a list of PIL images.

    `captions` has one entry per image, or a single entry (or a plain string) used for every image.
    """
    pil_images = _to_pil_list(images)
    if isinstance(captions, str):
        captions = [captions]
    captions = list(captions) or [""]
    if len(captions) == 1:
        captions = captions * len(pil_images)
    if len(captions) != len(pil_images):
        raise DatasetError(
            f"{len(pil_images)} images but {len(captions)} captions: give one caption per image, or one for all"
        )
    report = DatasetReport()
    items = []
    for index, (img, caption) in enumerate(zip(pil_images, captions, strict=True)):
        items.append(ImageItem(caption=caption.strip(), image=img, width=img.width, height=img.height))
        if not caption.strip():
            report.missing_captions.append(f"image {index}")
    report.images = len(items)
    report.captions = sum(1 for item in items if item.caption)
    report.sizes = dict(Counter(f"{item.width}x{item.height}" for item in items))
    return LoraDataset(items=items, root=None, report=report)


def _to_pil_list(images: Any) -> list[Image.Image]:
    from PIL import Image

    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, list | tuple):
        out = []
        for img in images:
            if isinstance(img, Image.Image):
                out.append(img)
            else:
                out.extend(_to_pil_list(img))
        return out
    import numpy as np

    array = images.detach().cpu().float().numpy() if hasattr(images, "detach") else np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise DatasetError(f"expected an IMAGE batch shaped [B,H,W,C], got shape {tuple(array.shape)}")
    pixels = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p, modes[p.shape[-1]]) for p in pixels]


def preview_grid(dataset: LoraDataset, max_images: int = 16, cell: int = 128) -> Image.Image:
    """A square-ish grid of the first `max_images` images, each fitted into a `cell`×`cell` tile."""
    from PIL import Image, ImageOps

    shown = dataset.items[:max_images]
    count = max(1, len(shown))
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    grid = Image.new("RGB", (cols * cell, rows * cell), (32, 32, 32))
    for index, item in enumerate(shown):
        tile = ImageOps.contain(item.load(), (cell, cell))
        x = (index % cols) * cell + (cell - tile.width) // 2
        y = (index // cols) * cell + (cell - tile.height) // 2
        grid.paste(tile, (x, y))
    return grid


def folder_fingerprint(path: str | os.PathLike) -> str:
    """A hash of every file's name, size and mtime below `path`: changes when the dataset on disk changes."""
    import hashlib

    digest = hashlib.sha256(str(path).encode())
    root = Path(path).expanduser()
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                with contextlib.suppress(OSError):
                    stat = (Path(dirpath) / name).stat()
                    digest.update(f"{dirpath}/{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
