"""Auto-labelling: rank vocabulary phrases by CLIP image–text similarity and write captions.

The ranking code takes two plain callables (`ClipEncoders`): `encode_images(list[PIL]) -> Tensor[N, D]` and
`encode_texts(list[str]) -> Tensor[M, D]`. Both model sources fill them in: a Hugging Face `CLIPModel` folder
(`lora_train.dataset.captioners.hf_clip`) and ComfyUI's CLIP_VISION + CLIP objects
(`lora_train.dataset.captioners.comfy_clip`).

Write modes, per target (metadata.csv rows and `.txt` sidecars alike):
- ``skip``: an image that already has a non-empty caption there keeps it untouched;
- ``overwrite``: the new caption replaces the old one;
- ``append``: new tags not already present are added after the existing caption (trigger word in front).
Files are replaced atomically; nothing existing is destroyed unless the mode is ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_train.dataset.caption_files import MODES, CaptionTargets, compose_caption, merge_caption
from lora_train.dataset.captioners.encoders import CaptionError, ClipEncoders
from lora_train.dataset.loading import ImageItem, LoraDataset, load_dataset
from lora_train.settings import Settings, setting

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
DEFAULT_VOCABULARIES = ["medium", "style", "subject", "colour", "lighting", "composition"]
ProgressFn = Callable[[int, int], None]


# ---- vocabularies -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    """Phrases and, for each, the vocabulary it came from."""

    phrases: tuple[str, ...]
    sources: tuple[str, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(f"{s}\t{p}" for s, p in zip(self.sources, self.phrases, strict=True))
                              .encode()).hexdigest()  # fmt: skip


def builtin_vocabularies() -> list[str]:
    """Names of the vocabularies shipped in lora_train/dataset/vocab/."""
    return sorted(p.stem for p in VOCAB_DIR.glob("*.txt"))


def load_vocabulary(names: Sequence[str]) -> Vocabulary:
    """Phrases from built-in vocabulary names or .txt paths; '#' lines and duplicates dropped, order kept."""
    phrases: list[str] = []
    sources: list[str] = []
    seen: set[str] = set()
    for name in names:
        path = VOCAB_DIR / f"{name}.txt" if (VOCAB_DIR / f"{name}.txt").is_file() else Path(name).expanduser()
        if not path.is_file():
            raise CaptionError(
                f"vocabulary {name!r} is neither a built-in one ({', '.join(builtin_vocabularies())}) nor a .txt file"
            )
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as exc:
            raise CaptionError(f"vocabulary {path} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
        for line in lines:
            phrase = " ".join(line.split())
            if phrase and not phrase.startswith("#") and phrase.lower() not in seen:
                seen.add(phrase.lower())
                phrases.append(phrase)
                sources.append(path.stem)
    if not phrases:
        raise CaptionError(f"the vocabularies {', '.join(names)} hold no phrases")
    return Vocabulary(tuple(phrases), tuple(sources))


# ---- text-embedding cache -----------------------------------------------------------------------------------

_TEXT_CACHE: dict[str, torch.Tensor] = {}


def text_embeddings(
    encoders: ClipEncoders, vocab: Vocabulary, template: str = "{}", cache_dir: str | Path | None = None
) -> torch.Tensor:
    """L2-normalised embeddings of every phrase, computed once per (model, vocabulary, template)."""
    import torch

    key = hashlib.sha256(f"{encoders.model_id}\n{template}\n{vocab.digest}".encode()).hexdigest()[:32]
    if key in _TEXT_CACHE:
        return _TEXT_CACHE[key]
    disk = Path(cache_dir).expanduser() / f"clip-text-{key}.safetensors" if cache_dir else None
    embeds = None
    if disk is not None and disk.is_file():
        from safetensors.torch import load_file

        embeds = load_file(str(disk)).get("embeds")
        if embeds is not None and embeds.shape[0] != len(vocab.phrases):
            embeds = None
    if embeds is None:
        texts = [template.format(p) if "{}" in template else f"{template} {p}" for p in vocab.phrases]
        embeds = torch.nn.functional.normalize(encoders.encode_texts(texts).float().cpu(), dim=-1)
        if disk is not None:
            from safetensors.torch import save

            from lora_train.fsutil import atomic_write_bytes

            atomic_write_bytes(disk, save({"embeds": embeds.contiguous()}, {"model_id": encoders.model_id}))
    _TEXT_CACHE[key] = embeds
    return embeds


def clear_text_cache() -> None:
    """Forget the in-memory text embeddings (tests, or after a model changed in place)."""
    _TEXT_CACHE.clear()


# ---- ranking ------------------------------------------------------------------------------------------------


def similarities(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [N, M] between image and text embeddings; refuses mismatched widths."""
    import torch

    if image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise CaptionError(
            f"image embeddings are {image_embeds.shape[-1]} wide but text embeddings {text_embeds.shape[-1]}: "
            "the two encoders are not halves of one CLIP model"
        )
    images = torch.nn.functional.normalize(image_embeds.float().cpu(), dim=-1)
    texts = torch.nn.functional.normalize(text_embeds.float().cpu(), dim=-1)
    return images @ texts.T


