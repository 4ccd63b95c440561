"""Who reads which file during a backup, and what happens when a file changes as it is read.

Small files are read by the walking thread itself (``INLINE_READ``), larger ones by the reader
threads; either way a file that changes while being read is stored as read and named in a
warning, and the backup restores what was read."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest
from conftest import backup_json, compare_trees, run_cli, write_file

from safehold.archive import archiver
from safehold.archive.reader import FileReader


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """File name -> name of the thread that read it."""
    seen: dict[str, str] = {}
    real = FileReader.read_file

    def read_file(self, path: bytes, entry: dict) -> None:  # type: ignore[no-untyped-def]
        seen[os.path.basename(os.fsdecode(path))] = threading.current_thread().name
        real(self, path, entry)

    monkeypatch.setattr(FileReader, "read_file", read_file)
    return seen


def test_small_files_are_read_by_the_walk_larger_ones_by_readers(
    repo: Path, tmp_path: Path, reads: dict[str, str]
) -> None:
    rnd = random.Random(3)
    source = tmp_path / "src"
    write_file(source / "tiny.txt", b"tiny")
    write_file(source / "limit.bin", rnd.randbytes(archiver.INLINE_READ))
    write_file(source / "large.bin", rnd.randbytes(archiver.INLINE_READ + 1))
    write_file(source / "linked.txt", b"small, but hard-linked")
    os.link(source / "linked.txt", source / "link.txt")
    summary = backup_json(repo, source)
    assert summary["files_new"] == 5 and summary["errors"] == []
    walker = threading.current_thread().name  # run_cli runs the command in this thread
    assert reads["tiny.txt"] == reads["limit.bin"] == walker
    assert reads["large.bin"].startswith("reader")
    # hard links take the readers' path, which matches links to the file read once
    assert set(reads) == {"tiny.txt", "limit.bin", "large.bin", "link.txt"}  # first in order
    assert reads["link.txt"].startswith("reader")
    target = tmp_path / "restored"
    assert run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target).code == 0
    compare_trees(source, target)


@pytest.mark.parametrize("size", [100, 3 * 1024 * 1024], ids=["inline", "reader"])
def test_a_file_that_changes_while_read_is_stored_as_read_with_a_warning(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    source = tmp_path / "src"
    original = random.Random(size).randbytes(size)
    growing = write_file(source / "growing.log", original)
    write_file(source / "calm.txt", b"calm")
    real_store = FileReader._store

    def store_then_append(self, data):  # type: ignore[no-untyped-def]
        blob_id = real_store(self, data)
        if bytes(data[:16]) == original[:16]:  # the file's first chunk: now it changes
            with open(growing, "ab") as handle:
                handle.write(b"appended while safehold was reading\n")
        return blob_id

    monkeypatch.setattr(FileReader, "_store", store_then_append)
    summary = backup_json(repo, source)
    assert summary["errors"] == []
    assert [(w["path"], w["message"]) for w in summary["warnings"]] == [
        (str(growing), "changed while being read")
    ]
    target = tmp_path / "restored"
    assert run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target).code == 0
    restored = (target / "growing.log").read_bytes()
    assert restored == original  # what was read: the part before the append
    assert (target / "calm.txt").read_bytes() == b"calm"
