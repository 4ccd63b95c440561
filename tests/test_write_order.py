"""Power-loss safety by write order: every object is durable (file and directory fsynced)
before any object that refers to it is written: packs before the index files that list them,
index files before the snapshot that needs them (docs/format.md, "Write order")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safehold.archive.backup import backup_paths
from safehold.store.local import DurablePosixFS
from safehold.store.wrappers import StoreWrapper
from tests.conftest import init_repository, open_repository, require_page_cache, resident_bytes


class Recording(StoreWrapper):
    """Records each save once it has returned (for the local store: once it is durable)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        self.saved: list[str] = []

    def save(self, name: str, data: bytes | bytearray | memoryview) -> None:
        super().save(name, data)
        self.saved.append(name)


def _tree(root: Path) -> Path:
    for number in range(40):
        folder = root / f"d{number % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{number}").write_bytes(os.urandom(20_000 + number))
    return root


def test_packs_then_index_then_snapshot(tmp_path: Path) -> None:
    repo = init_repository(tmp_path / "repo", pack_size=64 * 1024)  # many packs
    repository = open_repository(repo)
    recording = Recording(repository.store)
    repository.store = recording
    result = backup_paths(repository, [str(_tree(tmp_path / "src"))])
    saved = recording.saved
    packs = [name for name in saved if name.startswith("data/")]
    indexes = [name for name in saved if name.startswith("index/")]
    assert len(packs) > 5 and indexes
    assert saved[-1] == f"snapshots/{result.snapshot_id}", "the snapshot is written last"
    for index_name in indexes:
        listed = repository.load_object(index_name)["packs"]  # type: ignore[index]
        for pack_id in listed:
            pack = f"data/{bytes(pack_id).hex()}"
            assert saved.index(pack) < saved.index(index_name), f"{index_name} before {pack}"
    assert set(packs) == {
        f"data/{bytes(p).hex()}" for i in indexes for p in repository.load_object(i)["packs"]
    }  # type: ignore[index]
    repository.close()


def test_a_save_is_durable_file_and_directory(tmp_path: Path, monkeypatch) -> None:
    backend = DurablePosixFS(str(tmp_path / "store"))
    backend.create()
    backend.open()
    backend.mkdir("data")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    backend.store("data/0123", b"content")
    data_dir = str(tmp_path / "store" / "data")
    # The temp file's content first (before its rename), then the directory entry.
    assert len(synced) == 2, synced
    assert synced[0].startswith(data_dir + "/") and synced[0].endswith(".tmp"), synced
    assert synced[-1] == str(tmp_path / "store" / "data"), "the directory is fsynced last"
    assert (tmp_path / "store" / "data" / "0123").read_bytes() == b"content"
    backend.close()


@pytest.mark.parametrize("name", ["index", "snapshots"])
def test_a_crash_before_the_snapshot_leaves_no_snapshot(tmp_path: Path, name: str) -> None:
    """Fail the first save of an index file or of the snapshot: no snapshot appears, and the
    repository checks out (what was written is merely unreferenced)."""
    from tests.conftest import run_cli

    repo = init_repository(tmp_path / "repo")
    repository = open_repository(repo)

    class Failing(StoreWrapper):
        def save(self, object_name: str, data) -> None:  # type: ignore[no-untyped-def]
            if object_name.startswith(name + "/"):
                raise OSError(5, "simulated power loss")
            super().save(object_name, data)

    repository.store = Failing(repository.store)
    with pytest.raises(Exception):  # noqa: B017 - any failure: the point is what is left
        backup_paths(repository, [str(_tree(tmp_path / "src"))])
    repository.close()
    assert not list((repo / "snapshots").iterdir())
    assert run_cli("check", "--repo", repo, "--read-data").code == 0


def test_packs_leave_the_page_cache_small_objects_may_stay(tmp_path: Path) -> None:
    """A pack is dropped from the page cache once it is durable; what is left is the same."""
    require_page_cache(tmp_path)
    backend = DurablePosixFS(str(tmp_path / "store"))
    backend.create()
    backend.open()
    backend.mkdir("data")
    pack = os.urandom(3 * 1024 * 1024)
    backend.store("data/pack", pack)
    backend.store("data/small", b"x" * 4096)
    store = tmp_path / "store" / "data"
    assert resident_bytes(store / "pack") == 0
    assert resident_bytes(store / "small") == 4096  # below DROP_FROM_CACHE: left alone
    assert (store / "pack").read_bytes() == pack
    assert not [name for name in os.listdir(store) if name.endswith(".tmp")]
    backend.close()


def test_packs_of_tiny_blobs_are_indexed_before_sixteen_of_them(tmp_path, monkeypatch) -> None:
    """The rows of stored packs wait in memory until an index file lists them: with tiny
    blobs an index file follows every INDEX_EVERY_BLOBS of them, not only every 16 packs."""
    from safehold.repo import writer as writer_module
    from safehold.repo.format import BLOB_DATA

    monkeypatch.setattr(writer_module, "INDEX_EVERY_BLOBS", 500)
    repository = open_repository(init_repository(tmp_path / "repo", pack_size=16 * 1024))
    with writer_module.BlobWriter(repository) as writer:
        for number in range(2000):
            data = b"tiny %d" % number
            writer.add(BLOB_DATA, repository.cipher.blob_id(data), data)
        packs = len(list(repository.store.list("data")))
        indexes = len(list(repository.store.list("index")))
        assert 2 <= packs < writer_module.INDEX_EVERY_PACKS
        assert indexes >= 1, (packs, indexes)  # was none before the flush
        writer.flush()
    with open_repository(tmp_path / "repo") as reopened:
        assert len(reopened.index) == 2000
