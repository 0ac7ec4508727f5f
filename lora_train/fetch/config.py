"""FetchConfig: every setting of a fetch (node widgets, CLI flags, defaults, bounds, help) in one dataclass.

Kept apart from `lora_train.fetch.download` so the node module can build its widgets without importing the HTTP stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lora_train.settings import Settings, setting


@dataclass
class FetchConfig(Settings):
    """Settings of one fetch. Node widgets and CLI flags come from here."""

    urls: str = setting(
        "",
        "Links to the LoRA, one per line: the first is tried first, the rest are mirrors. "
        "A single .json link or file is read as a release manifest; hf://org/repo/file links "
        "are tried on every Hugging Face endpoint.",
        multiline=True,
    )
    sha256: str = setting(
        "", "Expected sha256 (64 hex digits). Empty: the manifest's, else the file is not hash-checked."
    )
    size: int = setting(0, "Expected size in bytes (0 = unknown).", min=0, advanced=True)
    version: str = setting("", "Manifest release to fetch: empty = latest, or 3, v3 or name_v3.")
    subfolder: str = setting("", "Folder inside ComfyUI's loras folder to save into (created if missing).")
    filename: str = setting("", "Save under this file name (default: from the manifest or the link).", advanced=True)
    overwrite: bool = setting(
        False, "Replace a different file of the same name (otherwise that is an error).", advanced=True
    )
    allow_private_addresses: bool = setting(
        False,
        "Allow links to loopback, LAN and link-local addresses (your own server or NAS). Off by default so a "
        "shared workflow cannot make your machine probe your network. Cloud metadata addresses stay refused.",
    )
    allow_pickle: bool = setting(
        False,
        "Allow .ckpt/.pt/.pth/.bin files. They are Python pickles that can run code "
        "when loaded: only for files you trust.",
        advanced=True,
    )
    retries: int = setting(
        3,
        "Retries per link for transient errors (dropped connection, 5xx, 429, stall) before "
        "the next mirror; attempts that made progress do not count.",
        min=0,
        max=20,
        advanced=True,
    )
    backoff: float = setting(
        1.0, "First pause before a retry in seconds; doubles each retry, with jitter.", min=0, max=60, advanced=True
    )
    max_retry_after: float = setting(
        120.0,
        "Longest Retry-After the server may ask for; longer moves to the next mirror.",
        min=0,
        max=3600,
        advanced=True,
    )
    timeout: float = setting(
        30.0, "Seconds without any data (connecting or reading) before a retry.", min=0.1, max=600, advanced=True
    )
    low_speed_limit: int = setting(
        1024, "A transfer slower than this many bytes/s for low_speed_time is retried.", min=0, advanced=True
    )
    low_speed_time: float = setting(
        60.0, "Seconds below low_speed_limit before a retry (0 = never).", min=0, advanced=True
    )
    max_redirects: int = setting(10, "Most redirects followed per link.", min=0, max=30, advanced=True)
    max_size_mb: int = setting(
        4096, "Refuse files, and archives that unpack, larger than this (MiB).", min=1, advanced=True
    )
    max_zip_ratio: float = setting(
        200.0, "Refuse archive members that expand more than this many times.", min=1, advanced=True
    )
    hf_endpoints: list[str] = setting(  # noqa: RUF009 - setting() builds a default_factory field
        [],
        "Hugging Face endpoints to try in order (mirrors first). Empty: the "
        "HF_ENDPOINT environment variable, then https://huggingface.co.",
        advanced=True,
    )
    token: str = setting(
        "",
        "Bearer token sent only to the host(s) of the links given here, never to other "
        "hosts or redirect targets, never logged (or set LORA_TRAIN_FETCH_TOKEN).",
        widget=False,
    )
    cache_dir: str = setting("", "Folder for partial downloads and verified files (empty: the default).", widget=False)
    trusted_keys: str = setting(
        "",
        "Release signatures: a folder of trusted publishers' .pub keys (or one .pub file). Empty: the "
        "LORA_TRAIN_TRUSTED_KEYS environment variable, then ~/.config/lora_train/trusted_keys if it exists. "
        "A manifest with a bad signature is always refused.",
        optional=True,
    )
    signature_policy: str = setting(
        "warn",
        "A manifest that is unsigned, or signed by a key you do not trust: warn (fetch and say so) or refuse.",
        choices=("warn", "refuse"),
        optional=True,
    )
    signature: str = setting(
        "", "Link or path of the manifest's signature; empty = the manifest's link + .sig.", widget=False
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sha256 = self.sha256.strip().lower()
        if self.sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"sha256 must be 64 hex digits, got {self.sha256[:80]!r}")

    def links(self) -> list[str]:
        """The links, split on whitespace (links never contain it; commas can be part of signed links)."""
        return self.urls.split()
