"""The in-memory blob index: blob id -> (pack, offset, length, plaintext length, type).

Compact by design (docs/format.md, "Index in memory"): a large index lives in sorted numpy
arrays cut into segments by key range (``safehold/repo/index_arrays.py``: 49 bytes per blob
plus 32 bytes per pack). An index of at most ``SMALL_INDEX`` blobs is loaded into a dict of
blob id -> record number (the records stay as read, decoded on lookup); entries added during
a session sit in a dict of blob id -> packed location of their own, which is merged into the
arrays when it grows past ``MERGE_THRESHOLD``: a small repository (and a backup that only
adds a few trees) never loads numpy. After that, the dict is merged into the delta (a sorted
run of the entries added since the segments were last rebuilt) at 1/128 of the index, the
delta into the segments at 1/8.
"""

from __future__ import annotations

import struct
import sys
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from safehold.repo.format import INDEX_RECORD

if TYPE_CHECKING:
    from safehold.repo.index_arrays import Base, PackKeys, Segment

# A small index as loaded: (blob id -> record number, records, first record of each file,
# pack numbers of each file's pack table).
Small = tuple[dict[bytes, int], bytes, list[int], list[list[int]]]

MERGE_THRESHOLD = 65536  # entries the dicts hold before the first merge into arrays
SMALL_INDEX = MERGE_THRESHOLD  # loaded indexes up to this many blobs stay in the dict
# Once there are arrays, entries added wait in the dict (~190 bytes each) until they are
# 1/128 of the index, then go into the delta, a sorted run of its own (49 bytes each, copied
# whole by each of these merges), which goes into the segments (all of them rebuilt, one at a
# time) when it is 1/8 of the index; never fewer than MERGE_MINIMUM entries at once.
PENDING_SHARE = 128
DELTA_SHARE = 8
MERGE_MINIMUM = 16384
# Where a blob added in this session is: pack number, offset, length, raw length, type (the
# layout of an index record after the id, and of index_arrays.LOCATION_FIELDS).
LOCATION = struct.Struct("<IIIIB")


class Location(NamedTuple):
    pack_id: bytes
    offset: int
    length: int
    raw_length: int
    blob_type: int


