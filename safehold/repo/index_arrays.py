"""The numpy half of the blob index (safehold/repo/index.py): sorted arrays of fixed-size
records, used once an index holds more than ``SMALL_INDEX`` entries.

Two arrays, swapped as one tuple: a contiguous native uint64 key (the first 8 bytes of the id,
read big-endian) for binary search, and a packed record of the rest (24 id bytes, pack number,
offset, lengths, type): 49 bytes per blob. Imported on first use, so a command that needs no
large index never loads numpy.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

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
assert FILE_DTYPE.itemsize == INDEX_RECORD.size

Sorted = tuple[np.ndarray, np.ndarray]  # (keys, records), sorted by key


def from_files(files: list[tuple[list[bytes], bytes]], numbers: list[list[int]]) -> Sorted:
    """Sorted arrays of the records of index files; ``numbers[i][j]`` is the index's number
    of pack j of file i. All records are joined into one buffer first: one large allocation
    that is returned to the system when freed, instead of many small ones that would
    fragment the heap."""
    raw = np.frombuffer(b"".join(records for _, records in files), dtype=FILE_DTYPE)
    table = np.concatenate(
        [np.array(file_numbers, dtype="<u4") for file_numbers in numbers]
        + [np.empty(0, dtype="<u4")]
    )
    bases = np.cumsum([0] + [len(packs) for packs, _ in files[:-1]], dtype=np.int64)
    counts = [len(records) // FILE_DTYPE.itemsize for _, records in files]
    local = raw["pack"].astype(np.int64) + np.repeat(bases, counts)
    keys, records = _split(raw.view(np.uint8).reshape(-1, FILE_DTYPE.itemsize))
    records["pack"] = table[local] if len(table) else 0
    for field in ("offset", "length", "raw", "type"):
        records[field] = raw[field]
    return keys, records


def from_pending(pending: dict[bytes, tuple[int, int, int, int, int]]) -> Sorted:
    """Unsorted arrays of the entries of a dict blob id -> (pack, offset, length, raw, type)."""
    ids = np.frombuffer(b"".join(pending), dtype=np.uint8).reshape(-1, 32)
    keys, records = _split(ids)
    values = np.array(list(pending.values()), dtype="<u8").reshape(-1, 5)
    for column, field in enumerate(("pack", "offset", "length", "raw", "type")):
        records[field] = values[:, column]
    return keys, records


def merge(current: Sorted | None, added: Sorted) -> Sorted:
    """``current`` and ``added`` as one sorted pair (new arrays; ``current`` is unchanged)."""
    keys, records = added
    if current is not None and len(current[0]):
        keys = np.concatenate([current[0], keys])
        records = np.concatenate([current[1], records])
    order = np.argsort(keys, kind="stable")
    return keys[order], records[order]


def find(arrays: Sorted, blob_id: bytes) -> tuple[int, int, int, int, int] | None:
    """(pack number, offset, length, raw length, type) of a blob, or None."""
    keys, records = arrays
    key = int.from_bytes(blob_id[:8], "big")
    position = int(np.searchsorted(keys, np.uint64(key)))
    rest = blob_id[8:]
    while position < len(keys) and int(keys[position]) == key:
        record = records[position]
        if record["rest"].tobytes() == rest:
            return (
                int(record["pack"]),
                int(record["offset"]),
                int(record["length"]),
                int(record["raw"]),
                int(record["type"]),
            )
        position += 1
    return None


def iterate(arrays: Sorted) -> Iterator[tuple[bytes, tuple[int, int, int, int, int]]]:
    """Every (blob id, (pack number, offset, length, raw length, type)), in key order."""
    for key, record in zip(*arrays, strict=True):
        blob_id = int(key).to_bytes(8, "big") + record["rest"].tobytes()
        values = (record["pack"], record["offset"], record["length"], record["raw"])
        yield blob_id, (*(int(value) for value in values), int(record["type"]))


def nbytes(arrays: Sorted) -> int:
    return int(arrays[0].nbytes + arrays[1].nbytes)


def release_freed_memory() -> None:
    """Ask glibc to give freed heap memory back to the system (loading frees a lot at once)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def _split(rows: np.ndarray) -> Sorted:
    """Given rows of bytes starting with 32-byte ids, return (native uint64 keys of the first
    8 id bytes read big-endian, records with the other 24 id bytes filled in)."""
    keys = np.ascontiguousarray(rows[:, :8]).view(">u8").ravel().astype("<u8")
    records = np.empty(len(rows), dtype=RECORD_DTYPE)
    records["rest"] = np.ascontiguousarray(rows[:, 8:32]).view("V24").ravel()
    return keys, records
