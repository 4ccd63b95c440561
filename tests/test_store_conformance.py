"""The Store contract (safehold.store's docstring), one suite run against every backend.

Each test runs three times: on a local directory, over sftp to a real OpenSSH sshd on
127.0.0.1, and on S3 against moto's server on 127.0.0.1 (tests/remote_conftest.py). Ends with
the whole command line against each: init, backup, restore, check --read-data.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import compare_trees, run_cli, write_file

from safehold.errors import RepositoryExists, RepositoryNotFound
from safehold.repo.repository import Repository
from safehold.store import (
    ObjectMissing,
    Store,
    location_exists,
    location_is_file,
    open_store,
)
from safehold.store.spool import Spooled
from safehold.store.wrappers import Fault, FaultyStore, RetryingStore, RetryPolicy

MiB = 1024 * 1024
ID = "0123456789abcdef" * 4  # a 64-hex name, as packs, index files and snapshots have


@pytest.fixture
def store(store_location: str) -> Iterator[Store]:
    """A created and opened store at a fresh location of each backend."""
    created = open_store(store_location)
    created.create()
    created.open()
    yield created
    created.close()


def names(store: Store, namespace: str) -> dict[str, int]:
    return dict(store.list(namespace))


def test_create_makes_an_empty_store_and_refuses_to_create_over_one(store_location: str) -> None:
    assert not location_exists(store_location)
    fresh = open_store(store_location)
    fresh.create()
    with fresh:
        for namespace in ("meta", "keys", "data", "index", "snapshots", "locks"):
            assert names(fresh, namespace) == {}
        fresh.save("meta/format", b"marker")
    assert location_exists(store_location)
    assert not location_is_file(store_location)
    with pytest.raises(RepositoryExists, match="already holds data"):
        open_store(store_location).create()


def test_recommended_pack_size_per_backend(store: Store, backend_env: str) -> None:
    expected = {"local": 16 * MiB, "sftp": 32 * MiB, "s3": 32 * MiB}[backend_env]
    assert store.kind == backend_env
    assert store.recommended_pack_size == expected
    assert store.recommended_uploads >= 1


def test_save_load_round_trip_with_ranges(store: Store) -> None:
    data = bytes(range(256)) * 40
    store.save(f"index/{ID}", data)
    assert store.load(f"index/{ID}") == data
    assert store.load(f"index/{ID}", offset=1000) == data[1000:]
    assert store.load(f"index/{ID}", offset=1000, size=500) == data[1000:1500]
    assert store.load(f"index/{ID}", offset=0, size=1) == data[:1]
    assert store.load(f"index/{ID}", offset=len(data) - 4, size=4) == data[-4:]
    assert store.exists(f"index/{ID}")
    store.save("meta/empty", b"")
    assert store.load("meta/empty") == b""


def test_saving_a_memoryview_and_a_bytearray(store: Store) -> None:
    buffer = bytearray(b"x" * 100 + b"payload" + b"y" * 100)
    store.save(f"snapshots/{ID}", memoryview(buffer)[100:107])
    store.save(f"index/{ID}", buffer)
    assert store.load(f"snapshots/{ID}") == b"payload"
    assert store.load(f"index/{ID}") == bytes(buffer)


def test_saving_a_spooled_object_reads_it_from_its_file_on_every_attempt(store: Store) -> None:
    # Packs for remote locations wait in a temporary file (safehold/store/spool.py); a save
    # retried after a transient failure reads the file from its start again.
    data = os.urandom(3 * MiB + 12345)  # several blocks, the last one short
    spooled = Spooled.of(data)
    try:
        flaky = RetryingStore(FaultyStore(store, Fault("save")), RetryPolicy(3, 0.0, 0.0))
        flaky.save(f"data/{ID}", spooled)
        assert store.load(f"data/{ID}") == data
        empty = Spooled.of(b"")
        store.save(f"index/{ID}", empty)
        empty.close()
        assert store.load(f"index/{ID}") == b""
    finally:
        spooled.close()


def test_a_save_replaces_the_object_as_locks_need(store: Store) -> None:
    name = "locks/" + "ab" * 16
    store.save(name, b'{"time": 1, "long": "' + b"x" * 500 + b'"}')
    store.save(name, b'{"time": 2}')
    assert store.load(name) == b'{"time": 2}'
    assert names(store, "locks") == {name: len(b'{"time": 2}')}
    store.delete(name)
    assert names(store, "locks") == {}
    store.save(name, b'{"time": 3}')
    assert store.load(name) == b'{"time": 3}'


def test_list_yields_every_name_with_its_size(store: Store) -> None:
    rnd = random.Random(7)
    packs = {f"data/{rnd.randbytes(32).hex()}": rnd.randrange(0, 3000) for _ in range(12)}
    packs["data/00" + "f" * 62] = 10  # first and last of the 256 prefixes
    packs["data/ff" + "0" * 62] = 11
    for name, size in packs.items():
        store.save(name, rnd.randbytes(size))
    store.save(f"index/{ID}", b"i")
    assert names(store, "data") == packs
    assert names(store, "index") == {f"index/{ID}": 1}
    assert names(store, "snapshots") == {}


def test_modified_times_name_every_object_with_when_it_was_written(store: Store) -> None:
    before = time.time()
    written = [f"data/{n:02x}" + "a" * 62 for n in (0, 7, 255)]
    for name in written:
        store.save(name, b"pack")
    store.save(f"index/{ID}", b"i")
    times = store.modified_times("data")
    assert sorted(times) == sorted(written)
    for when in times.values():  # server clocks (moto, sshd here) are this machine's
        assert before - 5 <= when <= time.time() + 5
    assert store.modified_times("snapshots") == {}


def test_list_of_a_namespace_never_written_is_empty(store: Store) -> None:
    assert list(store.list("snapshots")) == []
    assert list(store.list("data")) == []
    store.save(f"data/{ID}", b"x")
    store.delete(f"data/{ID}")
    assert list(store.list("data")) == []


def test_delete_removes_and_a_second_delete_is_missing(store: Store) -> None:
    store.save(f"snapshots/{ID}", b"s")
    store.delete(f"snapshots/{ID}")
    assert not store.exists(f"snapshots/{ID}")
    with pytest.raises(ObjectMissing):
        store.load(f"snapshots/{ID}")
    with pytest.raises(ObjectMissing):
        store.delete(f"snapshots/{ID}")


def test_missing_objects(store: Store) -> None:
    with pytest.raises(ObjectMissing):
        store.load(f"data/{ID}")
    with pytest.raises(ObjectMissing):
        store.load(f"data/{ID}", offset=10, size=5)
    with pytest.raises(ObjectMissing):
        store.load("meta/config")
    assert not store.exists(f"data/{ID}")
    assert not store.exists("meta/format")


def test_large_object_round_trip_and_tail_range(store: Store) -> None:
    data = random.Random(11).randbytes(5 * MiB + 123)
    store.save(f"data/{ID}", data)
    assert names(store, "data") == {f"data/{ID}": len(data)}
    assert store.load(f"data/{ID}") == data
    tail = 4 + 200
    assert store.load(f"data/{ID}", offset=len(data) - tail, size=tail) == data[-tail:]
    assert store.load(f"data/{ID}", offset=3 * MiB, size=MiB) == data[3 * MiB : 4 * MiB]


def test_names_of_every_namespace_survive_exactly(store: Store) -> None:
    wanted = {
        "meta/format": b"f",
        "meta/config": b"c",
        "keys/" + "1" * 32: b"k",
        f"data/{ID}": b"d",
        "index/" + "a" * 64: b"i",
        f"snapshots/{ID}": b"s",
        "locks/" + "2" * 32: b"l",
    }
    for name, data in wanted.items():
        store.save(name, data)
    found = {}
    for namespace in ("meta", "keys", "data", "index", "snapshots", "locks"):
        found.update(names(store, namespace))
    assert found == {name: len(data) for name, data in wanted.items()}
    for name, data in wanted.items():
        assert store.load(name) == data


@pytest.mark.parametrize("bad", ["data/ABCDEF", "data/../meta/x", "/data/x", "data/a b", "data/"])
def test_bad_names_are_refused_before_touching_the_store(store: Store, bad: str) -> None:
    with pytest.raises(ValueError):
        store.save(bad, b"x")
    assert names(store, "data") == {}


def test_a_save_is_never_partially_visible_to_another_client(store_location: str) -> None:
    """A second client (another Store, as another host would be) polls while large objects
    are saved: every name it lists has its full size and loads complete."""
    writer = open_store(store_location)
    writer.create()
    rnd = random.Random(5)
    objects = {f"data/{rnd.randbytes(32).hex()}": rnd.randbytes(2 * MiB) for _ in range(5)}
    seen: dict[str, int] = {}
    problems: list[str] = []
    done = threading.Event()

    def watch() -> None:
        with open_store(store_location) as reader:
            while not done.is_set():
                for name, size in reader.list("data"):
                    if size != len(objects[name]):
                        problems.append(f"{name} listed with {size} bytes")
                    elif name not in seen:
                        if reader.load(name) != objects[name]:
                            problems.append(f"{name} loaded partially")
                        seen[name] = size

    with writer:
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            for name, data in objects.items():
                writer.save(name, data)
        finally:
            done.set()
            watcher.join(timeout=60)
        assert names(writer, "data") == {name: len(data) for name, data in objects.items()}
    assert problems == []


def test_objects_saved_by_one_client_are_seen_by_another(store_location: str) -> None:
    first = open_store(store_location)
    first.create()
    with first, open_store(store_location) as second:
        first.save(f"snapshots/{ID}", b"from the first")
        assert second.load(f"snapshots/{ID}") == b"from the first"
        second.delete(f"snapshots/{ID}")
        with pytest.raises(ObjectMissing):
            first.load(f"snapshots/{ID}")


def test_opening_an_empty_location_says_not_found(store_location: str) -> None:
    with pytest.raises(RepositoryNotFound, match="no safehold repository"):
        Repository.open(store_location, b"whatever")


# ---------------------------------------------------------------------------------- the CLI


def small_tree(root: Path) -> Path:
    rnd = random.Random(3)
    write_file(root / "notes.txt", b"safehold over the network\n" * 100)
    write_file(root / "big.bin", rnd.randbytes(3 * MiB))
    write_file(root / "sub" / "copy.bin", (root / "big.bin").read_bytes()[: MiB + 17])
    write_file(root / "sub" / "empty", b"")
    (root / "link").symlink_to("notes.txt")
    return root


def test_init_backup_restore_check_through_the_cli(store_location: str, tmp_path: Path) -> None:
    source = small_tree(tmp_path / "src")
    result = run_cli("init", "--repo", store_location)
    assert result.code == 0, result.err
    assert store_location in result.out
    for _ in range(2):  # the second backup finds everything unchanged
        result = run_cli("backup", "--repo", store_location, source)
        assert result.code == 0, result.err
        assert result.err == ""
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", store_location, f"latest:{source}", "--target", target)
    assert result.code == 0, result.err
    assert compare_trees(source, target, include_root=False) == []
    result = run_cli("check", "--repo", store_location, "--read-data")
    assert result.code == 0, result.err
    result = run_cli("snapshots", "--repo", store_location, "--json")
    assert result.code == 0, result.err
    assert len(result.json()) == 2
