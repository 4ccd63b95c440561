"""Per-backend pack size and parallel uploads (safehold/repo/writer.py, docs/backends.md):
remote stores upload several packs at once, each upload thread over its own connection; at
most uploads + 1 finished packs are held; a failed upload fails the backup with one line and
no snapshot; a local repository uploads with its own store, one pack at a time."""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import (
    PASSPHRASE,
    assert_one_line_error,
    backup_json,
    init_repository,
    run_cli,
    write_file,
)

import safehold.repo.repository
from safehold.errors import StorageError
from safehold.repo import writer as writer_module
from safehold.repo.repository import Repository
from safehold.store import Store, spool
from safehold.store.wrappers import StoreWrapper

MiB = 1024 * 1024


class SlowCountingStore(StoreWrapper):
    """Saves of packs take ``delay`` seconds; counts how many run at once."""

    def __init__(self, inner: Store, meter: dict, delay: float, fail: bool = False) -> None:
        super().__init__(inner)
        self.meter, self.delay, self.fail = meter, delay, fail

    def save(self, name: str, data) -> None:  # type: ignore[no-untyped-def]
        if not name.startswith("data/"):
            return self.inner.save(name, data)
        with self.meter["lock"]:
            self.meter["now"] += 1
            self.meter["max"] = max(self.meter["max"], self.meter["now"])
        try:
            time.sleep(self.delay)
            if self.fail:
                raise StorageError(f"{self.location}: save {name} failed: access denied (test)")
            self.inner.save(name, data)
            self.meter["saved"] += 1
        finally:
            with self.meter["lock"]:
                self.meter["now"] -= 1


@contextmanager
def metered(delay: float = 0.05, fail: bool = False) -> Iterator[dict]:
    """Within: every store the repository layer opens is a SlowCountingStore; also counts
    finished packs not yet stored (held in memory) at their peak."""
    meter: dict = {"lock": threading.Lock(), "now": 0, "max": 0, "saved": 0, "opened": 0}
    meter.update(finished=0, held_max=0, spooled=0)
    real_open = safehold.repo.repository.open_store
    real_finish = writer_module.PackBuilder.finish
    real_spooled_finish = writer_module.SpooledPackBuilder.finish

    def open_metered(location: str) -> Store:
        meter["opened"] += 1
        return SlowCountingStore(real_open(location), meter, delay, fail)

    def finish(self, cipher):  # type: ignore[no-untyped-def]
        spooled = isinstance(self, writer_module.SpooledPackBuilder)
        result = (real_spooled_finish if spooled else real_finish)(self, cipher)
        with meter["lock"]:
            meter["finished"] += 1
            meter["spooled"] += spooled
            held = meter["finished"] - meter["saved"]
            meter["held_max"] = max(meter["held_max"], held)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(safehold.repo.repository, "open_store", open_metered)
        patch.setattr(writer_module.PackBuilder, "finish", finish)
        patch.setattr(writer_module.SpooledPackBuilder, "finish", finish)
        yield meter


def make_source(root: Path, files: int = 12, size: int = 200_000) -> Path:
    for number in range(files):  # incompressible: each file is a pack of 64 KiB packs
        write_file(root / f"f{number:02d}", os.urandom(size))
    return root