def select_tags(
    scores: Sequence[float], vocab: Vocabulary, top_k: int, per_vocabulary: int, threshold: float
) -> list[tuple[str, float]]:
    """The best phrases for one image: by score, at least `threshold`, ≤ `per_vocabulary` each, ≤ `top_k` total."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    taken: dict[str, int] = {}
    chosen: list[tuple[str, float]] = []
    for index in order:
        score = float(scores[index])
        if score < threshold or len(chosen) >= top_k:
            break
        source = vocab.sources[index]
        if taken.get(source, 0) >= per_vocabulary:
            continue
        taken[source] = taken.get(source, 0) + 1
        chosen.append((vocab.phrases[index], score))
    return chosen


TagFn = Callable[[list["Image.Image"]], list[list[tuple[str, float]]]]


def clip_tagger(cfg: CaptionConfig, encoders: ClipEncoders) -> TagFn:
    """Tags for a batch of images: vocabulary phrases ranked by CLIP cosine similarity (text side cached)."""
    vocab = load_vocabulary(cfg.vocabularies)
    texts = text_embeddings(encoders, vocab, cfg.template, cfg.embedding_cache or None)

    def tag(images: list[Image.Image]) -> list[list[tuple[str, float]]]:
        scores = similarities(encoders.encode_images(images), texts)
        return [select_tags(row, vocab, cfg.top_k, cfg.per_vocabulary, cfg.threshold) for row in scores.tolist()]

    return tag


# Captioners by name (the node combo and the CLI choices): each builds a batch tagger from the config + encoders.
CAPTIONERS: dict[str, Callable[[CaptionConfig, ClipEncoders], TagFn]] = {"clip": clip_tagger}


@dataclass
class CaptionConfig(Settings):
    """How to auto-label a folder or dataset."""

    captioner: str = setting("clip", "Which captioner ranks the tags.", choices=tuple(CAPTIONERS))
    clip_path: str = setting(
        "",
        "Folder with a Hugging Face CLIP model (config.json, model.safetensors, tokenizer and preprocessor files). "
        "Not needed when CLIP_VISION and CLIP are connected.",
    )
    vocabularies: list[str] = setting(  # noqa: RUF009 - `setting` turns a list default into a default_factory
        list(DEFAULT_VOCABULARIES),
        "Comma-separated vocabularies: built-in names (medium, style, subject, colour, lighting, composition) or "
        "paths to your own .txt files (one phrase per line).",
    )
    template: str = setting("{}", "Text each phrase is wrapped in before encoding, e.g. 'a picture of {}'.")
    top_k: int = setting(6, "At most this many tags per image.", min=1, max=64)
    per_vocabulary: int = setting(2, "At most this many tags from any one vocabulary.", min=1, max=64)
    threshold: float = setting(0.15, "Keep tags whose cosine similarity to the image is at least this.", min=-1.0,
                               max=1.0, step=0.01)  # fmt: skip
    trigger: str = setting("", "Trigger word put first in every caption (empty: none).")
    mode: str = setting("skip", "Existing captions: skip (keep them), overwrite, or append new tags.", choices=MODES)
    write_csv: bool = setting(True, "Write captions to metadata.csv (file_name,text).")
    write_sidecars: bool = setting(False, "Write a <image>.txt caption beside each image.")
    csv_path: str = setting("", "metadata.csv to write (empty: metadata.csv in the dataset folder).", advanced=True)
    batch_size: int = setting(16, "Images encoded per batch.", min=1, max=1024)
    separator: str = setting(", ", "Text between tags.", advanced=True)
    embedding_cache: str = setting("", "Folder to keep vocabulary text embeddings in across runs (empty: memory "
                                       "only).", advanced=True)  # fmt: skip
    device: str = setting("auto", "Device for a Hugging Face CLIP folder.", choices=("auto", "cpu", "cuda"),
                          advanced=True)  # fmt: skip


# ---- the pipeline -------------------------------------------------------------------------------------------


@dataclass
class CaptionResult:
    """What auto-labelling did."""

    dataset: LoraDataset
    tags: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # image name -> (phrase, score)
    labelled: int = 0
    kept: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)  # files written
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A short human-readable account."""
        lines = [f"labelled {self.labelled} image(s), kept {self.kept} existing caption(s)"]
        lines += [f"wrote {path}" for path in self.written[:5]]
        if len(self.written) > 5:
            lines.append(f"... and {len(self.written) - 5} more files")
        lines += [f"unreadable: {name}: {reason}" for name, reason in self.unreadable.items()]
        lines += [f"warning: {w}" for w in self.warnings]
        for name, tags in list(self.tags.items())[:3]:
            lines.append(f"{name}: " + ", ".join(f"{p} ({s:.2f})" for p, s in tags))
        return "\n".join(lines)


