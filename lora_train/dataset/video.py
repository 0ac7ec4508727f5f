"""Video clips in a dataset folder: files PyAV decodes (mp4, webm, gif, mov, mkv: PyAV is a ComfyUI requirement)
and frame folders (`<name>.frames/`, its images in file-name order). Each clip is probed when the folder is loaded
(frame count, rate, size: a clip that cannot be decoded is reported like a broken image) and trained on a fixed
number of frames, its frame bucket: `frames` if set, else the most it has at `fps`, rounded down to 4k+1 (what
Wan's and HunyuanVideo's VAEs need: 1 latent frame + 1 per 4 frames) and at most `DEFAULT_MAX_FRAMES`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lora_train.dataset.images import FRAMES_SUFFIX, IMAGE_EXTENSIONS, DatasetError, probe_image

if TYPE_CHECKING:
    from PIL import Image

    from lora_train.dataset.loading import ImageItem

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".mkv")
DEFAULT_MAX_FRAMES = 81  # Wan's usual clip: 5 s at 16 fps


@dataclass(frozen=True)
class ClipInfo:
    """What probing found: size, frames available at the chosen rate, that rate, and the frames trained on."""

    width: int
    height: int
    available: int
    fps: float
    frames: int


def is_clip(path: Path) -> bool:
    """A video file or a frame folder."""
    return path.suffix.lower() in VIDEO_EXTENSIONS or (path.is_dir() and path.name.endswith(FRAMES_SUFFIX))


def find_clips(root: Path) -> list[Path]:
    """Video files and frame folders below `root`, sorted, hidden ones skipped."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if any(part.startswith(".") for part in rel) or any(p.endswith(FRAMES_SUFFIX) for p in rel[:-1]):
            continue
        if is_clip(path):
            found.append(path)
    return found


def frame_bucket(available: int, frames: int, name: str) -> int:
    """Frames trained on: `frames` when set (the clip must have that many), else the most it has rounded down to
    4k+1, at most DEFAULT_MAX_FRAMES."""
    if frames > 0:
        if available < frames:
            raise DatasetError(f"{name}: has {available} frames, fewer than frames={frames}; lower frames or drop it")
        return frames
    return 4 * ((min(available, DEFAULT_MAX_FRAMES) - 1) // 4) + 1


def _frame_files(folder: Path) -> list[Path]:
    files = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.name[0] != "."]
    if not files:
        raise DatasetError(f"{folder}: frame folder holds no images")
    return files


def _kept(count: int, source_fps: float, fps: int) -> list[int]:
    """Indices of the source frames kept when resampling `count` frames at `source_fps` to `fps` (0 = as is)."""
    if fps <= 0 or source_fps <= 0 or abs(source_fps - fps) < 1e-6:
        return list(range(count))
    duration = count / source_fps
    return sorted({min(count - 1, int(i * source_fps / fps)) for i in range(max(1, math.floor(duration * fps)))})


def _decode(path: Path):
    """Every frame of a video file as RGB PIL images, with its frame rate (DatasetError naming the file)."""
    try:
        import av
    except ImportError:  # ComfyUI requires PyAV; a bare install may lack it
        raise DatasetError(f"{path}: reading video needs PyAV (pip install av)") from None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            return [frame.to_image().convert("RGB") for frame in container.decode(stream)], rate
    except (av.error.FFmpegError, IndexError, ValueError, OSError) as exc:
        raise DatasetError(f"{path}: cannot decode video: {exc}") from exc


def read_frames(path: Path, fps: int) -> tuple[list[Image.Image], float]:
    """The clip's frames resampled to `fps` (0: its own rate), and that rate. Frame folders have no rate: `fps`."""
    if path.is_dir():
        from PIL import Image

        files = _frame_files(path)
        frames = []
        for file in files:
            with Image.open(file) as image:
                frames.append(image.convert("RGB"))
        return frames, float(fps)
    frames, rate = _decode(path)
    return [frames[i] for i in _kept(len(frames), rate, fps)], float(fps or rate)


def probe_clip(path: Path, frames: int, fps: int, max_pixels: int) -> ClipInfo:
    """Decode the clip once (a broken one fails here, named) and choose its frame bucket."""
    if path.is_dir():
        first = _frame_files(path)
        width, height = probe_image(first[0], max_pixels)
        available, rate = len(first), float(fps)
    else:
        decoded, rate = read_frames(path, fps)
        if not decoded:
            raise DatasetError(f"{path}: video has no frames")
        (width, height), available = decoded[0].size, len(decoded)
        if width * height > max_pixels:
            raise DatasetError(f"{path}: {width}x{height} frames exceed max_pixels={max_pixels}")
    return ClipInfo(width, height, available, rate, frame_bucket(available, frames, str(path)))


def clip_item(item: ImageItem, info: ClipInfo, fps: int) -> ImageItem:
    """`item` marked as a clip: its frame bucket and rate (`ImageItem.frames`), read by `load_frames`."""
    item.frames, item.fps, item.resample_fps = info.frames, info.fps, fps
    return item


def load_frames(item: ImageItem) -> list[Image.Image]:
    """The frames a clip item trains on (its first `frames` at its rate)."""
    assert item.path is not None
    frames, _ = read_frames(item.path, item.resample_fps)
    if len(frames) < item.frames:
        raise DatasetError(f"{item.path}: now has {len(frames)} frames, {item.frames} were probed; reload the dataset")
    return frames[: item.frames]
