"""Ed25519 signatures on messages with a ``signature`` field (announcements, updates, manifests).

What is signed: the message's full type name (e.g. ``evfl.v1.ClientUpdate``), a NUL byte, then
the message serialized with ``SerializeToString(deterministic=True)`` after clearing its
``signature`` field. The type name separates domains, so a signature over an update can never
pass as a signature over an announcement that happens to serialize to the same bytes. Chunked
weights are covered too: the signed ``Blob`` lists every chunk's sha256. The signature covers
the parsed content, not the received bytes, so another encoding of the same content (a bool sent
as 2 instead of 1) still verifies; any change in content does not.

Key files: ``<key_id>.key.pem`` (PKCS#8, unencrypted, mode 0600) and ``<key_id>.pub.pem``
(SubjectPublicKeyInfo). A verifier's :class:`KeyRing` is usually a directory of ``*.pub.pem``
files, the key id taken from each file name. In containers the private key can come from an
environment variable holding the PEM text (:func:`signer_from_env`).

Key rotation: a keyring can hold several public keys, and every signature names its key id.
1. Add the new public key to every verifier's keyring (both keys now verify).
2. Switch the signer to the new private key.
3. Once nothing signed with the old key is still in flight, remove the old public key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import Message

from proto.wire_errors import BadSignature

__all__ = [
    "PRIVATE_SUFFIX",
    "PUBLIC_SUFFIX",
    "KeyLoadError",
    "KeyRing",
    "Signer",
    "generate_keypair",
    "load_keyring",
    "load_public_key",
    "load_signer",
    "sign",
    "signed_bytes",
    "signer_from_env",
]

PRIVATE_SUFFIX = ".key.pem"
PUBLIC_SUFFIX = ".pub.pem"
_SIGNATURE_FIELD = "signature"
_SIGNATURE_LEN = 64
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

PathOrPem = str | bytes | os.PathLike[str]


class KeyLoadError(ValueError):
    """A key file, PEM text or environment variable does not hold a usable Ed25519 key."""


def _check_key_id(key_id: str) -> None:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ValueError(
            f"key id {key_id!r} must be 1-128 characters of letters, digits, '.', '_' or '-'"
        )


def _require_signature_field(message: Message) -> None:
    if _SIGNATURE_FIELD not in message.DESCRIPTOR.fields_by_name:
        raise TypeError(f"{message.DESCRIPTOR.full_name} has no signature field")


def signed_bytes(message: Message) -> bytes:
    """The bytes a signature covers: type name, NUL, the message without its signature."""
    _require_signature_field(message)
    unsigned = type(message)()
    unsigned.CopyFrom(message)
    unsigned.ClearField(_SIGNATURE_FIELD)
    name = message.DESCRIPTOR.full_name.encode("ascii")
    return name + b"\x00" + unsigned.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class Signer:
    """A private key and the id verifiers know its public key by."""

    key_id: str
    private_key: Ed25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_key_id(self.key_id)
        if not isinstance(self.private_key, Ed25519PrivateKey):
            raise TypeError(f"signer {self.key_id!r}: private_key must be an Ed25519PrivateKey")

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def public_pem(self) -> bytes:
        """The public key as PEM, to hand to verifiers."""
        return _public_pem(self.public_key)


def sign(message: Message, signer: Signer) -> None:
    """Sign a message in place (sets ``message.signature``); re-signing replaces the old one."""
    signature = signer.private_key.sign(signed_bytes(message))
    target = getattr(message, _SIGNATURE_FIELD)
    target.key_id = signer.key_id
    target.ed25519 = signature


class KeyRing:
    """The public keys a verifier trusts, by key id; several at once during a rotation."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key_id, key in (keys or {}).items():
            self.add(key_id, key)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={list(self.key_ids)})"

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def add(self, key_id: str, public_key: Ed25519PublicKey) -> None:
        """Trust a public key under ``key_id`` (replacing any key with that id)."""
        _check_key_id(key_id)
        if not isinstance(public_key, Ed25519PublicKey):
            raise TypeError(f"key {key_id!r}: public_key must be an Ed25519PublicKey")
        self._keys[key_id] = public_key

    def remove(self, key_id: str) -> None:
        """Stop trusting a key; KeyError if it is not in the ring."""
        del self._keys[key_id]

    def verify(self, message: Message) -> str:
        """Return the id of the key that signed ``message``; BadSignature if none did."""
        _require_signature_field(message)
        kind = message.DESCRIPTOR.name
        field_value = getattr(message, _SIGNATURE_FIELD)
        if not message.HasField(_SIGNATURE_FIELD) or not field_value.ed25519:
            raise BadSignature(f"{kind} is unsigned")
        key_id: str = field_value.key_id
        signature: bytes = field_value.ed25519
        key = self._keys.get(key_id)
        if key is None:
            raise BadSignature(f"{kind} is signed by unknown key {key_id[:128]!r}")
        if len(signature) != _SIGNATURE_LEN:
            raise BadSignature(
                f"{kind} signature by key {key_id!r} has {len(signature)} bytes, "
                f"expected {_SIGNATURE_LEN}"
            )
        try:
            key.verify(signature, signed_bytes(message))
        except InvalidSignature:
            raise BadSignature(f"{kind} signature by key {key_id!r} does not verify") from None
        return key_id


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_keypair(directory: str | os.PathLike[str], key_id: str) -> tuple[Path, Path]:
    """Write a new ``<key_id>.key.pem`` (mode 0600) and ``<key_id>.pub.pem`` into a directory.

    Refuses (FileExistsError) to overwrite either file: losing a private key is not undoable.
    """
    _check_key_id(key_id)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    private_path = folder / f"{key_id}{PRIVATE_SUFFIX}"
    public_path = folder / f"{key_id}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"refusing to overwrite key file {path}")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 from the start, so the secret is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    os.chmod(private_path, 0o600)  # whatever the umask
    public_path.write_bytes(_public_pem(key.public_key()))
    return private_path, public_path


