"""Master key, passphrase wrapping, authenticated encryption and keyed blob ids.

- AEAD: AES-256-GCM, a fresh random 96-bit nonce per object, sealed = nonce || ciphertext || tag.
  The associated data binds every object to its name or blob id, so objects cannot be swapped.
- Blob ids: keyed BLAKE3 of the plaintext (the id key is part of the master key), so ids reveal
  nothing about content to someone without the key.
- Passphrase wrapping: Argon2id (memory-hard) derives a key-encryption key that seals the
  master key.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass

import blake3
import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from safehold.kdf import derive

NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE

# Argon2id defaults: 64 MiB, 3 passes, 2 lanes. About 0.15 s on the reference machine.
KDF_DEFAULTS = {"time_cost": 3, "memory_cost": 65536, "parallelism": 2}


class AuthenticationFailed(Exception):
    """Decryption failed: wrong key, or the data was modified."""


@dataclass(frozen=True)
class MasterKey:
    """The secret material of one repository, shared by all its passphrase-wrapped key files."""

    encryption_key: bytes
    id_key: bytes
    chunker_seed: int

    @classmethod
    def generate(cls) -> MasterKey:
        """Return a new random master key."""
        # pyfastcdc takes a signed 64-bit seed: keep 63 bits.
        seed = int.from_bytes(os.urandom(8), "little") & 0x7FFF_FFFF_FFFF_FFFF
        return cls(os.urandom(32), os.urandom(32), seed)

    def to_bytes(self, **extra: object) -> bytes:
        """msgpack of the key material plus ``extra`` fields (a key file's sealed flags)."""
        return msgpack.packb(
            {
                "encryption_key": self.encryption_key,
                "id_key": self.id_key,
                "chunker_seed": self.chunker_seed,
                **extra,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> MasterKey:
        fields = msgpack.unpackb(data)
        return cls(fields["encryption_key"], fields["id_key"], fields["chunker_seed"])


class Cipher:
    """Encryption and ids under one master key. Thread-safe."""

    def __init__(self, master_key: MasterKey) -> None:
        self.master_key = master_key
        self._aead = AESGCM(master_key.encryption_key)
        self._id_key = master_key.id_key

    def blob_id(self, data: bytes | memoryview) -> bytes:
        """Return the 32-byte keyed BLAKE3 id of ``data``."""
        return blake3.blake3(data, key=self._id_key).digest()

    def seal(self, plaintext: bytes | memoryview, associated: bytes) -> bytes:
        """Encrypt and authenticate; returns nonce || ciphertext || tag."""
        sealed = bytearray(OVERHEAD + len(plaintext))
        self.seal_into(plaintext, associated, memoryview(sealed))
        return sealed  # type: ignore[return-value]  # a bytearray: no copy for large blobs

    def seal_into(self, plaintext: bytes | memoryview, associated: bytes, out: memoryview) -> None:
        """``seal``, written into ``out`` (exactly ``OVERHEAD + len(plaintext)`` bytes)."""
        if len(out) != OVERHEAD + len(plaintext):
            raise ValueError("sealed size mismatch")
        out[:NONCE_SIZE] = nonce = os.urandom(NONCE_SIZE)
        self._aead.encrypt_into(nonce, plaintext, associated, out[NONCE_SIZE:])

    def open(self, sealed: bytes | memoryview, associated: bytes) -> bytes:
        """Return the plaintext of ``sealed``; AuthenticationFailed if key or data is wrong."""
        if len(sealed) < OVERHEAD:
            raise AuthenticationFailed("object too short")
        view = memoryview(sealed)
        try:
            return self._aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], associated)
        except InvalidTag as error:
            raise AuthenticationFailed("authentication tag mismatch") from error


def wrap_key(
    master_key: MasterKey,
    passphrase: bytes,
    *,
    hostname: str,
    username: str,
    now: float | None = None,
    kdf: dict | None = None,
    no_delete: bool = False,
) -> dict:
    """Seal the master key under a passphrase; returns the key-file document (JSON-ready).

    ``no_delete`` marks the key as one under which safehold deletes and overwrites nothing.
    The flag that counts is sealed with the key material (so it cannot be stripped by editing
    the JSON without the passphrase); the plain ``no_delete`` field only informs ``key list``.
    """
    params = dict(KDF_DEFAULTS, **(kdf or {}))
    salt = os.urandom(16)
    kek = AESGCM(derive(passphrase, salt, params))
    nonce = os.urandom(NONCE_SIZE)
    extra = {"no_delete": True} if no_delete else {}
    sealed = nonce + kek.encrypt(nonce, master_key.to_bytes(**extra), b"safehold-master-key")
    return {
        "version": 1,
        "kdf": "argon2id",
        **params,
        "salt": base64.b64encode(salt).decode(),
        "data": base64.b64encode(sealed).decode(),
        "created": time.time() if now is None else now,
        "hostname": hostname,
        "username": username,
        **extra,
    }


def key_document_problem(document: object) -> str | None:
    """None if ``document`` has the form of a key file (``wrap_key``), else what is wrong.
    (Whether it opens is known only with its passphrase.)"""
    if not isinstance(document, dict):
        return "not a key document"
    if document.get("kdf") != "argon2id":
        return f"unknown key derivation {document.get('kdf')!r}"
    for name in KDF_DEFAULTS:
        if not isinstance(document.get(name), int):
            return f"no integer {name}"
    try:
        salt = base64.b64decode(document["salt"], validate=True)
        sealed = base64.b64decode(document["data"], validate=True)
    except (KeyError, TypeError, ValueError):
        return "salt or sealed key is not base64"
    if len(salt) < 16 or len(sealed) <= NONCE_SIZE + 16:
        return "salt or sealed key too short"
    return None


def unwrap_key(document: dict, passphrase: bytes) -> MasterKey:
    """Return the master key sealed in a key-file document; AuthenticationFailed if wrong."""
    return unwrap_key_flags(document, passphrase)[0]


def unwrap_key_flags(document: dict, passphrase: bytes) -> tuple[MasterKey, dict]:
    """The master key and the key file's sealed flags (``{"no_delete": True}`` or ``{}``)."""
    if document.get("kdf") != "argon2id":
        raise AuthenticationFailed(f"unknown key derivation {document.get('kdf')!r}")
    kek = AESGCM(derive(passphrase, base64.b64decode(document["salt"]), document))
    sealed = base64.b64decode(document["data"])
    try:
        plain = kek.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], b"safehold-master-key")
    except InvalidTag as error:
        raise AuthenticationFailed("wrong passphrase") from error
    fields = msgpack.unpackb(plain)
    flags = {"no_delete": True} if fields.get("no_delete") else {}
    return MasterKey.from_bytes(plain), flags
