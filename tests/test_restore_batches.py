"""A restore writes files in batches as it walks: what it holds is bounded by a batch, not by
the number of files in the snapshot, and the result is the same as in one go."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest
from conftest import backup_json, compare_trees, open_repository, resolve, write_file

from safehold.archive import contentwriter, tree
from safehold.archive.restorer import Restorer


def _restore(repo: Path, target: Path) -> None:
    with open_repository(repo) as repository:
        snapshot = resolve(repository, "latest")
        entry = tree.find(repository, snapshot, "/")
        stats = Restorer(repository, str(target)).restore(entry, "/")
    assert not (stats.errors or stats.damaged or stats.skipped), stats


def test_batches_restore_everything_a_single_run_does(
    repo: Path, full_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup_json(repo, full_tree)
    monkeypatch.setattr(contentwriter, "BATCH_FILES", 3)  # many batches, hard links across them
    target = tmp_path / "restored"
    _restore(repo, target)
    assert compare_trees(full_tree, target / full_tree.relative_to("/")) == []


def _small_files(root: Path, count: int) -> Path:
    for number in range(count):
        write_file(root / f"d{number % 8}" / f"f{number:05}", number.to_bytes(4, "big") * 64)
    return root


def _peak_restoring(repo: Path, target: Path) -> int:
    tracemalloc.start()
    try:
        _restore(repo, target)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_restore_memory_does_not_grow_with_the_number_of_files(
    make_repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contentwriter, "BATCH_FILES", 200)
    peaks = {}
    for count in (1000, 4000):
        repo = make_repo(f"repo{count}")
        backup_json(repo, _small_files(tmp_path / f"src{count}", count))
        peaks[count] = _peak_restoring(repo, tmp_path / f"restored{count}")
    # Four times the files: the peak grows by far less than the per-file plan would cost
    # (about 2 KB a file held until the end before batching: 6 MB for 3,000 more files).
    assert peaks[4000] - peaks[1000] < 1_500_000, peaks


def test_an_error_in_a_batch_written_beside_the_walk_is_not_lost(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches are written in a thread while the walk plans the next: what goes wrong there
    must end the restore, not vanish with the thread (a restore claiming files it never
    wrote)."""
    backup_json(repo, _small_files(tmp_path / "src", 40))
    monkeypatch.setattr(contentwriter, "BATCH_FILES", 5)
    written = []
    original = contentwriter.ContentWriter._pack

    def failing_pack(self, pack_id, ordered):  # type: ignore[no-untyped-def]
        if written:
            raise RuntimeError("disk controller on fire")
        written.append(pack_id)
        original(self, pack_id, ordered)

    monkeypatch.setattr(contentwriter.ContentWriter, "_pack", failing_pack)
    with pytest.raises(RuntimeError, match="on fire"):
        _restore(repo, tmp_path / "restored")


def test_pieces_are_read_into_buffers_kept_for_the_whole_restore(
    make_repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new 16 MiB bytes object per piece is kept by glibc's heaps once freed (the mixed
    restore peaked at 201-249 MB instead of 142-161); a local restore reads every piece into
    one of a few buffers it keeps, across batches."""
    from safehold.store.local import DurablePosixFS

    repo = make_repo("repo", pack_size=64 * 1024)  # many packs, many pieces
    source = tmp_path / "src"
    for number in range(600):  # incompressible: about 20 packs
        write_file(source / f"d{number % 6}" / f"f{number:04}", os.urandom(2048))
    backup_json(repo, source)
    monkeypatch.setattr(contentwriter, "BATCH_FILES", 100)  # several batches
    buffers: list[int] = []
    original = DurablePosixFS.load_into

    def recording(self, name, offset, size, buffer):  # type: ignore[no-untyped-def]
        buffers.append(id(buffer))
        return original(self, name, offset, size, buffer)

    monkeypatch.setattr(DurablePosixFS, "load_into", recording)
    _restore(repo, tmp_path / "restored")
    assert compare_trees(source, tmp_path / "restored" / source.relative_to("/")) == []
    assert len(buffers) > 20  # the pieces of every batch went through it
    assert len(set(buffers)) <= 8  # a few buffers, not one per piece
