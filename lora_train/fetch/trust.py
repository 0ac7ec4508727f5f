"""Is this release manifest signed by someone the user trusts? (`lora_train.release` signatures, read here.)

The user names trusted Ed25519 public keys (`trusted_keys`: a folder of `.pub` files or one file; else the
LORA_TRAIN_TRUSTED_KEYS environment variable; else `~/.config/lora_train/trusted_keys/` when it exists). The
detached signature is looked for beside the manifest (`<manifest link>.sig`, the query kept for signed links) unless
the `signature` setting names it. A bad signature, or a manifest that names a signer but comes without a signature,
is always refused; an unsigned manifest, or one signed by a key not in the trusted set, is reported (policy `warn`)
or refused (policy `refuse`).
"""

from __future__ import annotations

import http.client
import logging
import os
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from lora_train.fetch.http_client import AttemptError, HttpClient
from lora_train.fetch.netpolicy import PolicyError, redact_url
from lora_train.release import SIGNATURE_SUFFIX, TRUSTED_KEYS_ENV, SigningError, load_trusted_keys, verify_manifest

if TYPE_CHECKING:
    from lora_train.fetch.config import FetchConfig

log = logging.getLogger(__name__)

SIGNATURE_CAP = 64 * 1024
DEFAULT_TRUSTED_KEYS = Path("~/.config/lora_train/trusted_keys")


def trusted_keys_source(cfg: FetchConfig) -> Path | None:
    """Where the trusted keys come from: the setting, the environment, the default folder, or nowhere."""
    for value in (cfg.trusted_keys, os.environ.get(TRUSTED_KEYS_ENV, "")):
        if value.strip():
            return Path(value.strip()).expanduser()
    default = DEFAULT_TRUSTED_KEYS.expanduser()
    return default if default.is_dir() else None


def signature_link(manifest_link: str) -> str:
    """`https://h/r/manifest.json?sig=..` -> `https://h/r/manifest.json.sig?sig=..`; a path gets `.sig` appended."""
    if "://" not in manifest_link:
        return manifest_link + SIGNATURE_SUFFIX
    parts = urllib.parse.urlsplit(manifest_link)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path + SIGNATURE_SUFFIX))


def read_signature_file(link: str, client: HttpClient) -> bytes | None:
    """The signature's bytes from a path or URL; None when it is not there (missing file, 404, any HTTP error)."""
    if "://" not in link:
        path = Path(link).expanduser()
        return path.read_bytes()[:SIGNATURE_CAP] if path.is_file() else None
    try:
        response, _final = client.open(link, {})
    except AttemptError as exc:
        log.info("no signature at %s: %s", redact_url(link), exc)
        return None
    with response:
        if response.status != 200:
            log.info("no signature at %s: HTTP %s", redact_url(link), response.status)
            return None
        try:
            return response.read(SIGNATURE_CAP)
        except (OSError, http.client.HTTPException) as exc:
            log.info("signature at %s unreadable: %s", redact_url(link), exc)
            return None


def check_manifest_signature(
    cfg: FetchConfig, raw: bytes, manifest_link: str, claimed_key_id: str, client: HttpClient
) -> str:
    """A sentence saying how the manifest is signed; raises PolicyError when a bad signature or the policy refuses."""
    where = f"manifest {redact_url(manifest_link)}"
    source = trusted_keys_source(cfg)
    try:
        trusted = load_trusted_keys(source) if source is not None else {}
        sig_link = cfg.signature.strip() or signature_link(manifest_link)
        signature = read_signature_file(sig_link, client)
        verdict = verify_manifest(raw, signature, claimed_key_id, trusted, where)
    except SigningError as exc:
        raise PolicyError(str(exc)) from None
    if verdict.status == "verified":
        log.info("%s", verdict.message)
        return f"verified: signed by {verdict.signer or verdict.key_id} ({verdict.key_id})"
    if verdict.status == "untrusted" and source is None:
        message = f"{verdict.message} (no trusted keys configured: set trusted_keys or {TRUSTED_KEYS_ENV})"
    else:
        message = verdict.message
    if cfg.signature_policy == "refuse":
        fix = "add the publisher's .pub key to your trusted keys" if verdict.status == "untrusted" else (
            "ask the publisher for a signed release")  # fmt: skip
        raise PolicyError(f"{message}; refused by signature_policy=refuse ({fix}, or set signature_policy=warn)")
    log.warning("%s; fetching anyway (signature_policy=warn)", message)
    return f"{verdict.status}: {message}"
