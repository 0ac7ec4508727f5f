"""Release: pack a LoRA for publishing as `purpose_type_vN` with a model card, sha256 hashes and a manifest (JSON,
schema in `schemas/`) listing mirror URLs and the versions kept; `fetch` reads the same manifest. A peft adapter
folder (language-model LoRA) is released as a byte-reproducible zip of the folder (`adapter`)."""

from lora_train.lazy import lazy_exports

EXPORTS = {
    "PublishConfig": "publish",
    "PublishError": "publish",
    "PublishResult": "publish",
    "publish_lora": "publish",
    "result_summary": "publish",
    "Manifest": "manifest",
    "ManifestError": "manifest",
    "load_manifest": "manifest",
    "publish_adapter": "adapter",
    "is_adapter_folder": "adapter",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
