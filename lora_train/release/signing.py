"""Ed25519 signatures of release manifests (the `cryptography` package, imported only when signing or verifying).

A signature is a detached file `manifest.json.sig` beside the manifest: a small JSON object
`{"algorithm": "ed25519", "key_id": ..., "signature": <base64>}` over the manifest's exact bytes. The manifest
names its signer (`signer.key_id`), so the signature covers the claim of who signed it; editing any byte of the
manifest (a mirror URL, a sha256) makes the signature fail.

Keys are OpenSSH Ed25519 keys: `python -m lora_train keygen` writes `<name>.key` (private, mode 600) and
`<name>.pub` (one line, `ssh-ed25519 AAAA... name`), and keys made by `ssh-keygen -t ed25519` work as they are.
The key id is the first 16 hex digits of sha256 over the raw 32-byte public key. A reader trusts the public keys
in a folder (or one file) of `.pub` lines it chose itself; the manifest never decides whom to trust.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_train.fsutil import atomic_write_bytes
from lora_train.release.manifest import Manifest, dump_manifest

log = logging.getLogger(__name__)

SIGNATURE_SUFFIX = ".sig"
ALGORITHM = "ed25519"
PASSPHRASE_ENV = "LORA_TRAIN_SIGNING_PASSPHRASE"
TRUSTED_KEYS_ENV = "LORA_TRAIN_TRUSTED_KEYS"
POLICIES = ("warn", "refuse")


class SigningError(ValueError):
    """A key, signature or trust setting is unusable, or a signature does not verify; the message says which."""


def _crypto():
    """The `cryptography` primitives, with a clear message when the package is missing."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SigningError(
            "signing and verifying releases needs the 'cryptography' package: pip install cryptography "
            "(in ComfyUI's Python environment), or turn signature checks off by leaving trusted_keys empty"
        ) from None
    return serialization, ed25519, InvalidSignature


@dataclass(frozen=True)
class PublicKey:
    """A trusted (or signing) Ed25519 public key: its raw 32 bytes, id and the comment it was saved with."""

    raw: bytes
    name: str = ""

    @property
    def key_id(self) -> str:
        return key_id(self.raw)

    def openssh(self) -> str:
        """`ssh-ed25519 AAAA... name` (the `.pub` line)."""
        blob = b"".join(len(part).to_bytes(4, "big") + part for part in (b"ssh-ed25519", self.raw))
        return f"ssh-ed25519 {base64.b64encode(blob).decode()} {self.name}".rstrip()


