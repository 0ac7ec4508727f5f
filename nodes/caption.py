"""Auto-label (CLIP) node: a folder or LORA_DATASET in, captions written (metadata.csv / .txt) and returned."""

from __future__ import annotations

from pathlib import Path

from lora_train.dataset import CaptionConfig, folder_fingerprint

from ._ui import DATASET_TYPE


def resolve_clip_path(clip_path: str) -> str:
    """An existing folder as given, else that name inside one of ComfyUI's models/clip_vision folders."""
    import folder_paths

    if not clip_path.strip() or Path(clip_path).expanduser().is_dir():
        return clip_path
    for base in folder_paths.get_folder_paths("clip_vision"):
        if (Path(base) / clip_path).is_dir():
            return str(Path(base) / clip_path)
    return clip_path


def graph_encoders(clip_vision, clip):
    """ClipEncoders over connected CLIP_VISION + CLIP, or None when neither is connected."""
    from lora_train.dataset import CaptionError, comfy_clip_encoders

    if clip_vision is None and clip is None:
        return None
    if clip_vision is None or clip is None:
        raise CaptionError("connect both CLIP_VISION (Load CLIP Vision) and CLIP (its matching text encoder), or "
                           "neither and set clip_path")  # fmt: skip
    return comfy_clip_encoders(clip_vision, clip)


class AutoLabelClip:
    """Caption images by ranking vocabulary phrases with CLIP; writes metadata.csv and/or .txt sidecars."""

    CATEGORY = "LoRA Train/dataset"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = (DATASET_TYPE, "STRING")
    RETURN_NAMES = ("dataset", "summary")
    OUTPUT_TOOLTIPS = (
        "The dataset with its new captions, for Train LoRA.",
        "How many images were labelled or kept, the files written, and the top tags of the first images.",
    )
    DESCRIPTION = (
        "For every image, ranks phrases from small vocabularies (medium, style, subject, colour, lighting, "
        "composition, or your own .txt files) by CLIP image-text similarity, keeps the top ones above a "
        "threshold, puts your trigger word first and writes metadata.csv and/or <image>.txt. Mode skip never "
        "touches an existing caption; append only adds tags; overwrite replaces. The CLIP model is either a "
        "connected CLIP_VISION + matching CLIP (ViT-L/14 vision with clip_l, ViT-H with SD2's text encoder, "
        "bigG with SDXL's clip_g) or a Hugging Face CLIP folder in clip_path."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": (
                    "STRING",
                    {"default": "", "tooltip": "Folder of images to label, when no dataset is connected."},
                ),
                **CaptionConfig.comfy_inputs(),
            },
            "optional": {
                "dataset": (DATASET_TYPE, {"tooltip": "A dataset from Load LoRA Dataset (wins over folder)."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "Image half of a CLIP model (Load CLIP Vision)."}),
                "clip": ("CLIP", {"tooltip": "Text half matching clip_vision (e.g. clip_l for a ViT-L/14 vision)."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, folder="", **_):
        return folder_fingerprint(folder) if folder else ""

    def execute(self, folder="", dataset=None, clip_vision=None, clip=None, **widgets):
        import comfy.utils

        from lora_train.dataset import CaptionError, auto_label

        cfg = CaptionConfig.from_dict(widgets)
        cfg = cfg.replace(clip_path=resolve_clip_path(cfg.clip_path))
        if dataset is None and not folder.strip():
            raise CaptionError("connect a dataset (Load LoRA Dataset) or set folder to a folder of images")
        progress = comfy.utils.ProgressBar(1)
        result = auto_label(dataset if dataset is not None else folder, cfg, graph_encoders(clip_vision, clip),
                            progress=lambda done, total: progress.update_absolute(done, total))  # fmt: skip
        summary = result.summary()
        return {"ui": {"text": [summary]}, "result": (result.dataset, summary)}


NODE_CLASS_MAPPINGS = {"LoraTrain_AutoLabel": AutoLabelClip}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraTrain_AutoLabel": "Auto-label (CLIP)"}
