"""Load LoRA Dataset node: a folder of images + captions in, a LORA_DATASET, a preview grid and a report out."""

from __future__ import annotations

from lora_train.dataset import DatasetConfig, folder_fingerprint

from ._ui import DATASET_TYPE, pil_to_image_batch, save_temp_preview, settings_since

PREVIEW_CELL = 128
PREVIEW_MAX_IMAGES = 16


class LoadLoraDataset:
    """Read a folder (kohya N_name repeat folders, .txt sidecars and/or metadata.csv) into a training dataset."""

    CATEGORY = "LoRA Train/dataset"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = (DATASET_TYPE, "IMAGE", "STRING")
    RETURN_NAMES = ("dataset", "preview", "report")
    OUTPUT_TOOLTIPS = (
        "The images with their captions and repeats, for Train LoRA or Auto-label.",
        f"A grid of the first {PREVIEW_MAX_IMAGES} images (also shown on this node).",
        "How many images and captions were found, sizes, aspect buckets, and every unreadable file by name.",
    )
    DESCRIPTION = (
        "Loads png/jpg/jpeg/webp/bmp images from a folder and its sub-folders. A sub-folder named N_name "
        "(kohya style, e.g. 10_mychar) repeats its images N times. Captions come from <image>.txt sidecars and/or "
        "metadata.csv (columns file_name,text); 'captions' picks which wins. EXIF rotation is applied and "
        "transparency flattened onto white. Video clips (mp4/webm/gif/mov/mkv, or a <name>.frames folder of "
        "images) train video models (Wan, HunyuanVideo) on 'frames' frames each (0: the most a clip has, 4k+1). "
        "Unreadable files are listed in the report instead of stopping the graph, unless strict is on."
    )

    @classmethod
    def INPUT_TYPES(cls):
        first, added = settings_since(DatasetConfig, "strict")
        return {"required": DatasetConfig.comfy_inputs(skip=added), "optional": DatasetConfig.comfy_inputs(skip=first)}

    @classmethod
    def IS_CHANGED(cls, path="", **_):
        # Re-run when files in the folder change, not only when the widgets do.
        return folder_fingerprint(path)

    def execute(self, **widgets):
        from lora_train.dataset import load_dataset, preview_grid

        dataset = load_dataset(DatasetConfig.from_dict(widgets))
        grid = preview_grid(dataset, PREVIEW_MAX_IMAGES, PREVIEW_CELL)
        report = dataset.report.summary()
        return {
            "ui": {"images": [save_temp_preview(grid, "lora_dataset")]},
            "result": (dataset, pil_to_image_batch(grid), report),
        }


NODE_CLASS_MAPPINGS = {"LoraTrain_LoadDataset": LoadLoraDataset}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraTrain_LoadDataset": "Load LoRA Dataset"}
