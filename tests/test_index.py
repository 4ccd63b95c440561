"""safehold.repo.index.Index: add, lookup, merging, loading index files."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import backup_json, compare_trees, open_repository, run_cli, write_file

from safehold.repo import index as index_module
from safehold.repo import index_arrays
from safehold.repo.format import BLOB_DATA, BLOB_TREE, INDEX_RECORD
from safehold.repo.index import Index, Location, encode_index_file, index_file_problem

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
    monkeypatch.setattr(index_module, "MERGE_MINIMUM", 4)
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
    monkeypatch.setattr(index_module, "MERGE_MINIMUM", 2)
    index = Index()
    ids = [b"\x01" * 8 + bytes([n]) * 24 for n in (3, 1, 2)]
    for offset, blob_id in enumerate(ids):
        index.add(blob_id, PACK_A, offset, 1, 1, BLOB_DATA)
    assert len(index._pending) == 1
    assert [index.lookup(blob_id).offset for blob_id in ids] == [0, 1, 2]
    assert index.lookup(b"\x01" * 8 + b"\x09" * 24) is None


def test_entries_lists_pending_and_merged_blobs(monkeypatch) -> None:
    monkeypatch.setattr(index_module, "MERGE_THRESHOLD", 3)
    monkeypatch.setattr(index_module, "MERGE_MINIMUM", 3)
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


def test_an_index_file_is_checked_before_it_is_trusted(loading: str) -> None:
    """index_file_problem names what is wrong with an index file that authenticates; the pack
    numbers are read without numpy for a small file, with it for a large one ("arrays")."""
    packs, records = encode_index_file(
        [(blob(n), (PACK_A, PACK_B, PACK_C)[n % 3], 0, 10, 8, BLOB_DATA) for n in range(50)]
    )
    assert index_file_problem({"version": 1, "packs": packs, "records": records}) is None
    assert index_file_problem({"packs": [], "records": b""}) is None
    beyond = "a record naming pack number 2 of a pack table of 2"
    assert index_file_problem({"packs": packs[:2], "records": records}) == beyond
    far = records + INDEX_RECORD.pack(blob(99), 0x01020304, 0, 10, 8, BLOB_DATA)
    assert index_file_problem({"packs": packs, "records": far}) == (
        f"a record naming pack number {0x01020304} of a pack table of 3"
    )
    assert index_file_problem({"packs": packs, "records": records[:-1]}) == (
        f"records of {len(records) - 1} bytes, not a multiple of 49"
    )
    table = "a pack table that is not a list of 32-byte pack ids"
    assert index_file_problem({"packs": [PACK_A[:31]], "records": b""}) == table
    assert index_file_problem({"packs": tuple(packs), "records": records}) == table
    assert index_file_problem({"packs": ["a" * 32], "records": b""}) == table
    assert index_file_problem({"records": records}) == table
    assert index_file_problem({"packs": packs, "records": records.hex()}) == (
        "records that are not bytes"
    )
    assert index_file_problem([packs, records]) == "not an index file"
    assert index_file_problem(None) == "not an index file"


def test_a_small_index_moves_into_the_arrays_when_it_grows(monkeypatch) -> None:
    monkeypatch.setattr(index_module, "MERGE_THRESHOLD", 8)
    monkeypatch.setattr(index_module, "SMALL_INDEX", 8)
    index = Index()
    index.load_file(*encode_index_file([(blob(n), PACK_A, n, 1, 1, BLOB_DATA) for n in range(5)]))
    index.finish_loading()
    assert index._sorted is None and len(index) == 5
    for number in range(5, 8):  # the eighth entry reaches MERGE_THRESHOLD
        index.add(blob(number), PACK_B, number, 2, 2, BLOB_TREE)
    assert index._sorted is not None and index._sorted.count == 8 and not index._pending
    assert index.lookup(blob(2)) == Location(PACK_A, 2, 1, 1, BLOB_DATA)
    assert index.lookup(blob(7)) == Location(PACK_B, 7, 2, 2, BLOB_TREE)
    # a later load that would overflow the dict goes into the arrays too
    index.load_file(*encode_index_file([(blob(20), PACK_C, 0, 3, 3, BLOB_DATA)]))
    index.finish_loading()
    assert len(index) == 9 and index._sorted.count == 9
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
    assert index.nbytes() <= 1000 * 49 + 32 + 12  # records, the pack, its sorted key


def test_lookup_never_misses_an_added_blob_while_another_thread_merges(monkeypatch) -> None:
    """Two readers look up blobs added anywhere before (in the dict, the delta or the
    segments, moving between them) while the writer's adds merge: always found, at the right
    place."""
    monkeypatch.setattr(index_module, "MERGE_THRESHOLD", 256)
    monkeypatch.setattr(index_module, "MERGE_MINIMUM", 256)
    monkeypatch.setattr(index_arrays, "SEGMENT", 64)  # merges rebuild (and split) segments
    index, added, misses, stop = Index(), [os.urandom(32)], [], threading.Event()
    index.add(added[0], PACK_A, 0, 1, 1, BLOB_DATA)

    def writer() -> None:
        deadline = time.monotonic() + 1.5
        while not misses and time.monotonic() < deadline:
            blob_id = os.urandom(32)
            index.add(blob_id, PACK_A, len(added), 1, 1, BLOB_DATA)
            added.append(blob_id)
        stop.set()

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            number = rnd.choice([len(added) - 1, len(added) // 2, rnd.randrange(len(added))])
            try:
                found = index.lookup(added[number])
            except IndexError as error:  # keys and records from different merges
                found = error
            if found != Location(PACK_A, number, 1, 1, BLOB_DATA):
                misses.append((number, found))

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=writer)]
        threads += [threading.Thread(target=reader, args=(seed,)) for seed in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert misses == []
    assert len(added) > 2000 and index._sorted is not None  # the merges did happen


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments of a few entries and frequent merges: a few thousand blobs make an index of
    many segments, split again and again, and a delta merged into them time after time, as
    millions do with the real sizes."""
    monkeypatch.setattr(index_arrays, "SEGMENT", 8)
    monkeypatch.setattr(index_module, "MERGE_THRESHOLD", 50)
    monkeypatch.setattr(index_module, "MERGE_MINIMUM", 20)