class Index:
    """Blob id -> Location. ``lookup`` and ``add`` are thread-safe."""

    def __init__(self) -> None:
        # Pack ids, 32 bytes each, numbered by position. Which number a pack id has: the
        # dict knows the packs numbered since the table was last sorted into ``_pack_keys``
        # (the first 8 bytes of each id, as sorted integers, and the numbers in that order),
        # so that a pack costs ~44 bytes rather than a dict entry's ~170.
        self._pack_table = bytearray()
        self._pack_numbers: dict[bytes, int] = {}
        self._pack_keys: PackKeys | None = None
        # The sorted arrays (index_arrays.Base), replaced as one reference so that a lookup
        # never sees one part without the other; None until the index is too large for the
        # dicts alone. Entries added since they were last rebuilt: the delta, one sorted run
        # (an index_arrays.Segment), or None.
        self._sorted: Base | None = None
        self._delta: Segment | None = None
        self._files: list[tuple[list[bytes], bytes]] = []
        # Entries added: blob id -> LOCATION-packed location (~190 bytes an entry).
        self._pending: dict[bytes, bytes] = {}
        # A small index as loaded: blob id -> number of its record in ``records`` (the
        # index files' records, back to back; the records of file k start at record
        # ``bounds[k]`` and number its packs by ``tables[k]``). Building this dict is a few
        # C-level steps per blob, a third of the time of a dict of decoded tuples; a record is
        # decoded when it is looked up.
        # Swapped as one tuple (loaded, records, bounds, tables), like the arrays.
        self._small: Small | None = None
        self._lock = threading.Lock()
        # For ``ordinal``: the arrays it numbered, and the number of each segment's first entry.
        self._ordinal_starts: tuple[Base, list[int]] | None = None

    @property
    def packs(self) -> list[bytes]:
        """Every pack id the index knows, each once."""
        table = self._pack_table
        return [bytes(table[start : start + 32]) for start in range(0, len(table), 32)]

    def _pack(self, number: int) -> bytes:
        return bytes(self._pack_table[32 * number : 32 * number + 32])

    def pack_number(self, pack_id: bytes, numbers: dict[bytes, int] | None = None) -> int:
        """The number of a pack in the table, appending it if neither ``numbers`` nor the
        index (by default) knows it."""
        if numbers is None:
            numbers = self._pack_numbers
            number = numbers.get(pack_id)
            if number is None:
                number = self._sorted_pack_number(pack_id)
        else:
            number = numbers.get(pack_id)
        if number is None:
            number = numbers[pack_id] = len(self._pack_table) // 32
            self._pack_table += pack_id
        return number

    def _sorted_pack_number(self, pack_id: bytes) -> int | None:
        if self._pack_keys is None:
            return None
        keys, numbers = self._pack_keys.key_view, self._pack_keys.number_view
        key = int.from_bytes(pack_id[:8], "big")
        position = bisect_left(keys, key)
        while position < len(keys) and keys[position] == key:
            number = numbers[position]
            if self._pack(number) == pack_id:
                return number
            position += 1
        return None

    def _sort_packs(self) -> None:
        """Merge the packs numbered since the last call into ``_pack_keys`` and empty the dict
        (numpy: only when the index is in the arrays anyway)."""
        from safehold.repo import index_arrays

        self._pack_keys = index_arrays.pack_keys(self._pack_table, self._pack_keys)
        self._pack_numbers = {}

    def _sorted_count(self) -> int:
        return 0 if self._sorted is None else self._sorted.count

    def load_file(self, packs: list[bytes], records: bytes) -> None:
        """Queue the records of one index file; call ``finish_loading`` after the last."""
        self._files.append((packs, records))

    def finish_loading(self) -> None:
        """Merge the queued index files into the index, in one pass: into the dict while the
        whole index stays small, else into the sorted arrays."""
        files, self._files = self._files, []
        if not files:
            return
        count = sum(len(records) for _, records in files) // INDEX_RECORD.size
        with self._lock:
            known = {self._pack(n): n for n in range(len(self._pack_table) // 32)}
            numbers = [[self.pack_number(p, known) for p in packs] for packs, _ in files]
            if self._sorted is None and self._small is None and not self._pending:
                if count <= SMALL_INDEX:
                    self._load_small(files, numbers)
                    self._pack_numbers = known  # every pack: a small table
                    return
            elif self._sorted is None and len(self) + count <= SMALL_INDEX:
                loaded = self._small[0] if self._small is not None else {}
                for (_packs, records), table in zip(files, numbers, strict=True):
                    for blob_id, pack, *rest in INDEX_RECORD.iter_unpack(records):
                        if blob_id not in loaded and blob_id not in self._pending:
                            self._pending[blob_id] = LOCATION.pack(table[pack], *rest)
                self._pack_numbers = known
                return
            del known
            self._sort_packs()
        from safehold.repo import index_arrays

        loaded = index_arrays.from_files(files, numbers)
        del files
        index_arrays.release_freed_memory()
        with self._lock:
            if self._sorted is None or not self._sorted.count:
                self._sorted = loaded
            else:  # after adding: what was added first stays first
                for part in loaded.segments:
                    self._sorted = index_arrays.merge(
                        *self._sorted_parts(), part.keys, part.records, False, self._publish
                    )
            del loaded
        index_arrays.release_freed_memory()

    def _publish(self, arrays: Base) -> None:
        self._sorted = arrays

    def _sorted_parts(self) -> tuple[list, list, int]:
        """Copies of the lists of the sorted arrays, for ``index_arrays.merge`` to change."""
        if self._sorted is None:
            return [0], [], 0
        return list(self._sorted.firsts), list(self._sorted.segments), self._sorted.count

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
        """Record a blob just written to a pack (a blob added twice is found where it was
        added last)."""
        with self._lock:
            self._pending[blob_id] = LOCATION.pack(
                self.pack_number(pack_id), offset, length, raw_length, blob_type
            )
            dicts = len(self._pending) + self._small_count()
            if self._sorted is None:
                limit = MERGE_THRESHOLD  # numpy only for an index that grows this large
            else:
                limit = max(MERGE_MINIMUM, self._sorted_count() // PENDING_SHARE)
            if dicts >= limit:
                self._merge_pending()

    def _merge_pending(self) -> None:
        # Called with the lock held. Lookups read _pending (and _small) first, then _delta,
        # then _sorted. Entries only move in that direction, and each step publishes where
        # they go before it lets go of where they were: the new delta before the dicts are
        # emptied; each rebuilt segment (with the entries it took) before the next, and the
        # delta is dropped after the last one. So an entry is always in one of them.
        from safehold.repo import index_arrays

        small, pending = self._small, self._pending
        if small is not None:  # the small index as loaded joins the arrays too
            loaded = {
                blob_id: LOCATION.pack(*_record(small, number))
                for blob_id, number in small[0].items()
            }
            pending = {**loaded, **pending}
            del loaded
        keys, records = index_arrays.from_pending(b"".join(pending), b"".join(pending.values()))
        del pending
        if self._sorted is None:  # the first merge: straight into segments
            self._sorted = index_arrays.merge([0], [], 0, keys, records, True, self._publish)
        else:
            self._delta = index_arrays.merge_run(self._delta, keys, records)
        del keys, records
        self._pending = {}
        self._small = None
        delta = self._delta
        if delta is not None and len(delta.keys) >= max(
            MERGE_MINIMUM, self._sorted_count() // DELTA_SHARE
        ):
            self._sorted = index_arrays.merge(
                *self._sorted_parts(), delta.keys, delta.records, True, self._publish
            )
            self._delta = None
        del delta
        self._sort_packs()
        index_arrays.release_freed_memory()

    def lookup(self, blob_id: bytes) -> Location | None:
        """Return where the blob is stored, or None."""
        packed = self._pending.get(blob_id)
        if packed is not None:
            found: tuple[int, int, int, int, int] | None = LOCATION.unpack(packed)
        else:
            found = None
            small = self._small
            if small is not None:
                number = small[0].get(blob_id)
                if number is not None:
                    found = _record(small, number)
        if found is None:
            delta = self._delta  # (before _sorted: see _merge_pending)
            arrays = self._sorted
            if delta is None and (arrays is None or not arrays.count):
                return None  # a small or new index: the dicts are all there is
            # (numpy only once an index needs it; this form of import skips importlib's
            # Python-level fromlist handling, which cost ~2 us a lookup: a restore looks up
            # every blob)
            import safehold.repo.index_arrays as index_arrays

            key, rest = int.from_bytes(blob_id[:8], "big"), blob_id[8:]
            if delta is not None:
                found = index_arrays.find_in(delta, key, rest)
            if found is None and arrays is not None:
                found = index_arrays.find(arrays, key, rest)
            if found is None:
                return None
        number, offset, length, raw_length, blob_type = found
        return Location(self._pack(number), offset, length, raw_length, blob_type)

    def ordinal_count(self) -> int:
        """How many numbers ``ordinal`` may give (0 <= number < this)."""
        small = 0 if self._small is None else len(self._small[1]) // INDEX_RECORD.size
        return small + self._sorted_count()

    def ordinal(self, blob_id: bytes) -> int | None:
        """A number for a blob of the index as loaded, below ``ordinal_count()``: each blob
        its own, the same as long as no entry is added or loaded (a number for an array of
        something per blob, without its id: ``ops/copy.IdMap``). None for a blob added in this
        session, or not in the index."""
        if blob_id in self._pending:
            return None
        small = self._small
        if small is not None:
            number = small[0].get(blob_id)
            if number is not None:
                return number
        arrays = self._sorted
        if arrays is None or not arrays.count:
            return None
        from safehold.repo import index_arrays

        starts = self._ordinal_starts
        if starts is None or starts[0] is not arrays:
            offset = 0 if small is None else len(small[1]) // INDEX_RECORD.size
            numbers = [offset]
            for part in arrays.segments:
                numbers.append(numbers[-1] + len(part.keys))
            starts = self._ordinal_starts = (arrays, numbers)
        key, rest = int.from_bytes(blob_id[:8], "big"), blob_id[8:]
        number = bisect_right(arrays.firsts, key) - 1
        position = index_arrays.position_in(arrays.segments[number], key, rest)
        return None if position is None else starts[1][number] + position

    def __contains__(self, blob_id: bytes) -> bool:
        return self.lookup(blob_id) is not None

    def __len__(self) -> int:
        delta = 0 if self._delta is None else len(self._delta.keys)
        return self._sorted_count() + delta + len(self._pending) + self._small_count()

    def nbytes(self) -> int:
        """Bytes held by the sorted arrays and the pack table with its sorted keys (entries in
        the dicts aside)."""
        size = len(self._pack_table)
        if self._pack_keys is not None:
            size += self._pack_keys.keys.nbytes + self._pack_keys.numbers.nbytes
        if self._delta is not None:
            size += self._delta.keys.nbytes + self._delta.records.nbytes
        if self._sorted is None:
            return size
        from safehold.repo import index_arrays

        return index_arrays.nbytes(self._sorted) + size

    def entries(self) -> Iterator[tuple[bytes, Location]]:
        """Yield every (blob id, location); slow per entry, meant for check and tests."""
        with self._lock:
            pending, arrays, small = dict(self._pending), self._sorted, self._small
            delta = self._delta
        items: Iterator = (
            (blob_id, LOCATION.unpack(packed)) for blob_id, packed in pending.items()
        )
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
            if delta is not None:
                runs = index_arrays.Base([0], [delta], len(delta.keys))
                items = _chain(index_arrays.iterate(runs), items)
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


def index_file_problem(content: object) -> str | None:
    """None if ``content`` (an index file that authenticates) is an index file every reader can
    load as it is, else what is wrong with it: a file written by someone holding the key is
    checked, not trusted (docs/format.md, "Index files"). Cheap: a few C-level passes over the
    records (numpy for a file larger than ``SMALL_INDEX`` records, which an index of numpy
    arrays holds anyway)."""
    if not isinstance(content, dict):
        return "not an index file"
    packs, records = content.get("packs"), content.get("records")
    if not isinstance(packs, list) or not all(
        isinstance(pack, bytes) and len(pack) == 32 for pack in packs
    ):
        return "a pack table that is not a list of 32-byte pack ids"
    if not isinstance(records, bytes):
        return "records that are not bytes"
    if len(records) % INDEX_RECORD.size:
        return f"records of {len(records)} bytes, not a multiple of {INDEX_RECORD.size}"
    if records:
        largest = _largest_pack_number(records)
        if largest >= len(packs):
            return f"a record naming pack number {largest} of a pack table of {len(packs)}"
    return None


PACK_FIELD = 32  # where an index record's pack number (u32 LE) starts: after the blob id


def _largest_pack_number(records: bytes) -> int:
    """The largest pack number of the records of an index file (a whole number of records)."""
    count = len(records) // INDEX_RECORD.size
    if count > SMALL_INDEX:
        from safehold.repo import index_arrays

        return index_arrays.largest_pack_number(records)
    # The four bytes of each pack number, gathered by strided slices into native u32s.
    numbers = bytearray(4 * count)
    order = range(4) if sys.byteorder == "little" else range(3, -1, -1)
    for position, byte in enumerate(order):
        numbers[position::4] = records[PACK_FIELD + byte :: INDEX_RECORD.size]
    return max(memoryview(numbers).cast("I"))
