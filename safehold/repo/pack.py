"""Pack files: sealed blobs one after another, then a sealed header listing them.

Layout: blob_0 || blob_1 || ... || seal(header) || u32 length of seal(header).
The header holds one PACK_RECORD per blob, in order, so offsets follow from the lengths and
the index can always be rebuilt from the packs alone.
"""

from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass

import blake3

from safehold.crypto import OVERHEAD, Cipher
from safehold.repo.format import PACK_HEADER_AAD, PACK_RECORD, PACK_TRAILER
from safehold.store.spool import Spooled

Buffer = mmap.mmap | bytearray


# A pack is finished once this many blobs are in it, however small they are: until it is
# stored, each blob is a Python object (its PackEntry, in two sets), ~150,000 in a full pack
# of tiny blobs.
MAX_BLOBS = 65536


def _empty(size: int) -> Buffer:
    """An anonymous mapping: memory the pack never fills is never touched, so it costs no
    RSS, and it needs no numpy (a backup that writes only a few trees never loads it)."""
    return mmap.mmap(-1, size) if size else bytearray()


@dataclass(frozen=True, slots=True)
class PackEntry:
    """One blob's place in a pack (slots: ~70 bytes, not ~200; a pack of tiny blobs holds
    100,000s)."""

    blob_type: int
    blob_id: bytes
    offset: int
    length: int
    raw_length: int

    def index_row(self, pack_id: bytes) -> tuple[bytes, bytes, int, int, int, int]:
        """The blob's index record in pack ``pack_id``: (blob id, pack id, offset, length,
        plaintext length, type), as ``Index.add`` and ``encode_index_file`` take it."""
        return (self.blob_id, pack_id, self.offset, self.length, self.raw_length, self.blob_type)


class PackBuilder:
    """Builds one pack in a single buffer. Not thread-safe: the caller serialises ``reserve``,
    ``add`` and ``finish``; the space ``reserve`` hands out may be filled in any thread.

    Sealed blobs are written straight into the buffer (``reserve``, then seal into the view;
    or ``add`` a sealed blob), so a pack is never assembled from parts by copying, and the
    buffer itself can be reused for the next pack (``recycle``).
    """

    def __init__(self, capacity: int = 0, buffer: Buffer | None = None) -> None:
        self.buffer = buffer if buffer is not None else _empty(capacity)
        self.size = 0
        self.entries: list[PackEntry] = []
        self.ids: set[bytes] = set()
        self.pending = 0  # reserved places still being filled (the writer's bookkeeping)
        self.poisoned = False  # a place could not be filled: the pack must not be stored
        self.finished = False

    def room(self) -> int:
        """Bytes left before the buffer has to grow."""
        return len(self.buffer) - self.size

    def _space(self, length: int) -> memoryview:
        if length > self.room():  # only ever with no view of the buffer outstanding
            grown = _empty(max(self.size + length, 2 * len(self.buffer)))
            grown[: self.size] = self.buffer[: self.size]
            self.buffer = grown
        view = memoryview(self.buffer)[self.size : self.size + length]
        self.size += length
        return view

    def reserve(self, blob_type: int, blob_id: bytes, length: int, raw_length: int) -> memoryview:
        """The place of the next sealed blob of ``length`` bytes, for the caller to fill (and
        then ``release``). Grows the buffer if needed: never while a reserved view is unfilled."""
        if self.finished:
            raise RuntimeError("a finished pack takes no more blobs: start a new PackBuilder")
        self.entries.append(PackEntry(blob_type, blob_id, self.size, length, raw_length))
        self.ids.add(blob_id)
        return self._space(length)

    def filled(self, entry: PackEntry, view: memoryview) -> None:
        """The place ``reserve`` gave for ``entry`` (the last entry then) is filled: nothing to
        do here (a SpooledPackBuilder writes it to its file)."""

    def add(self, blob_type: int, blob_id: bytes, sealed: bytes, raw_length: int) -> None:
        """Append an already sealed blob."""
        with self.reserve(blob_type, blob_id, len(sealed), raw_length) as view:
            view[:] = sealed
            self.filled(self.entries[-1], view)

    def __len__(self) -> int:
        return self.size

    def finish(self, cipher: Cipher) -> tuple[bytes, memoryview]:
        """Append the sealed header; return (pack id, a view of the pack's bytes). The id is
        BLAKE3 of the bytes. Release the view before ``recycle``. A builder builds one pack."""
        if self.finished:
            raise RuntimeError("the pack is finished already")
        self.finished = True
        # Packed in place (no bytes object per blob: a pack of tiny blobs has 100,000s).
        header = bytearray(PACK_RECORD.size * len(self.entries))
        pack_into, size = PACK_RECORD.pack_into, PACK_RECORD.size
        for number, e in enumerate(self.entries):
            pack_into(header, number * size, e.blob_type, e.blob_id, e.length, e.raw_length)
        sealed = OVERHEAD + len(header)  # sealed straight into the pack: no copy of it
        with self._space(sealed + PACK_TRAILER.size) as tail:
            cipher.seal_into(header, PACK_HEADER_AAD, tail[:sealed])
            PACK_TRAILER.pack_into(tail, sealed, sealed)
        del header
        data = memoryview(self.buffer)[: self.size]
        return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest(), data

    def recycle(self) -> Buffer:
        """The buffer, for the next pack (its contents are overwritten, never read)."""
        buffer, self.buffer = self.buffer, _empty(0)
        return buffer


