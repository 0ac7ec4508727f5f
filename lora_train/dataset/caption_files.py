"""Where auto-label captions go: metadata.csv rows and `.txt` sidecars, merged by mode and written atomically.

An existing file that cannot be read back exactly (invalid UTF-8, a CSV without `file_name`) is never rewritten
in a mode other than overwrite: rewriting it would change captions the user did not ask to change.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lora_train.dataset.captioners.encoders import CaptionError
from lora_train.dataset.loading import CSV_FILE_COLUMN, CSV_TEXT_COLUMNS, METADATA_CSV, ImageItem, LoraDataset
from lora_train.fsutil import atomic_write_text

if TYPE_CHECKING:
    from lora_train.dataset.autolabel import CaptionConfig

log = logging.getLogger(__name__)


MODES = ("skip", "overwrite", "append")


def compose_caption(tags: Sequence[str], trigger: str = "", separator: str = ", ") -> str:
    """Trigger word first, then the tags."""
    return separator.join([t for t in [trigger.strip(), *tags] if t])


def merge_caption(existing: str, tags: Sequence[str], mode: str, trigger: str = "", separator: str = ", ") -> str:
    """The caption to store given what is there: skip keeps a non-empty one, append adds only new tags."""
    existing = " ".join(existing.split())
    if mode not in MODES:
        raise CaptionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not existing or mode == "overwrite":
        return compose_caption(tags, trigger, separator)
    if mode == "skip":
        return existing
    present = {part.strip().lower() for part in existing.split(separator.strip() or ",")}
    new_tags = [t for t in tags if t.lower() not in present]
    head = [] if not trigger.strip() or trigger.strip().lower() in present else [trigger.strip()]
    return separator.join([*head, existing, *new_tags])


@dataclass
class CsvTable:
    """A metadata.csv held in memory with every column and row, so a rewrite changes only the captions we set."""

    path: Path
    columns: list[str] = field(default_factory=lambda: [CSV_FILE_COLUMN, "text"])
    rows: list[dict[str, str]] = field(default_factory=list)
    changed: bool = False

    @property
    def text_column(self) -> str:
        return next(c for c in CSV_TEXT_COLUMNS if c in self.columns)

    @classmethod
    def read(cls, path: Path) -> CsvTable:
        """The table at `path` (empty when it does not exist). Raises CaptionError when it cannot be kept intact."""
        if not path.is_file():
            return cls(path)
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise CaptionError(
                f"{path} is not valid UTF-8 (line {line}); save it as UTF-8 first, or use mode overwrite with "
                "another csv_path"
            ) from None
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        if CSV_FILE_COLUMN not in columns or not any(c in columns for c in CSV_TEXT_COLUMNS):
            raise CaptionError(
                f"{path} has the columns {', '.join(columns) or 'none'}, not file_name,text; not rewriting it. "
                "Fix its header or choose another csv_path"
            )
        rows = [{k: (v if isinstance(v, str) else "") for k, v in row.items() if k is not None} for row in reader]
        return cls(path, columns, rows)

    def index(self) -> dict[str, dict[str, str]]:
        """First row per file_name."""
        table: dict[str, dict[str, str]] = {}
        for row in self.rows:
            table.setdefault((row.get(CSV_FILE_COLUMN) or "").strip().replace("\\", "/"), row)
        return table

    def write(self) -> None:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())


class CaptionTargets:
    """The caption stores one auto-label run writes to, with the merge mode applied per store."""

    def __init__(self, cfg: CaptionConfig, root: Path | None, csv_table: CsvTable | None):
        self.cfg = cfg
        self.root = root
        self.csv = csv_table
        self._csv_rows = csv_table.index() if csv_table is not None else {}
        self._sidecars: dict[Path, str] = {}
        self.warnings: list[str] = []

    @classmethod
    def for_dataset(cls, dataset: LoraDataset, cfg: CaptionConfig) -> CaptionTargets:
        """Targets for a dataset: files only when the dataset came from a folder (or csv_path is set)."""
        on_disk = any(item.path is not None for item in dataset.items)
        csv_table = None
        if cfg.write_csv and on_disk:
            if cfg.csv_path:
                csv_path = Path(cfg.csv_path).expanduser()
            elif dataset.root is not None:
                csv_path = dataset.root / METADATA_CSV
            else:
                raise CaptionError("set csv_path: this dataset has no folder to put metadata.csv in")
            csv_table = CsvTable.read(csv_path)
        targets = cls(cfg, dataset.root, csv_table)
        if (cfg.write_csv or cfg.write_sidecars) and not on_disk:
            targets.warnings.append("images are in memory (no folder): captions returned, no files written")
        return targets

    # ---- per image ---------------------------------------------------------------------------------------
    def _csv_name(self, item: ImageItem) -> str:
        assert self.csv is not None and item.path is not None
        base = self.csv.path.parent.resolve()
        image = item.path.resolve()
        if not image.is_relative_to(base):
            raise CaptionError(f"{self.csv.path} must sit in the image folder or above it; {image} is outside")
        return image.relative_to(base).as_posix()

    def _sidecar_text(self, item: ImageItem) -> str | None:
        """The sidecar's caption, '' when absent, None when it exists but is not UTF-8 (left alone)."""
        assert item.path is not None
        path = item.path.with_suffix(".txt")
        if not path.is_file():
            return ""
        try:
            return " ".join(path.read_bytes().decode("utf-8-sig").split())
        except UnicodeDecodeError:
            return None

    def needs_caption(self, item: ImageItem) -> bool:
        """Whether any store this run writes lacks a caption for `item` (what mode skip labels)."""
        if item.path is None or not (self.csv is not None or self.cfg.write_sidecars):
            return not item.caption
        if self.csv is not None:
            row = self._csv_rows.get(self._csv_name(item))
            if row is None or not (row.get(self.csv.text_column) or "").strip():
                return True
        return self.cfg.write_sidecars and self._sidecar_text(item) == ""

    def update(self, item: ImageItem, tags: list[str]) -> None:
        """Stage the merged caption for `item` in every store."""
        cfg = self.cfg
        if item.path is None:
            return
        if self.csv is not None:
            name = self._csv_name(item)
            row = self._csv_rows.get(name)
            old = (row.get(self.csv.text_column) or "") if row is not None else ""
            new = merge_caption(old, tags, cfg.mode, cfg.trigger, cfg.separator)
            if row is None:
                row = {column: "" for column in self.csv.columns} | {CSV_FILE_COLUMN: name}
                self.csv.rows.append(row)
                self._csv_rows[name] = row
            if new != " ".join(old.split()) or not old:
                row[self.csv.text_column] = new
                self.csv.changed = True
        if cfg.write_sidecars:
            old_text = self._sidecar_text(item)
            sidecar = item.path.with_suffix(".txt")
            if old_text is None and cfg.mode != "overwrite":
                self.warnings.append(f"{sidecar} is not UTF-8: left unchanged (mode overwrite replaces it)")
                return
            new = merge_caption(old_text or "", tags, cfg.mode, cfg.trigger, cfg.separator)
            if new != old_text:
                self._sidecars[sidecar] = new

    def flush(self) -> list[str]:
        """Write every staged change atomically; returns the paths written."""
        written = []
        if self.csv is not None and self.csv.changed:
            self.csv.write()
            written.append(str(self.csv.path))
        for path, text in self._sidecars.items():
            atomic_write_text(path, text + "\n")
            written.append(str(path))
        self._sidecars.clear()
        return written
