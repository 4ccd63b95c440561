"""Pack files: sealed blobs one after another, then a sealed header listing them.

Layout: blob_0 || blob_1 || ... || seal(header) || u32 length of seal(header).
The header holds one PACK_RECORD per blob, in order, so offsets follow from the lengths and
the index can always be rebuilt from the packs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3

from safehold.crypto import Cipher
from safehold.repo.format import PACK_HEADER_AAD, PACK_RECORD, PACK_TRAILER


@dataclass(frozen=True)
class PackEntry:
    """One blob's place in a pack."""

    blob_type: int
    blob_id: bytes
    offset: int
    length: int
    raw_length: int


class PackBuilder:
    """Collects sealed blobs for one pack. Not thread-safe: the caller serialises ``add``."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []  # joined once at the end: no growing buffer to copy
        self.size = 0
        self.entries: list[PackEntry] = []
        self.ids: set[bytes] = set()

    def add(self, blob_type: int, blob_id: bytes, sealed: bytes, raw_length: int) -> None:
        self.entries.append(PackEntry(blob_type, blob_id, self.size, len(sealed), raw_length))
        self.ids.add(blob_id)
        self.parts.append(sealed)
        self.size += len(sealed)

    def __len__(self) -> int:
        return self.size

    def finish(self, cipher: Cipher) -> tuple[bytes, bytes]:
        """Append the sealed header; return (pack id, pack bytes). The id is BLAKE3 of the bytes."""
        header = b"".join(
            PACK_RECORD.pack(e.blob_type, e.blob_id, e.length, e.raw_length) for e in self.entries
        )
        sealed_header = cipher.seal(header, PACK_HEADER_AAD)
        data = b"".join([*self.parts, sealed_header, PACK_TRAILER.pack(len(sealed_header))])
        self.parts, self.size = [], 0
        return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest(), data


def pack_id_of(data: bytes) -> bytes:
    """Return the id a pack with these bytes must have."""
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()


def read_header(cipher: Cipher, data: bytes) -> list[PackEntry]:
    """Return the entries listed in a whole pack's header.

    Raises ValueError if the pack is truncated and AuthenticationFailed if the header was modified.
    """
    if len(data) < PACK_TRAILER.size:
        raise ValueError("pack too short")
    (header_length,) = PACK_TRAILER.unpack_from(data, len(data) - PACK_TRAILER.size)
    header_start = len(data) - PACK_TRAILER.size - header_length
    if header_start < 0:
        raise ValueError("pack header length points outside the pack")
    header = cipher.open(
        memoryview(data)[header_start : len(data) - PACK_TRAILER.size], PACK_HEADER_AAD
    )
    if len(header) % PACK_RECORD.size:
        raise ValueError("pack header has a partial record")
    entries, offset = [], 0
    for blob_type, blob_id, length, raw_length in PACK_RECORD.iter_unpack(header):
        entries.append(PackEntry(blob_type, blob_id, offset, length, raw_length))
        offset += length
    if offset != header_start:
        raise ValueError("pack header does not match the pack's size")
    return entries