def key_id(raw_public: bytes) -> str:
    """First 16 hex digits of sha256 over the raw public key."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


# ---- keys ------------------------------------------------------------------------------------------------------
def generate_key(folder: str | os.PathLike, name: str) -> tuple[Path, Path, PublicKey]:
    """Write `<folder>/<name>.key` (OpenSSH private key, mode 600) and `<name>.pub`; refuse to overwrite either."""
    serialization, ed25519, _ = _crypto()
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise SigningError(f"key name {name!r} must be a plain file name like 'my_releases'")
    target = Path(folder)
    private_path, public_path = target / f"{name}.key", target / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise SigningError(f"{path} already exists; keys are never overwritten: pick another name")
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = PublicKey(_raw_public(private), name)
    target.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, even briefly
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    atomic_write_bytes(public_path, (public.openssh() + "\n").encode())
    return private_path, public_path, public


def _raw_public(private: Any) -> bytes:
    serialization, _, _ = _crypto()
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private_key(path: str | os.PathLike) -> Any:
    """An Ed25519 private key from an OpenSSH or PEM (PKCS#8) file; passphrase from LORA_TRAIN_SIGNING_PASSPHRASE."""
    serialization, ed25519, _ = _crypto()
    key_path = Path(path)
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read signing key {key_path}: {exc.strerror or exc}") from None
    passphrase = os.environ.get(PASSPHRASE_ENV, "").encode() or None
    loader = (
        serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data else serialization.load_pem_private_key
    )
    try:
        private = loader(data, password=passphrase)
    except (ValueError, TypeError) as exc:
        hint = f" (set {PASSPHRASE_ENV} for an encrypted key)" if "password" in str(exc).lower() else ""
        raise SigningError(f"{key_path} is not a usable private key: {exc}{hint}") from None
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise SigningError(f"{key_path} is a {type(private).__name__}; release signing uses Ed25519 keys "
                           "(python -m lora_train keygen NAME, or ssh-keygen -t ed25519)")  # fmt: skip
    return private


def signer_of(private: Any, name: str = "") -> PublicKey:
    """The public half of a private key, named `name`."""
    return PublicKey(_raw_public(private), name)


def parse_public_key(line: str, where: str = "public key") -> PublicKey:
    """A `ssh-ed25519 AAAA... comment` line."""
    parts = line.split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise SigningError(f"{where}: expected a line 'ssh-ed25519 AAAA... name', got {line[:60]!r}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise SigningError(f"{where}: the key is not valid base64") from None
    kind_len = int.from_bytes(blob[:4], "big")
    raw = blob[8 + kind_len :]
    if blob[4 : 4 + kind_len] != b"ssh-ed25519" or len(raw) != 32:
        raise SigningError(f"{where}: not an Ed25519 public key")
    return PublicKey(raw, " ".join(parts[2:]))


def load_trusted_keys(source: str | os.PathLike) -> dict[str, PublicKey]:
    """Trusted keys by id from a `.pub` file or a folder of them (one or more `ssh-ed25519` lines each)."""
    root = Path(source).expanduser()
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix == ".pub" and p.is_file())
    elif root.is_file():
        files = [root]
    else:
        raise SigningError(f"trusted_keys: {root} is neither a folder of .pub files nor a .pub file")
    keys: dict[str, PublicKey] = {}
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                key = parse_public_key(line, f"{path}:{number}")
                keys[key.key_id] = key
    if not keys:
        raise SigningError(f"trusted_keys: no ssh-ed25519 public key found in {root}")
    return keys


# ---- signatures ------------------------------------------------------------------------------------------------
def sign_bytes(data: bytes, private: Any) -> bytes:
    """The detached signature file's content for `data`."""
    body = {"algorithm": ALGORITHM, "key_id": signer_of(private).key_id,
            "signature": base64.b64encode(private.sign(data)).decode()}  # fmt: skip
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def signature_path(manifest_path: str | os.PathLike) -> Path:
    """`manifest.json` -> `manifest.json.sig`."""
    path = Path(manifest_path)
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def read_signature(raw: bytes, where: str = "signature") -> tuple[str, bytes]:
    """(key id, 64-byte signature) from a signature file."""
    try:
        body = json.loads(raw.decode("utf-8"))
        if body.get("algorithm") != ALGORITHM:
            raise SigningError(f"{where}: algorithm {body.get('algorithm')!r} is not supported (only {ALGORITHM})")
        signature = base64.b64decode(body["signature"], validate=True)
        return str(body["key_id"]), signature
    except SigningError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SigningError(f"{where} is not a lora_train signature file (JSON with algorithm, key_id, "
                           "signature)") from None  # fmt: skip


@dataclass
class Verdict:
    """What signature checking concluded. `status`: verified, unsigned, untrusted (signed by an unknown key)."""

    status: str
    key_id: str = ""
    signer: str = ""
    message: str = ""


def verify_manifest(
    manifest: bytes, signature: bytes | None, claimed_key_id: str, trusted: dict[str, PublicKey], where: str
) -> Verdict:
    """Check `manifest`'s detached `signature` against the trusted keys; raise SigningError on a bad signature.

    `claimed_key_id` is the manifest's `signer.key_id` (empty when it claims none). A manifest that claims a signer
    but comes without a signature, or whose signature names another key, is refused like a bad signature: a forger
    would rather strip the signature than break it.
    """
    if signature is None:
        if claimed_key_id:
            raise SigningError(f"{where} says it is signed by key {claimed_key_id} but no signature was found "
                               f"beside it ({SIGNATURE_SUFFIX}); refused")  # fmt: skip
        return Verdict("unsigned", message=f"{where} is not signed")
    signed_by, raw_signature = read_signature(signature, f"signature of {where}")
    if claimed_key_id and signed_by != claimed_key_id:
        raise SigningError(f"{where} names signer {claimed_key_id} but its signature is by key {signed_by}; refused")
    key = trusted.get(signed_by)
    if key is None:
        return Verdict("untrusted", signed_by, message=f"{where} is signed by key {signed_by}, which is not among "
                       "your trusted keys")  # fmt: skip
    _, ed25519, invalid_signature = _crypto()
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key.raw).verify(raw_signature, manifest)
    except invalid_signature:
        raise SigningError(f"{where}: BAD SIGNATURE for trusted key {signed_by} ({key.name or 'unnamed'}): the "
                           "manifest was changed after it was signed; refused") from None  # fmt: skip
    return Verdict("verified", signed_by, key.name, f"{where} signed by {key.name or signed_by} ({signed_by})")


def stamp_signer(manifest: Manifest, private: Any | None, name: str) -> None:
    """Set (or, unsigned, clear) the manifest's `signer` before it is dumped and signed."""
    manifest.signer = {"key_id": signer_of(private).key_id, "name": name} if private is not None else {}


def write_manifest_files(folder: Path, manifest: Manifest, private: Any | None, name: str = "") -> list[str]:
    """Write `manifest.json` (and, signed, `manifest.json.sig`) into `folder`; the manifest last. Returns the names.

    Unsigned, a stale signature beside it is removed (it would no longer match)."""
    stamp_signer(manifest, private, name)
    text = dump_manifest(manifest).encode("utf-8")
    sig = signature_path(folder / "manifest.json")
    if private is None:
        sig.unlink(missing_ok=True)
        atomic_write_bytes(folder / "manifest.json", text)
        return ["manifest.json"]
    atomic_write_bytes(sig, sign_bytes(text, private))
    atomic_write_bytes(folder / "manifest.json", text)
    return [sig.name, "manifest.json"]


def signing_key(path: str | os.PathLike | None) -> tuple[Any | None, str]:
    """(private key, signer name) for a key path, or (None, "") when not signing. The name is the comment of the
    `.pub` beside the key, else the key file's stem."""
    if not path:
        return None, ""
    private = load_private_key(path)
    pub = Path(path).with_suffix(".pub")
    name = Path(path).stem
    if pub.is_file():
        try:
            name = parse_public_key(pub.read_text(encoding="utf-8").strip(), str(pub)).name or name
        except SigningError:
            log.warning("%s is not an ssh-ed25519 public key; signer named %r", pub, name)
    return private, name