def check_segments(index: Index) -> None:
    """The sorted arrays are cut by key range: segment i holds keys from firsts[i] up to
    firsts[i+1], ids sharing their first 8 bytes never straddle two segments."""
    base = index._sorted
    assert base.firsts[0] == 0 and base.firsts == sorted(set(base.firsts))
    assert len(base.firsts) == len(base.segments)
    assert sum(len(part.keys) for part in base.segments) == base.count
    bounds = [*base.firsts[1:], 2**64]
    for low, high, part in zip(base.firsts, bounds, base.segments, strict=True):
        keys = part.keys.tolist()
        assert keys == sorted(keys) and len(keys) == len(part.records)
        assert all(low <= key < high for key in keys)


def location(number: int) -> Location:
    return Location(bytes([number % 7]) * 32, number, number % 1000 + 1, number % 999, number % 2)


def test_every_added_blob_is_found_across_merges_and_segments(small_segments) -> None:
    index = Index()
    ids = [os.urandom(32) for _ in range(3000)]
    deltas = set()
    for number, blob_id in enumerate(ids):
        index.add(blob_id, *location(number))
        assert index.lookup(blob_id) == location(number)
        earlier = number * 7919 % (number + 1)
        assert index.lookup(ids[earlier]) == location(earlier)
        deltas.add(None if index._delta is None else len(index._delta.keys))
    assert len(deltas) > 10  # the delta grew and was merged into the segments many times
    check_segments(index)
    assert len(index._sorted.segments) > 100 and len(index) == 3000
    assert all(index.lookup(blob_id) == location(n) for n, blob_id in enumerate(ids))
    assert index.lookup(os.urandom(32)) is None
    assert sorted(index.entries()) == sorted(
        (blob_id, location(n)) for n, blob_id in enumerate(ids)
    )
    assert sorted(index.packs) == sorted({location(n).pack_id for n in range(7)})


def test_a_blob_added_again_is_found_where_it_was_added_last(small_segments) -> None:
    """Before and after the merges that move it into the arrays (which keep both records)."""
    index = Index()
    index.add(blob(1), PACK_A, 1, 1, 1, BLOB_DATA)
    for number in range(100, 400):  # merges: blob(1) is in the arrays
        index.add(blob(number), PACK_C, number, 1, 1, BLOB_DATA)
    assert blob(1) not in index._pending
    index.add(blob(1), PACK_B, 2, 2, 2, BLOB_TREE)
    where = set()
    for number in range(400, 800):  # from the dict into the delta, then into the segments
        assert index.lookup(blob(1)) == Location(PACK_B, 2, 2, 2, BLOB_TREE)
        delta = [] if index._delta is None else index._delta.keys.tolist()
        where.add(
            "dict" if blob(1) in index._pending else "delta" if (1 << 32 | 1) in delta else ""
        )
        index.add(blob(number), PACK_C, number, 1, 1, BLOB_DATA)
    assert where == {"dict", "delta", ""}
    assert index.lookup(blob(1)) == Location(PACK_B, 2, 2, 2, BLOB_TREE)
    check_segments(index)


