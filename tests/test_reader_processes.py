"""Leaf directories archived by reader processes (safehold/archive/readprocs.py).

The snapshot must be the very one the main process alone writes: the same root tree id
means the same entries (names, types, modes, owners, times, xattrs, contents, holes) all the
way down, under a first backup and under a backup that compares with a parent. A reader
process that dies costs time, not data; and it never sees the passphrase."""

from __future__ import annotations

import os
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    FAST_KDF,
    PASSPHRASE,
    build_full_tree,
    compare_trees,
    open_repository,
    run_cli,
    set_times,
    snapshot_entry,
)

from safehold.archive import readprocs
from safehold.archive.archiver import Archiver
from safehold.archive.backup import BackupResult, backup_paths
from safehold.repo.repository import Repository

KiB = 1024


def _archive_tree(root: Path) -> Path:
    """Every kind of entry (build_full_tree), plus study/series leaves of small files, one
    of them sparse, one with an xattr, one larger than a reader's inline size and one cut
    into several chunks."""
    build_full_tree(root)
    rnd = random.Random(14)
    for study in range(3):
        for series in range(4):
            leaf = root / "archive" / f"study_{study}" / f"series_{series}"
            leaf.mkdir(parents=True)
            for instance in range(25):
                (leaf / f"instance_{instance:03}.dcm").write_bytes(
                    rnd.randbytes(rnd.randint(0, 64 * KiB))
                )
    leaf = root / "archive" / "study_0" / "series_0"
    os.setxattr(leaf / "instance_000.dcm", "user.tag", b"leaf xattr")
    (leaf / "large.dcm").write_bytes(rnd.randbytes(700 * KiB))
    (leaf / "chunked.dcm").write_bytes(rnd.randbytes(3 * 1024 * KiB))
    (leaf / "link").symlink_to("instance_001.dcm")
    with open(leaf / "sparse.dcm", "wb") as handle:
        handle.truncate(1024 * KiB)
        handle.write(b"head")
    set_times(root)
    return root


@pytest.fixture
def offloads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Reader processes from the first leaf directory on; the directories handed to them."""
    monkeypatch.setattr(readprocs, "START_AFTER", 0)
    handed: list[bytes] = []
    for method in ("submit", "submit_names"):  # with the main process's listing, or names
        real = getattr(readprocs.ReaderProcesses, method)

        def recorded(self, path, *args, real=real, **kwargs):  # type: ignore[no-untyped-def]
            handed.append(path)
            return real(self, path, *args, **kwargs)

        monkeypatch.setattr(readprocs.ReaderProcesses, method, recorded)
    return handed


def _backup(
    repository: Repository,
    source: Path,
    processes: str,
    monkeypatch: pytest.MonkeyPatch,
    parent: dict | None = None,
) -> BackupResult:
    monkeypatch.setenv("SAFEHOLD_READ_PROCESSES", processes)
    return backup_paths(repository, [str(source)], parent=parent, force=parent is None)


def _source_tree(repo: Path, result: BackupResult, source: Path) -> bytes:
    """The tree id of ``source`` in the snapshot (the root tree also holds the metadata of
    /tmp and the like, which other processes change between two backups)."""
    return snapshot_entry(repo, result.snapshot_id, str(source))["subtree"]


def _restores_as_source(
    location: Path | str, snapshot_id: str, source: Path, tmp_path: Path
) -> None:
    """The snapshot restores to a tree equal to ``source``."""
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", location, snapshot_id, "--target", target)
    assert result.code == 0, result.err
    assert compare_trees(source, target / str(source).lstrip("/")) == []


def change_series(series: Path) -> None:
    """One file rewritten, one gone, one new, one chmod'ed (ctime only: its content is
    reused): two changed files."""
    (series / "instance_004.dcm").write_bytes(b"rewritten")
    (series / "instance_005.dcm").unlink()
    (series / "new.dcm").write_bytes(b"new instance")
    os.chmod(series / "instance_006.dcm", 0o600)


def _same_counts(left: BackupResult, right: BackupResult) -> None:
    for name in ("files_new", "files_changed", "files_unchanged", "dirs", "bytes_total"):
        assert left.snapshot["summary"][name] == right.snapshot["summary"][name], name
    assert left.archive.errors == right.archive.errors == []


def test_reader_processes_write_the_snapshot_the_main_process_would(
    repo: Path, tmp_path: Path, offloads: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _archive_tree(tmp_path / "src")
    with open_repository(repo) as repository:
        alone = _backup(repository, source, "0", monkeypatch)
        assert offloads == []
        spread = _backup(repository, source, "2", monkeypatch)
    leaves = {os.fsdecode(path).removeprefix(str(source)) for path in offloads}
    assert "/archive/study_0/series_0" in leaves and len(leaves) >= 12, leaves
    assert _source_tree(repo, spread, source) == _source_tree(repo, alone, source)
    _same_counts(alone, spread)
    assert spread.archive.warnings == []
    _restores_as_source(repo, spread.snapshot_id, source, tmp_path)


def test_reader_processes_compare_with_the_parent_as_the_main_process_does(
    repo: Path, tmp_path: Path, offloads: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _archive_tree(tmp_path / "src")
    with open_repository(repo) as repository:
        first = _backup(repository, source, "0", monkeypatch)
        change_series(source / "archive" / "study_1" / "series_2")
        parent = dict(first.snapshot)
        alone = _backup(repository, source, "0", monkeypatch, parent=parent)
        spread = _backup(repository, source, "2", monkeypatch, parent=parent)
    assert offloads, "no directory went to a reader process"
    assert (
        _source_tree(repo, spread, source)
        == _source_tree(repo, alone, source)
        != _source_tree(repo, first, source)
    )
    _same_counts(alone, spread)
    assert spread.snapshot["summary"]["files_changed"] == 2  # rewritten and chmod'ed
    assert alone.written.blobs_new > 0 and spread.written.blobs_new == 0  # stored by `alone`
    # The directories reader processes listed are remembered for the next backup as well.
    with open_repository(repo) as repository:
        remembered = repository.load_dir_table(spread.snapshot)
        assert remembered == repository.load_dir_table(alone.snapshot) != {}


@pytest.fixture
def declined(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The directories reader processes gave back to the main process."""
    given_back: list[bytes] = []
    real = Archiver._decline

    def recorded(self, node, path):  # type: ignore[no-untyped-def]
        given_back.append(path)
        return real(self, node, path)

    monkeypatch.setattr(Archiver, "_decline", recorded)
    return given_back