def _read_pem(path_or_pem: PathOrPem, what: str) -> tuple[bytes, str]:
    """PEM bytes and a description of where they came from (never the PEM itself)."""
    if isinstance(path_or_pem, bytes):
        return path_or_pem, f"{what} PEM text"
    if isinstance(path_or_pem, str) and "-----BEGIN" in path_or_pem:
        return path_or_pem.encode("ascii", errors="replace"), f"{what} PEM text"
    path = Path(path_or_pem)
    try:
        return path.read_bytes(), f"{what} file {path}"
    except OSError as exc:
        raise KeyLoadError(f"cannot read {what} file {path}: {exc.strerror}") from None


def _parse_private(pem: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyLoadError(f"{source} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyLoadError(f"{source} holds a {type(key).__name__}, expected an Ed25519 key")
    return key


def load_signer(path_or_pem: PathOrPem, key_id: str) -> Signer:
    """A Signer from a private key file, or from PEM text (bytes, or a str holding the PEM)."""
    pem, source = _read_pem(path_or_pem, "private key")
    return Signer(key_id, _parse_private(pem, source))


def signer_from_env(var: str, key_id: str, environ: Mapping[str, str] | None = None) -> Signer:
    """A Signer from an environment variable holding the private key's PEM text.

    Literal ``\\n`` sequences are read as newlines, as some deployment tools flatten them.
    Errors name the variable, never its contents.
    """
    env = os.environ if environ is None else environ
    text = env.get(var, "")
    if not text.strip():
        raise KeyLoadError(
            f"environment variable {var} is not set; it should hold an Ed25519 private key in PEM"
        )
    if "\n" not in text:
        text = text.replace("\\n", "\n")
    pem = text.encode("ascii", errors="replace")
    return Signer(key_id, _parse_private(pem, f"environment variable {var}"))


def load_public_key(path_or_pem: PathOrPem) -> Ed25519PublicKey:
    """An Ed25519 public key from a ``*.pub.pem`` file or PEM text."""
    pem, source = _read_pem(path_or_pem, "public key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyLoadError(f"{source} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyLoadError(f"{source} holds a {type(key).__name__}, expected an Ed25519 key")
    return key


def _key_id_of(path: Path) -> str:
    name = path.name
    for suffix in (PUBLIC_SUFFIX, ".pem"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return path.stem


def load_keyring(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> KeyRing:
    """A KeyRing from a directory of ``*.pub.pem`` files or from a list of public key files.

    Each key id is its file name without ``.pub.pem``.
    """
    if isinstance(source, str | os.PathLike):
        root = Path(source)
        if root.is_dir():
            paths = sorted(root.glob(f"*{PUBLIC_SUFFIX}"))
            if not paths:
                raise KeyLoadError(f"no *{PUBLIC_SUFFIX} files in {root}")
        else:
            paths = [root]
    else:
        paths = [Path(p) for p in source]
    ring = KeyRing()
    for path in paths:
        key_id = _key_id_of(path)
        if not _KEY_ID.fullmatch(key_id):
            raise KeyLoadError(f"public key file name {path.name!r} is not a valid key id")
        if key_id in ring:
            raise KeyLoadError(f"key id {key_id!r} appears twice ({path})")
        ring.add(key_id, load_public_key(path))
    return ring
