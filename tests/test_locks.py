"""safehold.store.locks.Lock: shared and exclusive locks, waiting, stale locks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import backup_json, run_cli, write_file

from safehold.errors import RepositoryLocked
from safehold.store import Store, open_store
from safehold.store.locks import STALE_AFTER, Lock


@pytest.fixture
def store(repo: Path) -> Iterator[Store]:
    opened = open_store(str(repo)).open()
    yield opened
    opened.close()


def lock_names(store: Store) -> set[str]:
    return {name for name, _ in store.list("locks")}


def test_shared_locks_do_not_conflict(store: Store) -> None:
    with Lock(store, exclusive=False), Lock(store, exclusive=False):
        assert len(lock_names(store)) == 2
    assert lock_names(store) == set()


def test_exclusive_lock_blocks_a_shared_one(store: Store) -> None:
    with Lock(store, exclusive=True):
        started = time.monotonic()
        with pytest.raises(RepositoryLocked, match="exclusively"):
            Lock(store, exclusive=False, wait=0.2).acquire()
        assert time.monotonic() - started >= 0.2
        assert len(lock_names(store)) == 1  # the loser removed its own lock


def test_shared_lock_blocks_an_exclusive_one(store: Store) -> None:
    with (
        Lock(store, exclusive=False),
        pytest.raises(RepositoryLocked, match="running backup or restore"),
    ):
        Lock(store, exclusive=True, wait=0.1).acquire()


def test_waiting_locker_gets_the_lock_when_it_is_released(store: Store) -> None:
    holder = Lock(store, exclusive=True).acquire()
    threading.Timer(0.1, holder.release).start()
    with Lock(store, exclusive=True, wait=0.6) as waiter:
        assert lock_names(store) == {waiter.name}


def test_lock_document_names_its_holder(store: Store) -> None:
    with Lock(store, exclusive=True) as lock:
        document = json.loads(store.load(lock.name))
    assert document["exclusive"] is True
    assert {"host", "pid", "time"} <= document.keys()


def test_stale_lock_is_ignored_and_removed(store: Store) -> None:
    def long_ago() -> float:
        return time.time() - STALE_AFTER - 60

    stale = Lock(store, exclusive=True, clock=long_ago).acquire()
    try:
        with Lock(store, exclusive=True) as fresh:
            assert lock_names(store) == {fresh.name}
    finally:
        stale.release()  # its object is already gone: releasing must not fail
    assert lock_names(store) == set()


def test_lock_younger_than_stale_after_still_counts(store: Store) -> None:
    def a_while_ago() -> float:
        return time.time() - STALE_AFTER + 60

    with Lock(store, exclusive=True, clock=a_while_ago), pytest.raises(RepositoryLocked):
        Lock(store, exclusive=False).acquire()


def test_holder_refreshes_its_lock(store: Store) -> None:
    ticks = iter(range(1000, 100000, 1000))
    with Lock(
        store, exclusive=False, clock=lambda: float(next(ticks)), refresh_interval=0.05
    ) as lock:
        first = json.loads(store.load(lock.name))["time"]
        time.sleep(0.3)
        assert json.loads(store.load(lock.name))["time"] > first


def test_a_half_written_lock_of_a_killed_process_is_no_lock(repo: Path, tmp_path: Path) -> None:
    """A process killed between creating a lock's temporary file and renaming it leaves an
    empty ``<random>.tmp`` in locks/: no command takes it for a lock (or fails on it)."""
    (repo / "locks" / "tmpkilledwrite.tmp").write_bytes(b"")
    source = write_file(tmp_path / "src" / "a.txt", b"a\n").parent
    assert backup_json(repo, source)["files_new"] == 1
    exclusive = run_cli("prune", "--repo", repo, "--dry-run")  # takes the exclusive lock
    assert exclusive.code == 0, exclusive.err
    unlock = run_cli("unlock", "--repo", repo)
    assert unlock.code == 0, unlock.err
    assert (repo / "locks" / "tmpkilledwrite.tmp").exists()  # a fresh one: prune's to remove
