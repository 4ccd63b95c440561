"""The in-memory blob index: blob id -> (pack, offset, length, plaintext length, type).

Compact by design (docs/format.md, "Index in memory"): the persisted entries live in two
sorted numpy arrays, a contiguous uint64 key (the first 8 bytes of the id) used for binary
search and a packed record of the rest (24 id bytes, pack number, offset, lengths, type),
49 bytes per blob plus 32 bytes per pack. Entries added during a session sit in a small dict
that is merged into the arrays when it grows.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from safehold.repo.format import INDEX_RECORD

RECORD_DTYPE = np.dtype(
    [
        ("rest", "V24"),
        ("pack", "<u4"),
        ("offset", "<u4"),
        ("length", "<u4"),
        ("raw", "<u4"),
        ("type", "u1"),
    ],
    align=False,
)
FILE_DTYPE = np.dtype(
    [
        ("id", "V32"),
        ("pack", "<u4"),
        ("offset", "<u4"),
        ("length", "<u4"),
        ("raw", "<u4"),
        ("type", "u1"),
    ],
    align=False,
)
assert FILE_DTYPE.itemsize == INDEX_RECORD.size
MERGE_THRESHOLD = 65536


class Location(NamedTuple):
    pack_id: bytes
    offset: int
    length: int
    raw_length: int
    blob_type: int


class Index:
    """Blob id -> Location. ``lookup`` and ``add`` are thread-safe."""

    def __init__(self) -> None:
        # Pack ids, 32 bytes each, numbered by position; the dict only knows packs added in
        # this session (loading dedups with a temporary one), so a pack costs ~32 bytes.
        self._pack_table = bytearray()
        self._pack_numbers: dict[bytes, int] = {}
        # (keys, records) swapped as one reference, so a lookup never sees one without the other.
        # Keys are native uint64 so that searchsorted compares without converting the array.
        self._sorted = (np.empty(0, dtype="<u8"), np.empty(0, dtype=RECORD_DTYPE))
        self._files: list[tuple[list[bytes], bytes]] = []
        self._pending: dict[bytes, tuple[int, int, int, int, int]] = {}
        self._lock = threading.Lock()

    @property
    def packs(self) -> list[bytes]:
        """Every pack id the index knows, each once."""
        table = self._pack_table
        return [bytes(table[start : start + 32]) for start in range(0, len(table), 32)]

    def _pack(self, number: int) -> bytes:
        return bytes(self._pack_table[32 * number : 32 * number + 32])

    def pack_number(self, pack_id: bytes, numbers: dict[bytes, int] | None = None) -> int:
        """The number of a pack in the table, appending it if ``numbers`` does not know it."""
        numbers = self._pack_numbers if numbers is None else numbers
        number = numbers.get(pack_id)
        if number is None:
            number = numbers[pack_id] = len(self._pack_table) // 32
            self._pack_table += pack_id
        return number

    def load_file(self, packs: list[bytes], records: bytes) -> None:
        """Queue the records of one index file; call ``finish_loading`` after the last."""
        self._files.append((packs, records))

    def finish_loading(self) -> None:
        """Merge the queued index files into the sorted arrays, in one pass.

        All records are joined into one buffer first: one large allocation that is returned to
        the system when freed, instead of many small ones that would fragment the heap.
        """
        files, self._files = self._files, []
        if not files:
            return
        raw = np.frombuffer(b"".join(records for _, records in files), dtype=FILE_DTYPE)
        known = {self._pack(n): n for n in range(len(self._pack_table) // 32)}
        numbers = np.concatenate(
            [
                np.array([self.pack_number(p, known) for p in packs], dtype="<u4")
                for packs, _ in files
            ]
            + [np.empty(0, dtype="<u4")]
        )
        bases = np.cumsum([0] + [len(packs) for packs, _ in files[:-1]], dtype=np.int64)
        counts = [len(records) // FILE_DTYPE.itemsize for _, records in files]
        local = raw["pack"].astype(np.int64) + np.repeat(bases, counts)
        del files
        keys, records = _split(raw.view(np.uint8).reshape(-1, FILE_DTYPE.itemsize))
        records["pack"] = numbers[local] if len(numbers) else 0
        for field in ("offset", "length", "raw", "type"):
            records[field] = raw[field]
        del raw, local, known
        self._merge(keys, records)
        _release_freed_memory()

    def _merge(self, keys: np.ndarray, records: np.ndarray) -> None:
        old_keys, old_records = self._sorted
        if len(old_keys):
            keys = np.concatenate([old_keys, keys])
            records = np.concatenate([old_records, records])
        order = np.argsort(keys, kind="stable")
        self._sorted = (keys[order], records[order])

    def add(
        self,
        blob_id: bytes,
        pack_id: bytes,
        offset: int,
        length: int,
        raw_length: int,
        blob_type: int,
    ) -> None:
        """Record a blob just written to a pack."""
        with self._lock:
            self._pending[blob_id] = (
                self.pack_number(pack_id),
                offset,
                length,
                raw_length,
                blob_type,
            )
            if len(self._pending) >= max(MERGE_THRESHOLD, len(self._sorted[0]) >> 3):
                self._merge_pending()

    def _merge_pending(self) -> None:
        # Lookups read _pending first, then _sorted: the merged arrays are published before the
        # dict is emptied, so an entry is always in at least one of them.
        pending = self._pending
        ids = np.frombuffer(b"".join(pending), dtype=np.uint8).reshape(-1, 32)
        keys, records = _split(ids)
        values = np.array(list(pending.values()), dtype="<u8").reshape(-1, 5)
        for column, field in enumerate(("pack", "offset", "length", "raw", "type")):
            records[field] = values[:, column]
        self._merge(keys, records)
        self._pending = {}

    def lookup(self, blob_id: bytes) -> Location | None:
        """Return where the blob is stored, or None."""
        pending = self._pending.get(blob_id)
        if pending is not None:
            number, offset, length, raw_length, blob_type = pending
            return Location(self._pack(number), offset, length, raw_length, blob_type)
        keys, records = self._sorted
        if not len(keys):
            return None  # a new repository: no search at all
        key = int.from_bytes(blob_id[:8], "big")
        position = int(np.searchsorted(keys, np.uint64(key)))
        rest = blob_id[8:]
        while position < len(keys) and int(keys[position]) == key:
            record = records[position]
            if record["rest"].tobytes() == rest:
                return Location(
                    self._pack(int(record["pack"])),
                    int(record["offset"]),
                    int(record["length"]),
                    int(record["raw"]),
                    int(record["type"]),
                )
            position += 1
        return None

    def __contains__(self, blob_id: bytes) -> bool:
        return self.lookup(blob_id) is not None

    def __len__(self) -> int:
        return len(self._sorted[0]) + len(self._pending)

    def nbytes(self) -> int:
        """Bytes held by the sorted arrays and the pack table (entries not yet merged aside)."""
        keys, records = self._sorted
        return int(keys.nbytes + records.nbytes + len(self._pack_table))

    def entries(self) -> Iterator[tuple[bytes, Location]]:
        """Yield every (blob id, location); slow per entry, meant for check and tests."""
        with self._lock:
            if self._pending:
                self._merge_pending()
        for key, record in zip(*self._sorted, strict=True):
            blob_id = int(key).to_bytes(8, "big") + record["rest"].tobytes()
            yield (
                blob_id,
                Location(
                    self._pack(int(record["pack"])),
                    int(record["offset"]),
                    int(record["length"]),
                    int(record["raw"]),
                    int(record["type"]),
                ),
            )


def _release_freed_memory() -> None:
    """Ask glibc to give freed heap memory back to the system (loading frees a lot at once)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def _split(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Given rows of bytes starting with 32-byte ids, return (native uint64 keys of the first
    8 id bytes read big-endian, records with the other 24 id bytes filled in)."""
    keys = np.ascontiguousarray(rows[:, :8]).view(">u8").ravel().astype("<u8")
    records = np.empty(len(rows), dtype=RECORD_DTYPE)
    records["rest"] = np.ascontiguousarray(rows[:, 8:32]).view("V24").ravel()
    return keys, records


def encode_index_file(
    entries: list[tuple[bytes, bytes, int, int, int, int]],
) -> tuple[list[bytes], bytes]:
    """Turn (blob id, pack id, offset, length, raw length, type) rows into (pack table, records)."""
    packs: list[bytes] = []
    numbers: dict[bytes, int] = {}
    parts = []
    for blob_id, pack_id, offset, length, raw_length, blob_type in entries:
        if pack_id not in numbers:
            numbers[pack_id] = len(packs)
            packs.append(pack_id)
        parts.append(
            INDEX_RECORD.pack(blob_id, numbers[pack_id], offset, length, raw_length, blob_type)
        )
    return packs, b"".join(parts)
