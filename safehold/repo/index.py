"""The in-memory blob index: blob id -> (pack, offset, length, plaintext length, type).

Compact by design (docs/format.md, "Index in memory"): a large index lives in two sorted
numpy arrays (``safehold/repo/index_arrays.py``: 49 bytes per blob plus 32 bytes per pack).
An index of at most ``SMALL_INDEX`` blobs is loaded into a dict of blob id -> record number
(the records stay as read, decoded on lookup); entries added during a session sit in a dict
of their own, which is merged into the arrays when it grows past ``MERGE_THRESHOLD``: a
small repository (and a backup that only adds a few trees) never loads numpy.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from safehold.repo.format import INDEX_RECORD

if TYPE_CHECKING:
    from safehold.repo.index_arrays import Sorted

# A small index as loaded: (blob id -> record number, records, first record of each file,
# pack numbers of each file's pack table).
Small = tuple[dict[bytes, int], bytes, list[int], list[list[int]]]

MERGE_THRESHOLD = 65536
SMALL_INDEX = MERGE_THRESHOLD  # loaded indexes up to this many blobs stay in the dict


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
        # The sorted arrays (keys, records), swapped as one reference so that a lookup never
        # sees one without the other; None until the index is too large for the dict alone.
        self._sorted: Sorted | None = None
        self._files: list[tuple[list[bytes], bytes]] = []
        self._pending: dict[bytes, tuple[int, int, int, int, int]] = {}
        # A small index as loaded: blob id -> number of its record in ``records`` (the
        # index files' records, back to back; the records of file k start at record
        # ``bounds[k]`` and number its packs by ``tables[k]``). Building this dict is a few
        # C-level steps per blob, a third of the time of a dict of decoded tuples; a record is
        # decoded when it is looked up.
        # Swapped as one tuple (loaded, records, bounds, tables), like the arrays.
        self._small: Small | None = None
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

    def _sorted_count(self) -> int:
        return 0 if self._sorted is None else len(self._sorted[0])

    def load_file(self, packs: list[bytes], records: bytes) -> None:
        """Queue the records of one index file; call ``finish_loading`` after the last."""
        self._files.append((packs, records))

    def finish_loading(self) -> None:
        """Merge the queued index files into the index, in one pass: into the dict while the
        whole index stays small, else into the sorted arrays."""
        files, self._files = self._files, []
        if not files:
            return
        known = {self._pack(n): n for n in range(len(self._pack_table) // 32)}
        numbers = [[self.pack_number(p, known) for p in packs] for packs, _ in files]
        count = sum(len(records) for _, records in files) // INDEX_RECORD.size
        with self._lock:
            if self._sorted is None and self._small is None and not self._pending:
                if count <= SMALL_INDEX:
                    self._load_small(files, numbers)
                    return
            elif self._sorted is None and len(self) + count <= SMALL_INDEX:
                loaded = self._small[0] if self._small is not None else {}
                for (_packs, records), table in zip(files, numbers, strict=True):
                    for blob_id, pack, *rest in INDEX_RECORD.iter_unpack(records):
                        if blob_id not in loaded:
                            self._pending.setdefault(blob_id, (table[pack], *rest))  # type: ignore[arg-type]
                return
        from safehold.repo import index_arrays

        loaded = index_arrays.from_files(files, numbers)
        del files, known
        with self._lock:
            self._sorted = index_arrays.merge(self._sorted, loaded)
        del loaded
        index_arrays.release_freed_memory()

    def _load_small(self, files: list[tuple[list[bytes], bytes]], numbers: list[list[int]]) -> None:
        size = INDEX_RECORD.size
        bounds, start = [], 0
        for _packs, records in files:
            bounds.append(start)
            start += len(records) // size
        records = b"".join(records for _packs, records in files)
        ids = [records[offset : offset + 32] for offset in range(0, len(records), size)]
        # Reversed, so that of two records of one blob the first one read is kept.
        loaded = dict(zip(reversed(ids), range(len(ids) - 1, -1, -1), strict=True))
        self._small = (loaded, records, bounds, numbers)

    def _small_count(self) -> int:
        return 0 if self._small is None else len(self._small[0])

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
            dicts = len(self._pending) + self._small_count()
            if dicts >= max(MERGE_THRESHOLD, self._sorted_count() >> 3):
                self._merge_pending()

    def _merge_pending(self) -> None:
        # Called with the lock held. Lookups read _pending first, then _sorted: the merged
        # arrays are published before the dict is emptied, so an entry is always in at least
        # one of them.
        from safehold.repo import index_arrays

        small = self._small
        if small is not None:  # the small index as loaded joins the arrays too
            loaded = {blob_id: _record(small, n) for blob_id, n in small[0].items()}
            self._pending = {**loaded, **self._pending}
        added = index_arrays.from_pending(self._pending)
        self._sorted = index_arrays.merge(self._sorted, added)
        self._pending = {}
        self._small = None

    def lookup(self, blob_id: bytes) -> Location | None:
        """Return where the blob is stored, or None."""
        found = self._pending.get(blob_id)
        small = self._small
        if found is None and small is not None:
            number = small[0].get(blob_id)
            if number is not None:
                found = _record(small, number)
        if found is None:
            arrays = self._sorted
            if arrays is None or not len(arrays[0]):
                return None  # a small or new index: the dict is all there is
            from safehold.repo import index_arrays

            found = index_arrays.find(arrays, blob_id)
            if found is None:
                return None
        number, offset, length, raw_length, blob_type = found
        return Location(self._pack(number), offset, length, raw_length, blob_type)

    def __contains__(self, blob_id: bytes) -> bool:
        return self.lookup(blob_id) is not None

    def __len__(self) -> int:
        return self._sorted_count() + len(self._pending) + self._small_count()

    def nbytes(self) -> int:
        """Bytes held by the sorted arrays and the pack table (entries in the dict aside)."""
        if self._sorted is None:
            return len(self._pack_table)
        from safehold.repo import index_arrays

        return index_arrays.nbytes(self._sorted) + len(self._pack_table)

    def entries(self) -> Iterator[tuple[bytes, Location]]:
        """Yield every (blob id, location); slow per entry, meant for check and tests."""
        with self._lock:
            pending, arrays, small = dict(self._pending), self._sorted, self._small
        items: Iterator = iter(pending.items())
        if small is not None:
            items = _chain(
                items,
                (
                    (blob_id, _record(small, number))
                    for blob_id, number in small[0].items()
                    if blob_id not in pending
                ),
            )
        if arrays is not None:
            from safehold.repo import index_arrays

            items = _chain(index_arrays.iterate(arrays), items)
        for blob_id, (number, offset, length, raw_length, blob_type) in items:
            yield blob_id, Location(self._pack(number), offset, length, raw_length, blob_type)


def _record(small: Small, number: int) -> tuple[int, int, int, int, int]:
    """Record ``number`` of a small index as loaded, its pack numbered in the index."""
    _loaded, records, bounds, tables = small
    table = tables[bisect_right(bounds, number) - 1]
    _id, pack, offset, length, raw_length, blob_type = INDEX_RECORD.unpack_from(
        records, number * INDEX_RECORD.size
    )
    return table[pack], offset, length, raw_length, blob_type


def _chain(*parts: Iterator) -> Iterator:
    for part in parts:
        yield from part


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
