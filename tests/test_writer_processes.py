"""Writer processes (safehold/archive/writeprocs.py): the files of a single blob are written
out by processes of their own, with the same result as in the main process: every entry equal
(owners, modes, times, xattrs, holes, hard links), damage named, nothing left half-written,
and a writer process that dies costs time, not files."""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    PASSPHRASE,
    backup_json,
    blob_place,
    compare_trees,
    flip_byte,
    init_repository,
    needs_root,
    open_repository,
    resolve,
    run_cli,
    snapshot_entry,
    write_file,
)

from safehold.archive import contentwriter, tree, writeprocs
from safehold.archive.contentwriter import IN_PROGRESS
from safehold.archive.restorer import Restorer, RestoreStats
from safehold.crypto import NONCE_SIZE


class Spy:
    """Counts the pieces handed to writer processes; ``before`` runs before each."""

    def __init__(self) -> None:
        self.pieces = 0
        self.files = 0
        self.before = None


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """Two writer processes from the first batch on."""
    monkeypatch.setenv("SAFEHOLD_WRITE_PROCESSES", "2")
    monkeypatch.setattr(contentwriter, "PROCESSES_AFTER", 0)
    spy = Spy()
    original = writeprocs.WriterProcesses.write

    def write(self, pack_id: bytes, data: bytes, blobs: list) -> list:  # type: ignore[no-untyped-def]
        spy.pieces += 1
        spy.files += sum(len(row[5]) for row in blobs)
        if spy.before is not None:
            spy.before(self, blobs)
        return original(self, pack_id, data, blobs)

    monkeypatch.setattr(writeprocs.WriterProcesses, "write", write)
    return spy


def _restore(repo: Path, target: Path, **options: object) -> RestoreStats:
    with open_repository(repo) as repository:
        snapshot = resolve(repository, "latest")
        entry = tree.find(repository, snapshot, "/")
        return Restorer(repository, str(target), **options).restore(entry, "/")  # type: ignore[arg-type]


def test_writer_processes_restore_what_the_main_process_would(
    repo: Path, full_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writers: Spy
) -> None:
    backup_json(repo, full_tree)
    monkeypatch.setattr(contentwriter, "BATCH_FILES", 3)  # many batches, hard links across them
    target = tmp_path / "restored"
    stats = _restore(repo, target)
    assert not (stats.errors or stats.damaged or stats.skipped or stats.processes_lost), stats
    assert compare_trees(full_tree, target / full_tree.relative_to("/")) == []
    assert writers.pieces > 0 and writers.files > 0  # the processes wrote (part of) it


def _small_files(root: Path, count: int) -> Path:
    for number in range(count):
        write_file(root / f"d{number % 6}" / f"f{number:04}", number.to_bytes(4, "big") * 300)
        os.utime(root / f"d{number % 6}" / f"f{number:04}", ns=(number * 10**9, number * 10**9))
    return root


def test_a_killed_writer_process_costs_time_not_files(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writers: Spy
) -> None:
    """Both writer processes are SIGKILLed while a piece is on its way to one of them, which
    (as if it had died in the middle) left one file complete and one IN_PROGRESS: the main
    process counts the first, replaces the second and writes the rest; nothing is missing."""
    source = _small_files(tmp_path / "src", 300)
    backup_json(repo, source)
    monkeypatch.setattr(contentwriter, "BATCH_FILES", 40)
    planted: dict[str, bytes] = {}

    def kill_on_third_piece(processes: writeprocs.WriterProcesses, blobs: list) -> None:
        if writers.pieces != 3:
            return
        complete, half = blobs[0][5][0], blobs[-1][5][-1]
        assert complete[0] != half[0], "the piece should hold two files"
        copy = source / os.fsdecode(complete[0]).split("/src/", 1)[1]
        with open(complete[0], "xb") as handle:
            handle.write(copy.read_bytes())
        os.utime(complete[0], ns=(complete[5], complete[5]))
        with open(half[0], "xb") as handle:
            handle.write(b"half")
        os.chmod(half[0], IN_PROGRESS)
        planted.update(complete=complete[0], half=half[0])
        for pid in processes.pids:
            os.kill(pid, signal.SIGKILL)

    writers.before = kill_on_third_piece
    target = tmp_path / "restored"
    stats = _restore(repo, target)
    assert planted, "no third piece was handed over"
    assert stats.processes_lost == 2
    assert not (stats.errors or stats.damaged or stats.skipped), stats
    assert stats.files == 300
    assert compare_trees(source, target / source.relative_to("/")) == []