def test_a_directory_with_a_hard_link_is_given_back_and_archived_by_the_main_process(
    repo: Path,
    tmp_path: Path,
    offloads: list[bytes],
    declined: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The main process hands a reader process a directory's names when their types show no
    subdirectory; a hard-linked file shows only in lstat, in the reader process, which gives
    the directory back: its links must be matched with the other links of the run."""
    source = _archive_tree(tmp_path / "src")
    series = source / "archive" / "study_2" / "series_3"
    os.link(series / "instance_000.dcm", series / "linked.dcm")
    os.link(series / "instance_001.dcm", source / "archive" / "study_2" / "outside.dcm")
    set_times(source)
    with open_repository(repo) as repository:
        alone = _backup(repository, source, "0", monkeypatch)
        spread = _backup(repository, source, "2", monkeypatch)
    assert os.fsencode(series) in declined and os.fsencode(series) in offloads
    assert _source_tree(repo, spread, source) == _source_tree(repo, alone, source)
    _same_counts(alone, spread)
    assert spread.archive.warnings == []
    _restores_as_source(repo, spread.snapshot_id, source, tmp_path)


def test_without_the_parents_trees_in_the_cache_directories_are_given_back(
    repo: Path,
    tmp_path: Path,
    offloads: list[bytes],
    declined: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader process reads the parent's tree of a changed directory from the local tree
    cache only; when it is not there (a new machine, a cleared cache) the main process, which
    reads the repository, archives the directory (with a reader process, from its listing)."""
    source = _archive_tree(tmp_path / "src")
    with open_repository(repo) as repository:
        first = _backup(repository, source, "0", monkeypatch)
        for study in range(3):
            for series in range(4):
                leaf = source / "archive" / f"study_{study}" / f"series_{series}"
                (leaf / "instance_003.dcm").write_bytes(f"new {study} {series}".encode())
        parent = dict(first.snapshot)
        alone = _backup(repository, source, "0", monkeypatch, parent=parent)
        shutil.rmtree(tmp_path / "xdg-cache" / "safehold" / repository.config["id"] / "trees")
        spread = _backup(repository, source, "2", monkeypatch, parent=parent)
    assert len(set(declined)) >= 11, declined  # every changed series but the first listed here
    assert _source_tree(repo, spread, source) == _source_tree(repo, alone, source)
    _same_counts(alone, spread)
    assert spread.snapshot["summary"]["files_changed"] == 12
    assert spread.archive.warnings == []


def test_a_reader_process_that_dies_costs_time_not_data(
    repo: Path, tmp_path: Path, offloads: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _archive_tree(tmp_path / "src")
    real_init = readprocs.ReaderProcesses.__init__
    seen: dict[int, tuple[bytes, bytes]] = {}

    def start_then_kill(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_init(self, *args, **kwargs)
        for pid in self.pids:
            with (
                open(f"/proc/{pid}/environ", "rb") as env,
                open(f"/proc/{pid}/cmdline", "rb") as cmd,
            ):
                seen[pid] = (env.read(), cmd.read())
            os.kill(pid, signal.SIGKILL)

    monkeypatch.setattr(readprocs.ReaderProcesses, "__init__", start_then_kill)
    with open_repository(repo) as repository:
        alone = _backup(repository, source, "0", monkeypatch)
        spread = _backup(repository, source, "2", monkeypatch)
    assert len(seen) == 2
    for environment, command in seen.values():
        assert PASSPHRASE.encode() not in environment + command
        assert b"SAFEHOLD_PASSPHRASE" not in environment
    assert _source_tree(repo, spread, source) == _source_tree(repo, alone, source)
    _same_counts(alone, spread)
    messages = [warning["message"] for warning in spread.archive.warnings]
    assert messages and all("reader process" in message for message in messages), messages


def test_without_reader_processes_the_backup_goes_on_in_one_process(
    repo: Path, tmp_path: Path, offloads: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _archive_tree(tmp_path / "src")

    def no_memfd(name: str) -> int:
        raise OSError(38, "Function not implemented")

    with open_repository(repo) as repository:
        alone = _backup(repository, source, "0", monkeypatch)
        monkeypatch.setattr(os, "memfd_create", no_memfd)
        spread = _backup(repository, source, "2", monkeypatch)
    assert _source_tree(repo, spread, source) == _source_tree(repo, alone, source)
    _same_counts(alone, spread)
    assert [w["message"] for w in spread.archive.warnings] == [
        "reader processes could not start ([Errno 38] Function not implemented): one core is used"
    ]


@pytest.mark.parametrize("backend", ["sftp", "s3"])
def test_reader_processes_packs_reach_remote_repositories(
    backend: str,
    remote_location: Callable[[str, str], str],
    tmp_path: Path,
    offloads: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = _archive_tree(tmp_path / "src")
    location = remote_location(backend, "repo")
    Repository.init(location, PASSPHRASE.encode(), kdf=FAST_KDF).close()
    with Repository.open(location, PASSPHRASE.encode()) as repository:
        result = _backup(repository, source, "2", monkeypatch)
    assert offloads and result.archive.warnings == []
    assert run_cli("check", "--repo", location, "--read-data").code == 0
    _restores_as_source(location, result.snapshot_id, source, tmp_path)


def test_directories_waiting_for_a_readers_pack_stay_few(
    repo: Path, tmp_path: Path, offloads: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory a reader answered finishes once the pack holding its last blobs is sent;
    when packs fill slowly, the reader is told to send it every SETTLE_EVERY answers, so the
    directories (and their listings) waiting in the main process do not grow with the run."""
    source = tmp_path / "src"
    for number in range(40):
        leaf = source / f"series_{number:02}"
        leaf.mkdir(parents=True)
        for instance in range(5):
            (leaf / f"{instance}.dcm").write_bytes(os.urandom(2000))
    monkeypatch.setattr(readprocs, "SETTLE_EVERY", 1)
    monkeypatch.setattr(readprocs, "IN_FLIGHT", 4)  # 40 directories: the bound must bite
    waiting: list[int] = []
    real = readprocs.ReaderProcesses._settled

    def settled(self, reader):  # type: ignore[no-untyped-def]
        waiting.append(len(reader.answered))
        return real(self, reader)

    monkeypatch.setattr(readprocs.ReaderProcesses, "_settled", settled)
    with open_repository(repo) as repository:
        result = _backup(repository, source, "2", monkeypatch)
    assert len(offloads) == 40 and result.archive.errors == []
    assert max(waiting) <= 1 + readprocs.IN_FLIGHT, waiting
    _restores_as_source(repo, result.snapshot_id, source, tmp_path)


def test_directories_larger_than_a_pipe_go_to_reader_processes(
    make_repo: Callable[..., Path],
    tmp_path: Path,
    offloads: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two leaf directories whose listings (long names) are larger than a pipe holds, with
    small packs, so that requests, packs and freed buffers cross while pipes are full."""
    repo = make_repo("repo", pack_size=64 * KiB)
    source = tmp_path / "src"
    for folder in ("a", "b"):
        (source / folder).mkdir(parents=True)
        for number in range(6000):
            name = f"{number:06}-" + "n" * 180
            (source / folder / name).write_bytes(os.urandom(100 + number % 900))
    with open_repository(repo) as repository:
        result = _backup(repository, source, "2", monkeypatch)
    assert len(offloads) == 2 and result.archive.errors == []
    assert result.written.packs_written > 50
    _restores_as_source(repo, result.snapshot_id, source, tmp_path)
