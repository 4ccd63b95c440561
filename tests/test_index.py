"""safehold.repo.index.Index: add, lookup, merging, loading index files."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from safehold.repo import index as index_module
from safehold.repo.format import BLOB_DATA, BLOB_TREE
from safehold.repo.index import Index, Location, encode_index_file

PACK_A, PACK_B, PACK_C = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32


def blob(number: int) -> bytes:
    return number.to_bytes(4, "big") * 8


def test_lookup_of_an_unknown_blob_is_none() -> None:
    assert Index().lookup(os.urandom(32)) is None
    assert len(Index()) == 0


def test_added_blob_is_found_before_any_merge() -> None:
    index = Index()
    index.add(blob(1), PACK_A, 100, 50, 40, BLOB_TREE)
    assert index.lookup(blob(1)) == Location(PACK_A, 100, 50, 40, BLOB_TREE)
    assert blob(1) in index and blob(2) not in index
    assert len(index) == 1


def test_merge_over_the_threshold_keeps_every_blob(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "MERGE_THRESHOLD", 4)
    index = Index()
    for number in range(11):
        index.add(
            blob(number),
            PACK_A if number % 2 else PACK_B,
            number * 10,
            10 + number,
            5 + number,
            BLOB_DATA,
        )
    assert len(index._pending) == 11 % 4  # two merges happened
    assert len(index) == 11
    for number in range(11):
        expected = Location(
            PACK_A if number % 2 else PACK_B, number * 10, 10 + number, 5 + number, BLOB_DATA
        )
        assert index.lookup(blob(number)) == expected
    assert index.lookup(blob(99)) is None


def test_ids_sharing_the_first_eight_bytes_are_told_apart(monkeypatch) -> None:
    monkeypatch.setattr(index_module, "MERGE_THRESHOLD", 2)
    index = Index()
    ids = [b"\x01" * 8 + bytes([n]) * 24 for n in (3, 1, 2)]
    for offset, blob_id in enumerate(ids):
        index.add(blob_id, PACK_A, offset, 1, 1, BLOB_DATA)
    assert len(index._pending) == 1
    assert [index.lookup(blob_id).offset for blob_id in ids] == [0, 1, 2]
    assert index.lookup(b"\x01" * 8 + b"\x09" * 24) is None


def test_entries_lists_pending_and_merged_blobs(monkeypatch) -> None:
    monkeypatch.setattr(index_module, "MERGE_THRESHOLD", 3)
    index = Index()
    for number in range(5):
        index.add(blob(number), PACK_C, number, 1, 1, BLOB_DATA)
    assert sorted(blob_id for blob_id, _ in index.entries()) == [blob(n) for n in range(5)]


@pytest.fixture(params=["dict", "arrays"])
def loading(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every loading test runs twice: a small index (kept in the dict) and one loaded into
    the sorted arrays, as an index of more than SMALL_INDEX blobs is."""
    if request.param == "arrays":
        monkeypatch.setattr(index_module, "SMALL_INDEX", 0)
    return request.param


def test_loaded_index_files_map_their_own_pack_tables(loading: str) -> None:
    first = encode_index_file(
        [(blob(1), PACK_A, 0, 10, 8, BLOB_DATA), (blob(2), PACK_B, 10, 20, 18, BLOB_TREE)]
    )
    second = encode_index_file(
        [(blob(3), PACK_B, 30, 5, 4, BLOB_DATA), (blob(4), PACK_C, 0, 7, 6, BLOB_DATA)]
    )
    assert first[0] == [PACK_A, PACK_B] and second[0] == [PACK_B, PACK_C]
    index = Index()
    index.load_file(*first)
    index.load_file(*second)
    assert len(index) == 0  # queued until finish_loading
    index.finish_loading()
    assert len(index) == 4
    assert index.packs == [PACK_A, PACK_B, PACK_C]
    assert index.lookup(blob(2)) == Location(PACK_B, 10, 20, 18, BLOB_TREE)
    assert index.lookup(blob(3)) == Location(PACK_B, 30, 5, 4, BLOB_DATA)
    assert index.lookup(blob(4)) == Location(PACK_C, 0, 7, 6, BLOB_DATA)
    assert index.lookup(blob(5)) is None
    assert (index._sorted is None) == (loading == "dict")
    assert sorted(index.entries()) == sorted(
        [
            (blob(1), Location(PACK_A, 0, 10, 8, BLOB_DATA)),
            (blob(2), Location(PACK_B, 10, 20, 18, BLOB_TREE)),
            (blob(3), Location(PACK_B, 30, 5, 4, BLOB_DATA)),
            (blob(4), Location(PACK_C, 0, 7, 6, BLOB_DATA)),
        ]
    )


