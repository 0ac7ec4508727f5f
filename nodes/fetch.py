"""Fetch LoRA node: links / mirrors / hf:// / release manifest in, a verified file in models/loras out."""

from __future__ import annotations

import logging
from pathlib import Path

from lora_train.fetch import FetchConfig

from ._ui import loras_dir

log = logging.getLogger(__name__)

PROGRESS_EVENT = "lora_train.fetch_progress"


class _LoraNameType(str):
    """The lora_name output's type: `*`, so it links to LoraLoader's lora_name list as well as STRING inputs.

    ComfyUI checks links with `received_type != input_type`; a list input (a combo) never equals a type name, so this
    answers "not different" to everything, as the frontend's `*` does.
    """

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


LORA_NAME = _LoraNameType("*")


def _cache_dir() -> Path:
    import folder_paths

    # "__" keeps it out of ComfyUI's /userdata HTTP API (system-user convention); it survives restarts, unlike temp/.
    return Path(folder_paths.get_user_directory()) / "__lora_train" / "fetch_cache"


class _NodeProgress:
    """Fetch progress -> the node's progress bar (bytes) and a `lora_train.fetch_progress` websocket event."""

    def __init__(self, node_id: str | None):
        self.node_id = node_id
        self.bar = None

    def __call__(self, report) -> None:
        import comfy.utils

        from lora_train.host.comfy_adapter import send_event_to_client

        if report.total:
            if self.bar is None:
                self.bar = comfy.utils.ProgressBar(report.total, node_id=self.node_id)
            self.bar.update_absolute(min(report.downloaded, report.total), report.total)
        send_event_to_client(PROGRESS_EVENT, {
            "node": self.node_id, "status": report.status, "downloaded": report.downloaded, "total": report.total,
            "speed_bps": round(report.speed_bps), "eta_s": report.eta_s, "mirror": report.mirror,
            "file": report.file, "file_index": report.file_index, "file_count": report.file_count,
        })  # fmt: skip


def _interrupted() -> bool:
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()  # raises on Cancel; the partial is kept
    return False


class FetchLoRA:
    """Download a LoRA by link (with mirrors, resume and verification) into models/loras; optionally apply it."""

    CATEGORY = "LoRA Train/distribute"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = (LORA_NAME, "MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("lora_name", "model", "clip", "trigger_words")
    OUTPUT_TOOLTIPS = (
        "The LoRA's name in the loras folder: connect to LoraLoader's lora_name (or any STRING input).",
        "The connected MODEL with the LoRA applied at strength_model (None when no MODEL is connected).",
        "The connected CLIP with the LoRA applied at strength_clip (None when no CLIP is connected).",
        "Trigger words from the release manifest, comma-separated (empty for plain links).",
    )
    DESCRIPTION = (
        "Fetches a LoRA from a direct link, several mirror links, an hf://org/repo/file link or a release "
        "manifest: resumes interrupted downloads (also after a restart), retries and falls back to mirrors, checks "
        "size and sha256, validates the safetensors header, refuses pickles and HTML error pages, unpacks .zip "
        "safely and only then moves the file into models/loras. Private and loopback addresses are refused unless "
        "allowed."
    )

    @classmethod
    def INPUT_TYPES(cls):
        strength = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
        return {
            "required": FetchConfig.comfy_inputs(),
            "optional": {
                "model": ("MODEL", {"tooltip": "Optional: the diffusion model to apply the fetched LoRA to."}),
                "clip": ("CLIP", {"tooltip": "Optional: the text encoder to apply the fetched LoRA to."}),
                "strength_model": ("FLOAT", {**strength, "tooltip": "LoRA strength on the MODEL (can be negative)."}),
                "strength_clip": ("FLOAT", {**strength, "tooltip": "LoRA strength on the CLIP (can be negative)."}),
                # Added later: after every older widget, so saved workflows' widget values keep their places.
                **FetchConfig.comfy_inputs(optional=True),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def execute(self, model=None, clip=None, strength_model=1.0, strength_clip=1.0, unique_id=None, **widgets):
        from lora_train.fetch import fetch_lora

        cfg = FetchConfig.from_dict({"cache_dir": str(_cache_dir()), **widgets})
        result = fetch_lora(cfg, loras_dir(), progress=_NodeProgress(unique_id), cancel=_interrupted)
        if model is not None or clip is not None:
            model, clip = _apply(result.path, model, clip, strength_model, strength_clip)
        ui = {"lora_name": [result.lora_name], "status": [result.status], "sha256": [result.sha256],
              "signature": [result.signature]}  # fmt: skip
        return {"ui": ui, "result": (result.lora_name, model, clip, ", ".join(result.trigger_words))}


def _apply(path: Path, model, clip, strength_model: float, strength_clip: float):
    """Apply the LoRA as ComfyUI's LoraLoader does (its own loader, its key mapping)."""
    import comfy.utils

    from lora_train.host.comfy_adapter import apply_lora

    lora = comfy.utils.load_torch_file(str(path), safe_load=True)
    return apply_lora(model, clip, lora, strength_model, strength_clip)


NODE_CLASS_MAPPINGS = {"LoraTrain_FetchLoRA": FetchLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraTrain_FetchLoRA": "Fetch LoRA"}
