"""The numpy half of the blob index (safehold/repo/index.py): sorted arrays of fixed-size
records, used once an index holds more than ``SMALL_INDEX`` entries.

The arrays are cut by key range into segments of about ``SEGMENT`` entries (a ``Base``:
the first key of each segment and the segments). A segment is two arrays: a contiguous native
uint64 key (the first 8 bytes of the id, read big-endian) for binary search, and a packed
record of the rest (24 id bytes, pack number, offset, lengths, type): 49 bytes per blob.
Entries with the same key never straddle two segments, so a lookup bisects the list of first
keys, then one segment. Merging new entries rebuilds one segment at a time, publishing each, so
that a merge never holds a second copy of the whole index (the peak is one segment more).
Entries added since the segments were last rebuilt wait in a delta, one sorted run of the same
layout (``merge_run``), so that the segments are rebuilt only once every 1/8 of the index.
Segments live in anonymous mappings of their own: a replaced one goes back to the system at
once, instead of leaving a hole of a few MB in the heap that the allocator keeps (merges free
segments all the time; in the heap, that doubled the resident memory of an index built by adding).

Imported on first use, so a command that needs no large index never loads numpy.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from safehold.repo.format import INDEX_RECORD

# What an index-file record (INDEX_RECORD) holds after the blob id: where the blob is.
LOCATION_FIELDS = [
    ("pack", "<u4"),
    ("offset", "<u4"),
    ("length", "<u4"),
    ("raw", "<u4"),
    ("type", "u1"),
]
RECORD_DTYPE = np.dtype([("rest", "V24"), *LOCATION_FIELDS], align=False)
FILE_DTYPE = np.dtype([("id", "V32"), *LOCATION_FIELDS], align=False)
LOCATION_DTYPE = np.dtype(LOCATION_FIELDS, align=False)
assert FILE_DTYPE.itemsize == INDEX_RECORD.size
# A record as bytes, for lookups without numpy scalars: 24 id bytes, then the location.
RECORD = struct.Struct("<24sIIIIB")
assert RECORD.size == RECORD_DTYPE.itemsize
RAW_RECORD = np.dtype(f"V{RECORD_DTYPE.itemsize}")  # a record as plain bytes, to copy

# Private, and filled in at once (on Linux): faulting the pages in one by one as they are
# written took twice as long, and merges write every segment anew.
MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)

LOAD_BATCH = 8 << 20  # bytes of index-file records copied into the arrays at a time
SEGMENT = 1 << 16  # entries a segment is cut to (about 3 MiB); split past twice that


class Segment(NamedTuple):
    """Sorted keys and records, with flat views of both for lookups from Python."""

    keys: np.ndarray
    records: np.ndarray
    key_view: memoryview  # the keys as unsigned 64-bit integers
    record_view: memoryview  # the records as bytes


class Base(NamedTuple):
    """The sorted arrays: segment i holds the keys from ``firsts[i]`` up to ``firsts[i+1]``."""

    firsts: list[int]  # firsts[0] is 0: every key has a segment
    segments: list[Segment]
    count: int


def mapped(count: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialised array in an anonymous mapping of its own, unmapped when freed."""
    if not count:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, count * dtype.itemsize, flags=MAP_FLAGS), dtype=dtype)


def mapped_copy(array: np.ndarray) -> np.ndarray:
    copy = mapped(len(array), array.dtype)
    if array.dtype == RECORD_DTYPE:
        copy.view(RAW_RECORD)[...] = array.view(RAW_RECORD)
    else:
        copy[...] = array
    return copy


def segment(keys: np.ndarray, records: np.ndarray) -> Segment:
    """A segment of sorted arrays that are mapped (``mapped``) and contiguous."""
    return Segment(
        keys,
        records,
        memoryview(keys.view(np.uint8)).cast("Q"),
        memoryview(records.view(np.uint8)),
    )


def largest_pack_number(records: bytes) -> int:
    """The largest pack number of index-file records (a whole number of them, at least one)."""
    return int(np.frombuffer(records, dtype=FILE_DTYPE)["pack"].max())


