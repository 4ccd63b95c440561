"""Restores from remote repositories read several packs at once, each read over a connection
of its own (``Repository.readers``: the repository's own and as many more as the store
recommends; safehold/archive/contentwriter.py); a local restore uses the repository's own
store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    PASSPHRASE,
    backup_json,
    compare_trees,
    flip_byte,
    init_repository,
    pack_file,
    run_cli,
    write_file,
)
from test_parallel_upload import make_source

import safehold.repo.repository
from safehold.archive import tree
from safehold.repo.repository import Repository
from safehold.store import Store
from safehold.store.wrappers import StoreWrapper


class SlowLoads(StoreWrapper):
    """Loads from data/ take ``delay`` seconds; ``meter`` records how many run at once."""

    def __init__(self, inner: Store, meter: dict, delay: float) -> None:
        super().__init__(inner)
        self.meter, self.delay = meter, delay

    def load(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        if not name.startswith("data/"):
            return self.inner.load(name, offset, size)
        with self.meter["lock"]:
            self.meter["now"] += 1
            self.meter["max"] = max(self.meter["max"], self.meter["now"])
        try:
            time.sleep(self.delay)
            return self.inner.load(name, offset, size)
        finally:
            with self.meter["lock"]:
                self.meter["now"] -= 1


def restore_metered(url: str, source: Path, target: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    meter: dict = {"lock": threading.Lock(), "now": 0, "max": 0, "opened": 0}
    real_open = safehold.repo.repository.open_store

    def open_metered(location: str) -> Store:
        meter["opened"] += 1
        return SlowLoads(real_open(location), meter, 0.05)

    with monkeypatch.context() as patch:
        patch.setattr(safehold.repo.repository, "open_store", open_metered)
        result = run_cli("restore", f"latest:{source}", "--target", target, "--repo", url)
    assert result.code == 0, result.err
    assert compare_trees(source, target, include_root=False) == []
    return meter


@pytest.mark.parametrize("backend", ["sftp", "s3"])
def test_remote_restores_read_several_packs_at_once(
    backend: str,
    tmp_path: Path,
    remote_location: Callable[[str, str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = remote_location(backend, "repo")
    init_repository(url, pack_size=64 * 1024)  # type: ignore[arg-type]  # many small packs
    source = make_source(tmp_path / "src")
    backup_json(url, source)  # type: ignore[arg-type]
    with Repository.open(url, PASSPHRASE.encode()) as repository:
        connections = repository.store.recommended_uploads
    meter = restore_metered(url, source, tmp_path / "out", monkeypatch)
    assert meter["max"] == connections >= 2  # several at once, never more
    assert meter["opened"] == connections  # the repository's own + the readers' others


def test_a_local_restore_reads_through_the_repositorys_own_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = init_repository(tmp_path / "repo", pack_size=64 * 1024)
    source = make_source(tmp_path / "src")
    backup_json(repo, source)
    meter = restore_metered(str(repo), source, tmp_path / "out", monkeypatch)
    assert meter["opened"] == 1
    assert meter["max"] <= 2  # the restore workers (two cores) share it


def test_a_remote_restore_reads_trees_ahead_over_several_connections(
    tmp_path: Path, remote_location: Callable[[str, str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the tree cache, the walk reads trees ahead in parallel (archive/tree.py,
    TreeLoader); a damaged one still fails only what is below it."""
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")
    url = remote_location("sftp", "repo")  # the repository's files are under tmp_path/repo
    init_repository(url)  # type: ignore[arg-type]
    source = tmp_path / "src"
    for group in range(4):
        for sub in range(3):
            write_file(source / f"g{group}" / f"d{sub}" / "file", f"{group} {sub}\n".encode())
    backup_json(url, source)  # type: ignore[arg-type]
    with Repository.open(url, PASSPHRASE.encode()) as repository:
        snapshot = repository.load_snapshot(repository.snapshot_names()[-1].split("/")[1])
        victim = tree.find(repository, snapshot, f"{source}/g2/d1")
        location = repository.index.lookup(victim["subtree"])
    flip_byte(pack_file(tmp_path / "repo", location.pack_id), location.offset + 20)
    threads: set[str] = set()
    real_load = Store.load

    def load(self: Store, name: str, offset: int = 0, size: int | None = None) -> bytes:
        if name.startswith("data/"):
            threads.add(threading.current_thread().name)
        return real_load(self, name, offset, size)

    monkeypatch.setattr(Store, "load", load)
    target = tmp_path / "out"
    result = run_cli("restore", f"latest:{source}", "--target", target, "--repo", url)
    assert result.code == 13, result.err
    assert "g2/d1" in result.err
    assert (target / "g2" / "d1").is_dir() and not (target / "g2" / "d1" / "file").exists()
    for group, sub in [(0, 0), (1, 2), (2, 0), (3, 1)]:
        assert (
            target / f"g{group}" / f"d{sub}" / "file"
        ).read_bytes() == f"{group} {sub}\n".encode()
    assert len({name for name in threads if name.startswith("trees")}) >= 2
