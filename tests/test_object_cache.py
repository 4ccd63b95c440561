"""The local object cache (safehold/repo/cache.py, ObjectCache): index files and snapshots are
read from it instead of the repository, a damaged copy is never believed, what another client
wrote is picked up, what forget, prune or repair removed leaves the cache too, and what proves
the repository (check) never looks at it."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import PASSPHRASE, backup_json, init_repository, run_cli, write_file

from safehold.repo.repository import Repository
from safehold.store import Store
from safehold.store.wrappers import StoreWrapper


class Recording(StoreWrapper):
    """Records the name of every object loaded."""

    def __init__(self, inner: Store, loaded: list[str]) -> None:
        super().__init__(inner)
        self.loaded = loaded

    def load(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        self.loaded.append(name)
        return self.inner.load(name, offset, size)


def opened(location: str) -> tuple[Repository, list[str]]:
    """The repository opened, with its store recording the loads from now on."""
    repository = Repository.open(location, PASSPHRASE.encode())
    loaded: list[str] = []
    repository.store = Recording(repository.store, loaded)
    return repository, loaded


def cached(location: str, namespace: str) -> set[str]:
    with Repository.open(location, PASSPHRASE.encode()) as repository:
        directory = Path(os.environ["XDG_CACHE_HOME"]) / "safehold" / repository.config["id"]
    folder = directory / namespace
    return {f"{namespace}/{p.name}" for p in folder.iterdir()} if folder.is_dir() else set()


def source_tree(root: Path, seed: int) -> Path:
    rnd = random.Random(seed)
    for number in range(6):
        write_file(root / f"d{number % 2}" / f"f{number}", rnd.randbytes(5000))
    return root


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, remote_location: Callable[[str, str], str]) -> str:
    return remote_location(request.param, "repo")


@pytest.fixture
def repo(location: str, tmp_path: Path) -> Iterator[str]:
    init_repository(location)  # type: ignore[arg-type]
    backup_json(location, source_tree(tmp_path / "src", 1))  # type: ignore[arg-type]
    yield location


def test_index_files_and_snapshots_come_from_the_cache(repo: str) -> None:
    repository, loaded = opened(repo)
    with repository:
        assert len(repository.index) > 0
        assert repository.load_snapshots([n.split("/")[1] for n in repository.snapshot_names()])
    assert [name for name in loaded if name.startswith(("index/", "snapshots/"))] == []
    with Repository.open(repo, PASSPHRASE.encode()) as repository:
        assert cached(repo, "index") == set(repository.index_names())
        assert cached(repo, "snapshots") == set(repository.snapshot_names())


def test_a_damaged_cached_copy_is_dropped_and_read_from_the_repository(repo: str) -> None:
    (name,) = cached(repo, "index")
    with Repository.open(repo, PASSPHRASE.encode()) as repository:
        path = Path(os.environ["XDG_CACHE_HOME"]) / "safehold" / repository.config["id"] / name
        expected = len(repository.index)
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    repository, loaded = opened(repo)
    with repository:
        assert len(repository.index) == expected  # the repository's copy, authenticated
    assert loaded.count(name) == 1
    assert path.read_bytes() == good  # and the cache has the good one again


def test_what_another_client_wrote_is_picked_up(
    repo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = cached(repo, "index")
    with monkeypatch.context() as other:  # another machine: a cache of its own
        other.setenv("XDG_CACHE_HOME", str(tmp_path / "other-cache"))
        backup_json(repo, source_tree(tmp_path / "more", 2))  # type: ignore[arg-type]
    repository, loaded = opened(repo)
    with repository:
        new = set(repository.index_names()) - before
        assert len(new) == 1
        index = repository.index
        assert len(repository.snapshot_names()) == 2
        snapshot = repository.load_snapshot(repository.snapshot_names()[-1].split("/")[1])
        assert all(index.lookup(entry) is not None for entry in [snapshot["tree"]])
    assert sorted(name for name in loaded if name.startswith("index/")) == sorted(new)
    assert cached(repo, "index") == before | new


def test_forgotten_snapshots_and_superseded_index_files_leave_the_cache(
    repo: str, tmp_path: Path
) -> None:
    backup_json(repo, source_tree(tmp_path / "src", 2))  # type: ignore[arg-type]  # all new
    old_index = cached(repo, "index")
    assert len(old_index) == 2 and len(cached(repo, "snapshots")) == 2
    result = run_cli("forget", "--repo", repo, "--keep-last", "1", "--prune", "--keep-young", "0")
    assert result.code == 0, result.err
    with Repository.open(repo, PASSPHRASE.encode()) as repository:
        index_names, snapshot_names = repository.index_names(), repository.snapshot_names()
    assert not set(index_names) & old_index  # prune wrote new index files, removed the old
    assert cached(repo, "index") <= set(index_names)
    assert cached(repo, "snapshots") == set(snapshot_names) and len(snapshot_names) == 1


def test_check_reads_index_files_from_the_repository(tmp_path: Path) -> None:
    """A damaged index file in the repository is reported although a good copy is cached."""
    location = str(tmp_path / "repo")
    init_repository(Path(location))
    backup_json(location, source_tree(tmp_path / "src", 1))  # type: ignore[arg-type]
    (name,) = cached(location, "index")
    path = Path(location) / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = run_cli("check", "--repo", location)
    assert result.code == 13, result.out + result.err
    assert name in result.out + result.err


def test_no_copies_with_the_cache_off(
    location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")
    init_repository(location)  # type: ignore[arg-type]
    backup_json(location, source_tree(tmp_path / "src", 1))  # type: ignore[arg-type]
    repository, loaded = opened(location)
    with repository:
        assert len(repository.index) > 0
    assert [name for name in loaded if name.startswith("index/")]
    assert not (tmp_path / "xdg-cache" / "safehold").exists()


def test_many_missing_objects_are_read_over_several_connections(
    remote_location: Callable[[str, str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    location = remote_location("s3", "repo")
    init_repository(location)  # type: ignore[arg-type]
    source = tmp_path / "src"
    for number in range(9):
        write_file(source / "f", str(number).encode())
        backup_json(location, source)  # type: ignore[arg-type]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    threads: set[str] = set()
    real_load = Store.load

    def load(self: Store, name: str, offset: int = 0, size: int | None = None) -> bytes:
        if name.startswith("snapshots/"):
            threads.add(threading.current_thread().name)
        return real_load(self, name, offset, size)

    monkeypatch.setattr(Store, "load", load)
    result = run_cli("snapshots", "--repo", location, "--json")
    assert result.code == 0, result.err
    assert len(result.json()) == 9  # type: ignore[arg-type]
    assert len({name for name in threads if name.startswith("objects")}) >= 2
    assert len(cached(location, "snapshots")) == 9
