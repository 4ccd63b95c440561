"""Restores from remote repositories read several packs at once, each restore worker over
its own connection (safehold/archive/contentwriter.py); a local restore uses the
repository's own store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PASSPHRASE, backup_json, compare_trees, init_repository, run_cli
from test_parallel_upload import make_source

import safehold.repo.repository
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
    assert meter["opened"] == 1 + connections  # the repository's own + one per worker


def test_a_local_restore_reads_through_the_repositorys_own_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = init_repository(tmp_path / "repo", pack_size=64 * 1024)
    source = make_source(tmp_path / "src")
    backup_json(repo, source)
    meter = restore_metered(str(repo), source, tmp_path / "out", monkeypatch)
    assert meter["opened"] == 1
    assert meter["max"] <= 2  # the restore workers (two cores) share it