@pytest.mark.parametrize("how", ["add", "load"])
def test_ids_sharing_their_first_eight_bytes_across_segments(
    small_segments, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Forty ids with one 8-byte prefix (five segments' worth) stay in one segment, among
    random ones; every one is found, a sibling that is not there is not."""
    monkeypatch.setattr(index_module, "SMALL_INDEX", 0)
    prefix = os.urandom(8)
    shared = [prefix + os.urandom(24) for _ in range(40)]
    ids = [os.urandom(32) for _ in range(300)] + shared + [os.urandom(32) for _ in range(300)]
    index = Index()
    if how == "add":
        for number, blob_id in enumerate(ids):
            index.add(blob_id, *location(number))
    else:
        rows = [(blob_id, *location(number)) for number, blob_id in enumerate(ids)]
        for start in range(0, len(rows), 64):
            index.load_file(*encode_index_file(rows[start : start + 64]))
        index.finish_loading()
    check_segments(index)
    key = int.from_bytes(prefix, "big")
    holding = [part for part in index._sorted.segments if key in part.keys.tolist()]
    assert len(holding) == 1 and holding[0].keys.tolist().count(key) >= 35
    assert all(index.lookup(blob_id) == location(n) for n, blob_id in enumerate(ids))
    assert index.lookup(prefix + os.urandom(24)) is None


def test_loading_in_batches_maps_each_files_pack_table(small_segments, monkeypatch) -> None:
    """Index files are copied into the arrays a few at a time (LOAD_BATCH bytes): the pack
    numbers of each file still map through its own pack table."""
    monkeypatch.setattr(index_module, "SMALL_INDEX", 0)
    monkeypatch.setattr(index_arrays, "LOAD_BATCH", 3 * 49 * 5)
    packs = [bytes([n]) * 32 for n in range(1, 12)]
    expected = {}
    index = Index()
    for file_number in range(10):
        rows = []
        for row_number in range(5):
            blob_id = os.urandom(32)
            pack_id = packs[(file_number + row_number * 3) % len(packs)]
            rows.append((blob_id, pack_id, file_number, row_number + 1, 9, BLOB_DATA))
            expected[blob_id] = Location(pack_id, file_number, row_number + 1, 9, BLOB_DATA)
        index.load_file(*encode_index_file(rows))
    index.finish_loading()
    check_segments(index)
    assert {blob_id: index.lookup(blob_id) for blob_id in expected} == expected
    assert sorted(index.packs) == sorted(set(index.packs)) == sorted(packs)


def test_a_pack_loaded_then_added_to_is_listed_once(loading: str) -> None:
    index = Index()
    index.load_file(*encode_index_file([(blob(1), PACK_A, 0, 1, 1, BLOB_DATA)]))
    index.finish_loading()
    index.add(blob(2), PACK_A, 1, 1, 1, BLOB_DATA)
    index.add(blob(3), PACK_B, 0, 1, 1, BLOB_DATA)
    assert index.packs == [PACK_A, PACK_B]
    assert index.lookup(blob(2)) == Location(PACK_A, 1, 1, 1, BLOB_DATA)


def test_packs_stay_distinct_when_sorted_across_merges(small_segments) -> None:
    """Packs numbered in the dict move into the sorted pack keys at each merge; a pack seen
    again later (also one sharing the first 8 bytes of another's id) keeps its number."""
    index = Index()
    prefix = os.urandom(8)
    packs = [prefix + os.urandom(24) for _ in range(3)] + [os.urandom(32) for _ in range(40)]
    ids = [os.urandom(32) for _ in range(2000)]
    for number, blob_id in enumerate(ids):
        index.add(blob_id, packs[number % len(packs)], number, 1, 1, BLOB_DATA)
    assert index._pack_keys is not None and len(index._pack_keys.keys) >= len(packs) - 3
    assert sorted(index.packs) == sorted(packs)
    assert all(index.lookup(b).pack_id == packs[n % len(packs)] for n, b in enumerate(ids))


def test_backups_restores_and_check_with_an_index_of_many_segments(
    small_segments, monkeypatch: pytest.MonkeyPatch, make_repo, tmp_path: Path
) -> None:
    """A repository whose index is always in the arrays (SMALL_INDEX 0), cut into segments of
    8 blobs and merged every 50: a backup adds through merges, the next one loads the index
    files into segments and adds more, and both snapshots restore and check."""
    monkeypatch.setattr(index_module, "SMALL_INDEX", 0)
    repo, source, rnd = make_repo(), tmp_path / "src", random.Random(3)
    for number in range(300):
        write_file(source / f"d{number % 7}" / f"f{number}", rnd.randbytes(rnd.randrange(1, 3000)))
    backup_json(repo, source)
    first = tmp_path / "first"
    assert run_cli("restore", "--repo", repo, f"latest:{source}", "--target", first).code == 0
    for number in range(0, 300, 3):
        write_file(source / f"d{number % 7}" / f"f{number}", rnd.randbytes(2000))
    write_file(source / "new" / "g", b"g" * 5000)
    summary = backup_json(repo, source)
    assert summary["files_changed"] == 100 and summary["files_new"] == 1
    second = tmp_path / "second"
    assert run_cli("restore", "--repo", repo, f"latest:{source}", "--target", second).code == 0
    assert compare_trees(source, second, include_root=False) == []
    assert len(list(first.rglob("f*"))) == 300
    check = run_cli("check", "--repo", repo, "--read-data")
    assert check.code == 0, check.out + check.err
    with open_repository(repo) as repository:
        assert len(repository.index._sorted.segments) > 30