def auto_label(
    source: LoraDataset | str | Path,
    cfg: CaptionConfig,
    encoders: ClipEncoders | None = None,
    progress: ProgressFn | None = None,
) -> CaptionResult:
    """Caption every image of a folder or dataset that the mode says to, write the files, return the new dataset."""
    dataset = source if isinstance(source, LoraDataset) else load_dataset(source)
    targets = CaptionTargets.for_dataset(dataset, cfg)
    todo = [i for i, item in enumerate(dataset.items) if cfg.mode != "skip" or targets.needs_caption(item)]
    result = CaptionResult(dataset=dataset, kept=len(dataset.items) - len(todo), warnings=list(targets.warnings))
    if not todo:
        result.dataset = dataclasses.replace(dataset, items=list(dataset.items))
        return result
    if encoders is None:
        encoders = CLIP_SOURCES["hf_folder"](cfg)
    tag = CAPTIONERS[cfg.captioner](cfg, encoders)
    new_items = list(dataset.items)
    for start in range(0, len(todo), cfg.batch_size):
        batch, images = [], []
        for index in todo[start : start + cfg.batch_size]:
            item = dataset.items[index]
            try:
                images.append(item.load())
                batch.append(index)
            except (OSError, ValueError) as exc:
                result.unreadable[_display_name(item, dataset.root)] = str(exc)
        if images:
            for tags, index in zip(tag(images), batch, strict=True):
                item = dataset.items[index]
                result.tags[_display_name(item, dataset.root)] = tags
                phrases = [p for p, _ in tags]
                targets.update(item, phrases)
                caption = merge_caption(item.caption, phrases, cfg.mode, cfg.trigger, cfg.separator)
                new_items[index] = dataclasses.replace(item, caption=caption)
                result.labelled += 1
        if progress is not None:
            progress(min(start + cfg.batch_size, len(todo)), len(todo))
    result.written = targets.flush()
    result.warnings = list(targets.warnings)
    report = dataclasses.replace(dataset.report)
    report.captions = sum(1 for item in new_items if item.caption)
    report.missing_captions = [_display_name(item, dataset.root) for item in new_items if not item.caption]
    result.dataset = dataclasses.replace(dataset, items=new_items, report=report)
    return result


def _display_name(item: ImageItem, root: Path | None) -> str:
    if item.path is not None and root is not None and item.path.is_relative_to(root):
        return item.path.relative_to(root).as_posix()
    return item.name


def _hf_folder_source(cfg: CaptionConfig) -> ClipEncoders:
    from lora_train.dataset.captioners.hf_clip import load_hf_clip

    return load_hf_clip(cfg.clip_path, device=cfg.device)


# Where a CLIP model comes from when none is handed in; the graph source is built by the node itself.
CLIP_SOURCES: dict[str, Callable[[CaptionConfig], ClipEncoders]] = {"hf_folder": _hf_folder_source}


def caption_images(images: Sequence[Any], encoders: ClipEncoders, cfg: CaptionConfig) -> list[str]:
    """Captions for in-memory PIL images (no files written), in order."""
    tag = CAPTIONERS[cfg.captioner](cfg, encoders)
    captions = []
    for start in range(0, len(images), cfg.batch_size):
        for tags in tag(list(images[start : start + cfg.batch_size])):
            captions.append(compose_caption([p for p, _ in tags], cfg.trigger, cfg.separator))
    return captions
