"""What loading a dataset found: counts, sizes, buckets, clips and every bad file by name (`DatasetReport`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class DatasetReport:
    """What loading found: counts and the named problems."""

    images: int = 0
    captions: int = 0
    missing_captions: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # file -> reason
    sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> count
    buckets: dict[str, int] = field(default_factory=dict)  # "WxH" -> count
    warnings: list[str] = field(default_factory=list)
    repeats: dict[str, int] = field(default_factory=dict)  # folder -> repeats, for kohya N_name folders
    masks: int = 0  # images with a `<stem>_mask.png` beside them
    bucket_rules: str = ""  # how the buckets were chosen (BucketOptions.describe)
    clip_frames: dict[str, int] = field(default_factory=dict)  # video clips: frames trained on -> count
    controls: int = 0  # images with a `<stem>_control.*` source image beside them (edit models)

    def summary(self, max_names: int = 10) -> str:
        """A human-readable report, naming at most `max_names` files per problem."""
        lines = [f"{self.images} images, {self.captions} with captions, {len(self.missing_captions)} without"]
        if self.repeats:
            lines.append("repeat folders: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.repeats.items())))
        if self.sizes:
            lines.append("sizes: " + _top_counts(self.sizes, max_names))
        if self.buckets:
            rules = f" ({self.bucket_rules})" if self.bucket_rules else ""
            lines.append(f"buckets{rules}: " + _top_counts(self.buckets, max_names))
        if self.clip_frames:
            lines.append("video clips by frames: " + _top_counts(self.clip_frames, max_names))
        if self.controls:
            lines.append(f"control images: {self.controls} image(s) have a _control source image (edit models)")
        if self.masks:
            lines.append(f"masks: {self.masks} image(s) have a _mask.png (used with masked_loss)")
        if self.missing_captions:
            lines.append("missing captions: " + short_names(self.missing_captions, max_names))
        if self.unreadable:
            lines.append(f"unreadable ({len(self.unreadable)}):")
            lines += [f"  {name}: {reason}" for name, reason in list(self.unreadable.items())[:max_names]]
            if len(self.unreadable) > max_names:
                lines.append(f"  ... and {len(self.unreadable) - max_names} more")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _top_counts(counts: dict[str, int], limit: int) -> str:
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} ({v})" for k, v in ordered[:limit])
    return text + (f", ... {len(ordered) - limit} more" if len(ordered) > limit else "")


def short_names(names: Sequence[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")