def test_a_small_index_moves_into_the_arrays_when_it_grows(monkeypatch) -> None:
    monkeypatch.setattr(index_module, "MERGE_THRESHOLD", 8)
    monkeypatch.setattr(index_module, "SMALL_INDEX", 8)
    index = Index()
    index.load_file(*encode_index_file([(blob(n), PACK_A, n, 1, 1, BLOB_DATA) for n in range(5)]))
    index.finish_loading()
    assert index._sorted is None and len(index) == 5
    for number in range(5, 8):  # the eighth entry reaches MERGE_THRESHOLD
        index.add(blob(number), PACK_B, number, 2, 2, BLOB_TREE)
    assert index._sorted is not None and len(index._sorted[0]) == 8 and not index._pending
    assert index.lookup(blob(2)) == Location(PACK_A, 2, 1, 1, BLOB_DATA)
    assert index.lookup(blob(7)) == Location(PACK_B, 7, 2, 2, BLOB_TREE)
    # a later load that would overflow the dict goes into the arrays too
    index.load_file(*encode_index_file([(blob(20), PACK_C, 0, 3, 3, BLOB_DATA)]))
    index.finish_loading()
    assert len(index) == 9 and len(index._sorted[0]) == 9
    assert index.lookup(blob(20)) == Location(PACK_C, 0, 3, 3, BLOB_DATA)


def test_of_two_records_of_one_blob_the_first_loaded_is_kept(loading: str) -> None:
    """Two backups may store the same blob (concurrently): the first index file listing it
    wins, in both forms of the index; every other blob of the files is found."""
    index = Index()
    index.load_file(*encode_index_file([(blob(1), PACK_A, 0, 1, 1, BLOB_DATA)]))
    index.load_file(
        *encode_index_file(
            [(blob(2), PACK_C, 9, 9, 9, BLOB_TREE), (blob(1), PACK_B, 5, 6, 7, BLOB_DATA)]
        )
    )
    index.finish_loading()
    assert index.lookup(blob(1)) == Location(PACK_A, 0, 1, 1, BLOB_DATA)
    assert index.lookup(blob(2)) == Location(PACK_C, 9, 9, 9, BLOB_TREE)


def test_loading_after_adding_keeps_both(loading: str) -> None:
    index = Index()
    index.add(blob(7), PACK_A, 1, 2, 3, BLOB_DATA)
    index.load_file(*encode_index_file([(blob(8), PACK_B, 4, 5, 6, BLOB_TREE)]))
    index.finish_loading()
    assert index.lookup(blob(7)) == Location(PACK_A, 1, 2, 3, BLOB_DATA)
    assert index.lookup(blob(8)) == Location(PACK_B, 4, 5, 6, BLOB_TREE)


def test_empty_index_file_and_finish_without_files(loading: str) -> None:
    index = Index()
    index.finish_loading()
    index.load_file([], b"")
    index.finish_loading()
    assert len(index) == 0


def test_large_offsets_and_lengths_survive(loading: str) -> None:
    index = Index()
    index.load_file(*encode_index_file([(blob(5), PACK_A, 2**32 - 1, 2**31, 2**32 - 2, BLOB_DATA)]))
    index.finish_loading()
    assert index.lookup(blob(5)) == Location(PACK_A, 2**32 - 1, 2**31, 2**32 - 2, BLOB_DATA)


def test_memory_per_blob_stays_compact(monkeypatch) -> None:
    monkeypatch.setattr(index_module, "MERGE_THRESHOLD", 1000)
    index = Index()
    for number in range(1000):
        index.add(os.urandom(32), PACK_A, number, 1, 1, BLOB_DATA)
    assert index.nbytes() <= 1000 * 49 + 32


def test_lookup_never_misses_an_added_blob_while_another_thread_merges(monkeypatch) -> None:
    monkeypatch.setattr(index_module, "MERGE_THRESHOLD", 256)
    index, added, misses, stop = Index(), [os.urandom(32)], [], threading.Event()
    index.add(added[0], PACK_A, 0, 1, 1, BLOB_DATA)

    def writer() -> None:
        deadline = time.monotonic() + 1.0
        while not misses and time.monotonic() < deadline:
            blob_id = os.urandom(32)
            index.add(blob_id, PACK_A, 0, 1, 1, BLOB_DATA)
            added.append(blob_id)
        stop.set()

    def reader() -> None:
        while not stop.is_set():
            blob_id = added[len(added) // 2]
            try:
                found = index.lookup(blob_id)
            except IndexError as error:  # keys and records from different merges
                found = error
            if not isinstance(found, Location):
                misses.append(found)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert misses == []