class SpooledPackBuilder(PackBuilder):
    """Builds one pack in an unnamed temporary file (``Spooled``) instead of in memory: for a
    remote location, whose packs wait seconds for their upload (safehold/store/spool.py).

    ``reserve`` hands out a scratch buffer of the calling thread's own; once sealed into,
    ``filled`` writes it to its place in the file (threads write different places at once).
    ``finish`` returns the file, which the caller closes once it is stored. ``room`` counts
    to ``capacity``, so packs come out as a PackBuilder's of that capacity would.
    """

    _scratch = threading.local()

    def __init__(self, capacity: int, directory: str | None = None) -> None:
        super().__init__(0)
        self.capacity = capacity
        self.spooled = Spooled(directory)

    def room(self) -> int:
        return self.capacity - self.size

    def reserve(self, blob_type: int, blob_id: bytes, length: int, raw_length: int) -> memoryview:
        if self.finished:
            raise RuntimeError("a finished pack takes no more blobs: start a new PackBuilder")
        self.entries.append(PackEntry(blob_type, blob_id, self.size, length, raw_length))
        self.ids.add(blob_id)
        self.size += length
        scratch = getattr(self._scratch, "buffer", None)
        if scratch is None or len(scratch) < length:
            scratch = self._scratch.buffer = bytearray(length)
        return memoryview(scratch)[:length]

    def filled(self, entry: PackEntry, view: memoryview) -> None:
        self.spooled.write_at(entry.offset, view)

    def finish(self, cipher: Cipher) -> tuple[bytes, Spooled]:  # type: ignore[override]
        """Append the sealed header; return (pack id, the file), the id BLAKE3 of its bytes."""
        if self.finished:
            raise RuntimeError("the pack is finished already")
        self.finished = True
        header = b"".join(
            PACK_RECORD.pack(e.blob_type, e.blob_id, e.length, e.raw_length) for e in self.entries
        )
        sealed_header = cipher.seal(header, PACK_HEADER_AAD)
        tail = sealed_header + PACK_TRAILER.pack(len(sealed_header))
        self.spooled.write_at(self.size, tail)
        self.size += len(tail)
        self.spooled.size = self.size
        return self.spooled.digest(), self.spooled

    def recycle(self) -> Buffer:
        """No buffer to keep: the file is removed (the caller's copy of it, if finished, is
        closed too)."""
        self.spooled.close()
        return _empty(0)


def pack_id_of(data: bytes) -> bytes:
    """Return the id a pack with these bytes must have."""
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()


class PackMismatch(ValueError):
    """A stored pack whose content does not match its name."""


def verified_entries(cipher: Cipher, pack_id: bytes, data: bytes) -> list[PackEntry]:
    """The entries of a whole stored pack, once its bytes match its name (``pack_id``) and its
    header authenticates. Raises PackMismatch (a ValueError), ValueError (a malformed header)
    or AuthenticationFailed (a modified header)."""
    if pack_id_of(data) != pack_id:
        raise PackMismatch("its content does not match its name")
    return read_header(cipher, data)


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