def from_files(files: list[tuple[list[bytes], bytes]], numbers: list[list[int]]) -> Base:
    """The segments of the records of index files; ``numbers[i][j]`` is the index's number
    of pack j of file i. Of two records of one blob, the one read first comes first.

    The records are copied into unsorted arrays a batch of files at a time, and each file's
    records are let go (``files[i]`` replaced) once copied, so that the records and the arrays
    are never both whole in memory; the arrays are mapped (``mapped``), returned to the system
    when freed."""
    total = sum(len(records) for _, records in files) // FILE_DTYPE.itemsize
    keys, records = mapped(total, np.dtype("<u8")), mapped(total, RECORD_DTYPE)
    done = first = size = 0
    for number, file in enumerate(files):
        size += len(file[1])
        if size >= LOAD_BATCH or number == len(files) - 1:
            batch = files[first : number + 1]
            # The records go, the pack tables stay: many small objects freed in the middle
            # of a load would leave Python's allocator arenas that later objects pin.
            files[first : number + 1] = [(packs, b"") for packs, _ in batch]
            done = _copy_files(batch, numbers[first : number + 1], keys, records, done)
            del batch
            release_freed_memory()  # the records were in the heap
            first, size = number + 1, 0
    return from_unsorted(keys, records)


def _copy_files(
    files: list, numbers: list[list[int]], keys: np.ndarray, records: np.ndarray, done: int
) -> int:
    """Copy the records of ``files`` into ``keys`` and ``records`` from entry ``done`` on, pack
    numbers mapped through ``numbers``; return the entry after the last one copied."""
    raw = np.frombuffer(b"".join(data for _, data in files), dtype=FILE_DTYPE)
    table = np.concatenate(
        [np.array(file_numbers, dtype="<u4") for file_numbers in numbers]
        + [np.empty(0, dtype="<u4")]
    )
    bases = np.cumsum([0] + [len(packs) for packs, _ in files[:-1]], dtype=np.int64)
    counts = [len(data) // FILE_DTYPE.itemsize for _, data in files]
    local = raw["pack"].astype(np.int64) + np.repeat(bases, counts)
    end = done + len(raw)
    _split(raw.view(np.uint8).reshape(-1, FILE_DTYPE.itemsize), keys[done:end], records[done:end])
    part = records[done:end]
    part["pack"] = table[local] if len(table) else 0
    for field in ("offset", "length", "raw", "type"):
        part[field] = raw[field]
    return end


def from_unsorted(keys: np.ndarray, records: np.ndarray) -> Base:
    """A base of unsorted arrays (stable: of equal keys, the earlier first), built one segment
    at a time from the unsorted arrays, so that no sorted copy of the whole exists (``keys``
    is sorted in place)."""
    order = np.argsort(keys, kind="stable")
    keys.sort()
    firsts, segments = [0], []
    for start, end in _cuts(keys, SEGMENT):
        if segments:
            firsts.append(int(keys[start]))
        part_records = mapped(end - start, RECORD_DTYPE)
        np.take(records.view(RAW_RECORD), order[start:end], out=part_records.view(RAW_RECORD))
        segments.append(segment(mapped_copy(keys[start:end]), part_records))
    return Base(firsts, segments, len(keys))


def from_pending(ids: bytes, locations: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (keys, records) of pending entries: ``ids`` are 32-byte ids back to back,
    ``locations`` their packed locations (pack, offset, length, raw, type) in the same order;
    ids are distinct."""
    keys, records = _split(np.frombuffer(ids, dtype=np.uint8).reshape(-1, 32))
    located = np.frombuffer(locations, dtype=LOCATION_DTYPE)
    for field, _ in LOCATION_FIELDS:
        records[field] = located[field]
    order = np.argsort(keys, kind="stable")
    return keys[order], records.view(RAW_RECORD)[order].view(RECORD_DTYPE)


def merge(
    firsts: list[int],
    segments: list[Segment],
    count: int,
    keys: np.ndarray,
    records: np.ndarray,
    newer: bool,
    publish: Callable[[Base], None],
) -> Base:
    """Merge sorted (keys, records) into the base of ``firsts``, ``segments`` and ``count``
    (lists that this changes: pass copies), one segment at a time: each rebuilt segment is
    passed to ``publish`` as part of a new Base before the next one is built, and the old one
    is let go (a Base already published is never changed, so its readers are not disturbed).
    ``newer``: of two records of one blob, the added one comes first (is found), else the one
    already in the base."""
    if not len(keys):
        return Base(firsts, segments, count)
    if not segments:
        result = _with_cuts([0], [], mapped_copy(keys), mapped_copy(records))
        publish(result)
        return result
    side = "left" if newer else "right"
    bounds = np.searchsorted(keys, np.array(firsts[1:], dtype=np.uint64), side="left")
    starts = [0, *bounds.tolist()]
    ends = [*bounds.tolist(), len(keys)]
    # From the last segment to the first, so that the positions still to do do not move.
    for number in range(len(segments) - 1, -1, -1):
        start, end = starts[number], ends[number]
        if start == end:
            continue
        old = segments[number]
        positions = np.searchsorted(old.keys, keys[start:end], side=side)
        merged_keys, merged_records = _insert(old, positions, keys[start:end], records[start:end])
        del old, positions
        pieces = _with_cuts([firsts[number]], [], merged_keys, merged_records, limit=2 * SEGMENT)
        del merged_keys, merged_records
        firsts[number : number + 1] = pieces.firsts
        segments[number : number + 1] = pieces.segments
        count += end - start
        publish(Base(list(firsts), list(segments), count))
    return Base(firsts, segments, count)


def find(base: Base, key: int, rest: bytes) -> tuple[int, int, int, int, int] | None:
    """(pack number, offset, length, raw length, type) of the blob whose id is ``key`` (its
    first 8 bytes read big-endian) and ``rest`` (the other 24), or None."""
    if not base.segments:
        return None
    return find_in(base.segments[bisect_right(base.firsts, key) - 1], key, rest)


def find_in(found: Segment, key: int, rest: bytes) -> tuple[int, int, int, int, int] | None:
    """``find`` in one segment (or run)."""
    keys, view = found.key_view, found.record_view
    position = bisect_left(keys, key)
    while position < len(keys) and keys[position] == key:
        record = RECORD.unpack_from(view, position * RECORD.size)
        if record[0] == rest:
            return record[1:]
        position += 1
    return None


def position_in(found: Segment, key: int, rest: bytes) -> int | None:
    """The position in one segment of the blob whose id is ``key`` and ``rest``, or None."""
    keys, view = found.key_view, found.record_view
    position = bisect_left(keys, key)
    while position < len(keys) and keys[position] == key:
        if view[position * RECORD.size : position * RECORD.size + 24] == rest:
            return position
        position += 1
    return None


def merge_run(
    run: Segment | None, keys: np.ndarray, records: np.ndarray, newer: bool = True
) -> Segment:
    """A new run (one sorted segment of any length, mapped): ``run``'s entries and the sorted
    (keys, records), the added ones first among equal keys if ``newer``."""
    if run is None or not len(run.keys):
        return segment(mapped_copy(keys), mapped_copy(records))
    positions = np.searchsorted(run.keys, keys, side="left" if newer else "right")
    return segment(*_insert(run, positions, keys, records))


def iterate(base: Base) -> Iterator[tuple[bytes, tuple[int, int, int, int, int]]]:
    """Every (blob id, (pack number, offset, length, raw length, type)), in key order."""
    for found in base.segments:
        for number, key in enumerate(found.key_view):
            rest, *location = RECORD.unpack_from(found.record_view, number * RECORD.size)
            yield key.to_bytes(8, "big") + rest, tuple(location)  # type: ignore[misc]


def nbytes(base: Base) -> int:
    return sum(found.keys.nbytes + found.records.nbytes for found in base.segments)


def release_freed_memory() -> None:
    """Ask glibc to give freed heap memory back to the system (loading frees a lot at once)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def _with_cuts(
    firsts: list[int],
    segments: list[Segment],
    keys: np.ndarray,
    records: np.ndarray,
    limit: int | None = None,
) -> Base:
    """Append sorted (keys, records) to ``segments``, cut into segments of about SEGMENT
    entries when longer than ``limit`` (default SEGMENT; each piece a copy, so that the whole
    can be freed)."""
    if len(keys) <= (SEGMENT if limit is None else limit):
        segments.append(segment(keys, records))
        return Base(firsts, segments, len(keys))
    for start, end in _cuts(keys, SEGMENT):
        if segments:
            firsts.append(int(keys[start]))
        segments.append(segment(mapped_copy(keys[start:end]), mapped_copy(records[start:end])))
    return Base(firsts, segments, len(keys))


def _insert(
    old: Segment, positions: np.ndarray, keys: np.ndarray, records: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """New mapped arrays: ``old``'s with ``keys`` and ``records`` inserted before the entries
    at ``positions`` (nondecreasing), as ``np.insert`` does."""
    total = len(old.keys) + len(keys)
    targets = positions + np.arange(len(keys))
    rest = np.ones(total, dtype=bool)
    rest[targets] = False
    merged_keys, merged_records = mapped(total, old.keys.dtype), mapped(total, RECORD_DTYPE)
    merged_keys[targets] = keys
    merged_keys[rest] = old.keys
    # As plain 41-byte items: numpy copies those 15 times faster than structured ones.
    flat = merged_records.view(RAW_RECORD)
    flat[targets] = records.view(RAW_RECORD)
    flat[rest] = old.records.view(RAW_RECORD)
    return merged_keys, merged_records


def _cuts(keys: np.ndarray, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of pieces of sorted keys, never between equal keys: as many pieces as
    ``size`` fits in the whole (at least one), of equal length (so from ``size`` to twice
    that, no small remainder)."""
    start, total = 0, len(keys)
    step = -(-total // max(1, total // size))
    while start < total:
        end = start + step
        if end >= total:
            end = total
        elif keys[end] == keys[end - 1]:
            # Move the cut past the run of equal keys (ids sharing their first 8 bytes).
            end = int(np.searchsorted(keys, keys[end], side="right"))
        yield start, end
        start = end


def _split(
    rows: np.ndarray, keys: np.ndarray | None = None, records: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Given rows of bytes starting with 32-byte ids, return (native uint64 keys of the first
    8 id bytes read big-endian, records with the other 24 id bytes filled in), written into
    ``keys`` and ``records`` if given."""
    if keys is None or records is None:
        keys, records = np.empty(len(rows), dtype="<u8"), np.empty(len(rows), dtype=RECORD_DTYPE)
    keys[...] = np.ascontiguousarray(rows[:, :8]).view(">u8").ravel()
    records["rest"] = np.ascontiguousarray(rows[:, 8:32]).view("V24").ravel()
    return keys, records


class PackKeys(NamedTuple):
    """The first packs of a pack table sorted by the first 8 bytes of their ids, as integers:
    sorted keys and the pack numbers in that order, with flat views for ``bisect``."""

    keys: np.ndarray
    numbers: np.ndarray
    key_view: memoryview
    number_view: memoryview


def pack_keys(table: bytes | bytearray, previous: PackKeys | None) -> PackKeys:
    """PackKeys of every pack of ``table`` (32-byte ids back to back): those of ``previous``
    (the first ones) with the packs after them merged in."""
    start = 0 if previous is None else len(previous.keys)
    ids = np.frombuffer(table, dtype=np.uint8, offset=32 * start).reshape(-1, 32)
    keys = np.ascontiguousarray(ids[:, :8]).view(">u8").ravel().astype("<u8")
    del ids  # (a view of the table, which cannot grow while it exists)
    order = np.argsort(keys, kind="stable")
    keys, numbers = keys[order], (order + start).astype("<u4")
    if previous is not None and len(previous.keys):
        positions = np.searchsorted(previous.keys, keys, side="right")
        keys = np.insert(previous.keys, positions, keys)
        numbers = np.insert(previous.numbers, positions, numbers)
    return PackKeys(
        keys,
        numbers,
        memoryview(keys.view(np.uint8)).cast("Q"),
        memoryview(numbers.view(np.uint8)).cast("I"),
    )