def test_a_damaged_blob_is_named_and_its_file_never_left(
    repo: Path, tmp_path: Path, writers: Spy
) -> None:
    source = tmp_path / "src"
    write_file(source / "victim.bin", os.urandom(64 * 1024))
    write_file(source / "healthy.bin", os.urandom(64 * 1024))
    backup_json(repo, source)
    entry = snapshot_entry(repo, "latest", f"{source}/victim.bin")
    pack, offset, length = blob_place(repo, entry["content"][0])
    flip_byte(pack, offset + NONCE_SIZE + length // 2)
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)
    assert result.code == 13, result.err
    assert f"NOT restored, damaged in the repository: {target}/victim.bin" in result.err
    assert not (target / "victim.bin").exists()
    assert (target / "healthy.bin").read_bytes() == (source / "healthy.bin").read_bytes()
    assert writers.files == 2


def test_a_file_in_the_way_is_not_written_over(repo: Path, tmp_path: Path, writers: Spy) -> None:
    """A file that appears after the plan (O_EXCL in the writer process) is left as it is and
    named; the rest is restored."""
    source = _small_files(tmp_path / "src", 20)
    backup_json(repo, source)
    target = tmp_path / "restored"
    intruder = target / source.relative_to("/") / "d1" / "f0001"

    def plant(_processes: writeprocs.WriterProcesses, _blobs: list) -> None:
        if not intruder.exists():
            intruder.write_bytes(b"not the restore's")

    writers.before = plant
    stats = _restore(repo, target)
    assert intruder.read_bytes() == b"not the restore's"
    assert [error["path"] for error in stats.errors] == [str(intruder)]
    assert stats.files == 19


def test_writer_processes_get_no_passphrase(repo: Path, tmp_path: Path, writers: Spy) -> None:
    source = _small_files(tmp_path / "src", 20)
    backup_json(repo, source)
    seen: list[bytes] = []

    def look(processes: writeprocs.WriterProcesses, _blobs: list) -> None:
        for pid in processes.pids:
            for name in ("environ", "cmdline"):
                seen.append(Path(f"/proc/{pid}/{name}").read_bytes())

    writers.before = look
    _restore(repo, tmp_path / "restored")
    assert seen
    assert not [found for found in seen if PASSPHRASE.encode() in found]
    assert not [found for found in seen if b"SAFEHOLD_PASSPHRASE" in found]


@needs_root
def test_no_special_holds_in_writer_processes(repo: Path, tmp_path: Path, writers: Spy) -> None:
    source = tmp_path / "src"
    tool = source / "tool"
    write_file(tool, b"#!/bin/sh\n")
    os.chmod(tool, 0o6755)
    capability = bytes.fromhex("0000000200200000000000000000000000000000")  # cap_net_raw
    os.setxattr(tool, "security.capability", capability)
    backup_json(repo, source)
    stats = _restore(repo, tmp_path / "safe", no_special=True)
    restored = tmp_path / "safe" / tool.relative_to("/")
    assert not stats.errors, stats
    assert stat.S_IMODE(os.lstat(restored).st_mode) == 0o755
    assert "security.capability" not in os.listxattr(restored)
    assert writers.files == 1


def test_writer_processes_can_be_turned_off(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writers: Spy
) -> None:
    monkeypatch.setenv("SAFEHOLD_WRITE_PROCESSES", "0")
    source = _small_files(tmp_path / "src", 20)
    backup_json(repo, source)
    _restore(repo, tmp_path / "restored")
    assert writers.pieces == 0
    assert compare_trees(source, tmp_path / "restored" / source.relative_to("/")) == []


@pytest.mark.parametrize("backend", ["sftp", "s3"])
def test_writer_processes_restore_from_remote_repositories(
    backend: str,
    tmp_path: Path,
    remote_location: Callable[[str, str], str],
    monkeypatch: pytest.MonkeyPatch,
    writers: Spy,
) -> None:
    """The pieces come from a real sshd / S3 server over several connections and are
    written by the writer processes; the restore equals the source."""
    url = remote_location(backend, "repo")
    init_repository(url, pack_size=64 * 1024)  # type: ignore[arg-type]  # many small packs
    source = _small_files(tmp_path / "src", 120)
    backup_json(url, source)  # type: ignore[arg-type]
    monkeypatch.setattr(contentwriter, "BATCH_FILES", 50)
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", url, f"latest:{source}", "--target", target)
    assert result.code == 0, result.err
    assert compare_trees(source, target, include_root=False) == []
    assert writers.files == 120