@pytest.mark.parametrize("backend", ["sftp", "s3"])
def test_remote_backups_upload_several_packs_at_once(
    backend: str, tmp_path: Path, remote_location: Callable[[str, str], str]
) -> None:
    url = remote_location(backend, "repo")
    init_repository(url, pack_size=64 * 1024)  # type: ignore[arg-type]  # many small packs
    source = make_source(tmp_path / "src")
    with Repository.open(url, PASSPHRASE.encode()) as repository:
        uploads = repository.store.recommended_uploads
    assert uploads >= 2
    with metered() as meter:
        summary = backup_json(url, source)  # type: ignore[arg-type]
    assert summary["files_new"] == 12
    assert meter["max"] == uploads  # several at once, never more than recommended
    assert meter["held_max"] <= uploads + 1  # temporary files stay bounded
    assert meter["spooled"] == meter["finished"] > 0  # built in temporary files, not memory
    assert meter["opened"] >= 1 + uploads  # the repository's store + one per upload thread
    result = run_cli("check", "--read-data", "--repo", url)
    assert result.code == 0, result.err
    restored = tmp_path / "out"
    result = run_cli("restore", f"latest:{source}", "--target", restored, "--repo", url)
    assert result.code == 0, result.err
    assert sorted(p.name for p in restored.iterdir()) == sorted(p.name for p in source.iterdir())


def test_a_failed_upload_fails_the_backup_without_a_snapshot(
    tmp_path: Path, remote_location: Callable[[str, str], str]
) -> None:
    url = remote_location("s3", "repo")
    init_repository(url, pack_size=64 * 1024)  # type: ignore[arg-type]
    source = make_source(tmp_path / "src")
    with metered(delay=0.01, fail=True):
        result = run_cli("backup", "--repo", url, source)
    assert_one_line_error(result, 15, "access denied (test)")
    assert run_cli("snapshots", "--json", "--repo", url).json() == []


def test_a_local_repository_uploads_one_pack_at_a_time_with_its_own_store(
    tmp_path: Path,
) -> None:
    repo = init_repository(tmp_path / "repo", pack_size=64 * 1024)
    source = make_source(tmp_path / "src")
    with metered(delay=0.01) as meter:
        backup_json(repo, source)
    assert meter["max"] == 1
    assert meter["held_max"] <= 2
    assert meter["spooled"] == 0  # packs in memory: they are written at once
    assert meter["opened"] == 1  # no second connection


def test_without_a_usable_temporary_directory_packs_are_built_in_memory(
    tmp_path: Path,
    remote_location: Callable[[str, str], str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = remote_location("sftp", "repo")
    init_repository(url, pack_size=64 * 1024)  # type: ignore[arg-type]
    source = make_source(tmp_path / "src")
    with monkeypatch.context() as patch, metered(delay=0.01) as meter:
        patch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-directory"))
        summary = backup_json(url, source)  # type: ignore[arg-type]
    assert summary["files_new"] == 12
    assert meter["finished"] > 0 and meter["spooled"] == 0
    warnings = [r.getMessage() for r in caplog.records if "built in memory" in r.getMessage()]
    assert len(warnings) == 1 and "no-such-directory" in warnings[0]
    result = run_cli("check", "--read-data", "--repo", url)
    assert result.code == 0, result.err


def test_a_full_temporary_directory_fails_the_backup_without_a_snapshot(
    tmp_path: Path, remote_location: Callable[[str, str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = remote_location("s3", "repo")
    init_repository(url, pack_size=64 * 1024)  # type: ignore[arg-type]
    source = make_source(tmp_path / "src")
    real_pwrite = os.pwrite

    def pwrite(fd: int, data, offset: int) -> int:  # type: ignore[no-untyped-def]
        if offset > 100_000:  # a pack's later blobs: the disk is full by then
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    with monkeypatch.context() as patch:
        patch.setattr(spool.os, "pwrite", pwrite)
        result = run_cli("backup", "--repo", url, source)
    assert_one_line_error(result, 16, "the temporary directory")
    assert run_cli("snapshots", "--json", "--repo", url).json() == []


@pytest.mark.parametrize(("backend", "size"), [("local", 16 * MiB), ("sftp", 32 * MiB)])
def test_init_writes_the_backends_pack_size(
    backend: str, size: int, remote_location: Callable[[str, str], str]
) -> None:
    url = remote_location(backend, "repo")
    assert run_cli("init", "--repo", url).code == 0
    with Repository.open(url, PASSPHRASE.encode()) as repository:
        assert repository.config["pack_size"] == size
