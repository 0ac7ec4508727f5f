"""Upload: put a release on storage services and list the links in its manifest. Destinations: a local folder,
WebDAV (PUT/MKCOL/MOVE with auth), S3-compatible object storage (boto3, multipart, presigned GET links with an
expiry), and a Hugging Face Hub repo (huggingface_hub, HF_ENDPOINT honoured). Every file is verified after upload
(size and sha256 read back); the manifest is written and uploaded last, signed when a key is given, and only once
every file it points at is verified. Credentials come from the environment and are never written or logged."""

from lora_train.lazy import lazy_exports

EXPORTS = {
    "Destination": "destinations",
    "UploadError": "destinations",
    "parse_destination": "destinations",
    "parse_expiry": "destinations",
    "DESTINATION_KINDS": "destinations",
    "DistributeResult": "distribute",
    "distribute_release": "distribute",
    "renew_links": "distribute",
    "publish_and_upload": "distribute",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
