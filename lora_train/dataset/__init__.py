"""Dataset: a folder of images and video clips (`video`: files PyAV decodes, `<name>.frames/` folders) with
captions (`.txt` sidecars, `metadata.csv`, kohya `N_name` repeat folders) loaded with a report of every bad file,
aspect buckets, and auto-label: CLIP image-text ranking of vocabularies (`vocab/`) with its captioner back ends
(`captioners/`: ComfyUI graph objects, Hugging Face folders), written back as metadata.csv rows or sidecars."""

from lora_train.lazy import lazy_exports

EXPORTS = {
    "DatasetConfig": "loading",
    "DatasetError": "loading",
    "LoraDataset": "loading",
    "ImageItem": "loading",
    "load_dataset": "loading",
    "dataset_from_images": "loading",
    "read_metadata_csv": "loading",
    "folder_fingerprint": "loading",
    "preview_grid": "loading",
    "assign_buckets": "buckets",
    "BucketOptions": "buckets",
    "buckets_with": "buckets",
    "bucket_counts": "buckets",
    "fit_to_bucket": "buckets",
    "load_frames": "video",
    "VIDEO_EXTENSIONS": "video",
    "CaptionConfig": "autolabel",
    "CaptionError": "autolabel",
    "auto_label": "autolabel",
    "comfy_clip_encoders": "captioners.comfy_clip",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
