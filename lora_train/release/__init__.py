"""Release: pack a LoRA for publishing as `purpose_type_vN` with a model card, sha256 hashes and a manifest (JSON,
schema in `schemas/`) listing mirror URLs and the versions kept, optionally signed (Ed25519, detached
`manifest.json.sig`); `fetch` reads and verifies the same manifest. A peft adapter folder (language-model LoRA) is
released as a byte-reproducible zip of the folder (`adapter`)."""

from lora_train.lazy import lazy_exports

EXPORTS = {
    "PublishConfig": "publish",
    "PublishError": "publish",
    "PublishResult": "publish",
    "publish_lora": "publish",
    "result_summary": "publish",
    "refresh_model_card": "publish",
    "signing_key": "signing",
    "stamp_signer": "signing",
    "write_manifest_files": "signing",
    "Manifest": "manifest",
    "ManifestError": "manifest",
    "load_manifest": "manifest",
    "publish_adapter": "adapter",
    "is_adapter_folder": "adapter",
    "dump_manifest": "manifest",
    "ManifestFile": "manifest",
    "SigningError": "signing",
    "generate_key": "signing",
    "load_private_key": "signing",
    "load_trusted_keys": "signing",
    "sign_bytes": "signing",
    "signature_path": "signing",
    "signer_of": "signing",
    "verify_manifest": "signing",
    "Verdict": "signing",
    "SIGNATURE_SUFFIX": "signing",
    "TRUSTED_KEYS_ENV": "signing",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
