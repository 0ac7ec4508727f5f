"""Fetch: a small download manager for LoRAs. A direct link, mirror list, `hf://` link or release manifest is
planned into files, each downloaded over HTTP with Range resume, retries and mirror fallback (expired signed links
detected), checked (size, sha256, safetensors header; pickles refused; zip members extracted safely), cached by
content and placed atomically into the loras folder. The network policy refuses loopback/private addresses on
every redirect hop unless allowed, and resolves Hugging Face links against mirror endpoints."""

from lora_train.lazy import lazy_exports

EXPORTS = {
    "FetchConfig": "config",
    "fetch_lora": "download",
    "FetchError": "download",
    "FetchCancelled": "download",
    "FetchProgress": "download",
    "FetchResult": "download",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
