"""The in-memory blob index: blob id -> (pack, offset, length, plaintext length, type).

Compact by design (docs/format.md, "Index in memory"): the persisted entries live in two
sorted numpy arrays, a contiguous uint64 key (the first 8 bytes of the id) used for binary
search and a packed record of the rest (24 id bytes, pack number, offset, lengths, type),
49 bytes per blob plus 32 bytes per pack. Entries added during a session sit in a small dict
that is merged into the arrays when it grows.
"""

from __future__ import annotations

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
        self.packs: list[bytes] = []
        self._pack_numbers: dict[bytes, int] = {}
        # (keys, records) swapped as one reference, so a lookup never sees one without the other
        self._sorted = (np.empty(0, dtype=">u8"), np.empty(0, dtype=RECORD_DTYPE))
        self._parts: list[np.ndarray] = []
        self._pending: dict[bytes, tuple[int, int, int, int, int]] = {}
        self._lock = threading.Lock()

    def pack_number(self, pack_id: bytes) -> int:
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = self._pack_numbers[pack_id] = len(self.packs)
            self.packs.append(pack_id)
        return number

    def load_file(self, packs: list[bytes], records: bytes) -> None:
        """Queue the records of one index file; call ``finish_loading`` after the last."""
        array = np.frombuffer(records, dtype=FILE_DTYPE).copy()
        numbers = np.array([self.pack_number(p) for p in packs], dtype="<u4")
        if len(array):
            array["pack"] = numbers[array["pack"]]
        self._parts.append(array)

    def finish_loading(self) -> None:
        """Merge the queued index files into the sorted arrays."""
        if not self._parts:
            return
        combined = np.concatenate(self._parts)
        self._parts = []
        raw = combined.view(np.uint8).reshape(-1, FILE_DTYPE.itemsize)
        keys = np.ascontiguousarray(raw[:, :8]).view(">u8").ravel()
        records = np.empty(len(combined), dtype=RECORD_DTYPE)
        records["rest"] = np.ascontiguousarray(raw[:, 8:32]).view("V24").ravel()
        for field in ("pack", "offset", "length", "raw", "type"):
            records[field] = combined[field]
        self._merge(keys, records)

    def _merge(self, keys: np.ndarray, records: np.ndarray) -> None:
        old_keys, old_records = self._sorted
        all_keys = np.concatenate([old_keys, keys])
        all_records = np.concatenate([old_records, records])
        order = np.argsort(all_keys, kind="stable")
        self._sorted = (all_keys[order], all_records[order])

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
            if len(self._pending) >= MERGE_THRESHOLD:
                self._merge_pending()

    def _merge_pending(self) -> None:
        # Lookups read _pending first, then _sorted: the merged arrays are published before the
        # dict is emptied, so an entry is always in at least one of them.
        pending = self._pending
        ids = np.frombuffer(b"".join(pending), dtype="u1").reshape(-1, 32)
        keys = ids[:, :8].copy().view(">u8").ravel()
        records = np.empty(len(pending), dtype=RECORD_DTYPE)
        records["rest"] = ids[:, 8:].copy().view("V24").ravel()
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
            return Location(self.packs[number], offset, length, raw_length, blob_type)
        keys, records = self._sorted
        key = int.from_bytes(blob_id[:8], "big")
        position = int(np.searchsorted(keys, key))
        rest = blob_id[8:]
        while position < len(keys) and int(keys[position]) == key:
            record = records[position]
            if record["rest"].tobytes() == rest:
                return Location(
                    self.packs[int(record["pack"])],
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
        """Bytes held by the persistent arrays and the pack table (excluding pending entries)."""
        keys, records = self._sorted
        return int(keys.nbytes + records.nbytes + 32 * len(self.packs))

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
                    self.packs[int(record["pack"])],
                    int(record["offset"]),
                    int(record["length"]),
                    int(record["raw"]),
                    int(record["type"]),
                ),
            )


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
