"""Incremental backups reuse the parent snapshot; equal content is stored once."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PASSPHRASE, backup_json, compare_trees, open_repository, run_cli, write_file

from safehold.repo.format import BLOB_DATA


def data_blob_count(repo: Path) -> int:
    with open_repository(repo) as repository:
        return sum(
            1 for _, location in repository.index.entries() if location.blob_type == BLOB_DATA
        )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    rnd = random.Random(7)
    root = tmp_path / "src"
    write_file(root / "a.bin", rnd.randbytes(200 * 1024))
    write_file(root / "b.txt", b"bee\n" * 1000)
    write_file(root / "empty", b"")
    write_file(root / "sub" / "c.bin", rnd.randbytes(600 * 1024))
    return root


def test_first_backup_reads_every_file(repo: Path, source: Path) -> None:
    summary = backup_json(repo, source)
    assert summary["files_new"] == 4
    assert summary["files_unchanged"] == summary["files_changed"] == 0
    assert summary["bytes_read"] == summary["bytes_total"] == 200 * 1024 + 4000 + 600 * 1024
    assert summary["errors"] == [] and summary["warnings"] == []


def test_second_backup_of_an_unchanged_tree_reads_nothing(repo: Path, source: Path) -> None:
    first = backup_json(repo, source)
    blobs = data_blob_count(repo)
    second = backup_json(repo, source)
    assert second["bytes_read"] == 0
    assert second["files_unchanged"] == 4
    assert second["files_new"] == second["files_changed"] == 0
    # Only trees of directories above the source (/tmp changes under us) may be new.
    assert data_blob_count(repo) == blobs
    assert second["bytes_total"] == first["bytes_total"]


def test_after_modifying_one_file_only_that_file_is_read(repo: Path, source: Path) -> None:
    backup_json(repo, source)
    with open(source / "b.txt", "ab") as handle:
        handle.write(b"one more line\n")
    summary = backup_json(repo, source)
    assert summary["files_changed"] == 1
    assert summary["files_unchanged"] == 3
    assert summary["bytes_read"] == os.path.getsize(source / "b.txt")


def test_force_rereads_everything(repo: Path, source: Path) -> None:
    first = backup_json(repo, source)
    blobs = data_blob_count(repo)
    forced = backup_json(repo, source, "--force")
    assert forced["bytes_read"] == first["bytes_total"]
    assert data_blob_count(repo) == blobs  # read again, but nothing new to store


def test_a_copy_of_a_file_adds_no_data_blobs(repo: Path, source: Path) -> None:
    backup_json(repo, source)
    blobs = data_blob_count(repo)
    shutil.copyfile(source / "sub" / "c.bin", source / "copy-of-c.bin")
    summary = backup_json(repo, source)
    assert summary["files_new"] == 1
    assert data_blob_count(repo) == blobs
    assert summary["bytes_added_raw"] < 10 * 1024  # only the changed tree blobs


def test_equal_files_in_one_backup_are_stored_once(repo: Path, tmp_path: Path) -> None:
    root = tmp_path / "same"
    content = random.Random(3).randbytes(100 * 1024)
    for name in ("one", "two", "three"):
        write_file(root / name, content)
    backup_json(repo, root)
    assert data_blob_count(repo) == 1


def test_snapshot_records_its_parent(repo: Path, source: Path) -> None:
    first = backup_json(repo, source)
    second = backup_json(repo, source)
    with open_repository(repo) as repository:
        snapshot = repository.load_snapshot(second["snapshot_id"])
    assert snapshot["parent"] == first["snapshot_id"]


def test_unchanged_full_tree_reads_nothing_the_second_time(repo: Path, full_tree: Path) -> None:
    backup_json(repo, full_tree)
    blobs = data_blob_count(repo)
    second = backup_json(repo, full_tree)
    assert second["bytes_read"] == 0
    assert second["files_new"] == second["files_changed"] == 0
    assert data_blob_count(repo) == blobs


# ------------------------------------------------------------------ small chunks

SMALL_CHUNKS = {"min_size": 4096, "avg_size": 16384, "max_size": 65536}


def test_insertion_in_the_middle_stores_only_a_few_new_chunks(make_repo, tmp_path) -> None:
    repo = make_repo(chunker=SMALL_CHUNKS)
    content = random.Random(5).randbytes(1024 * 1024)
    write_file(tmp_path / "src" / "data.bin", content)
    first = backup_json(repo, tmp_path / "src")
    assert first["blobs_new"] > 20  # many chunks, plus the trees
    write_file(tmp_path / "src" / "data.bin", content[:500_000] + b"inserted" + content[500_000:])
    second = backup_json(repo, tmp_path / "src")
    assert second["files_changed"] == 1
    assert second["bytes_added_raw"] < 4 * SMALL_CHUNKS["max_size"]


def test_changed_content_with_the_old_mtime_is_still_read(repo: Path, source: Path) -> None:
    backup_json(repo, source)
    before = os.stat(source / "b.txt")
    with open(source / "b.txt", "r+b") as handle:
        handle.write(b"BEE")  # same size
    os.utime(source / "b.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
    summary = backup_json(repo, source)
    assert summary["files_changed"] == 1
    assert summary["bytes_read"] == before.st_size


def test_first_backup_counts_no_file_as_unchanged(repo: Path, tmp_path: Path) -> None:
    write_file(tmp_path / "src" / "one", b"linked")
    os.link(tmp_path / "src" / "one", tmp_path / "src" / "two")
    summary = backup_json(repo, tmp_path / "src")
    assert summary["files_unchanged"] == 0
    assert summary["files_new"] == 2


def test_metadata_only_changes_reach_the_next_snapshot(repo, source, tmp_path) -> None:
    backup_json(repo, source)
    os.chmod(source / "a.bin", 0o600)
    os.setxattr(source / "sub" / "c.bin", "user.added", b"later")
    os.utime(source / "empty", ns=(1, 1_000_000_000))
    backup_json(repo, source)
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)
    assert result.code == 0, result.err
    assert compare_trees(source, target, include_root=False) == []


def test_each_kind_of_change_below_unchanged_siblings_reaches_the_snapshot(
    repo: Path, source: Path, tmp_path: Path
) -> None:
    """Directories whose entries all equal the parent's reuse the parent's tree without
    encoding it: every change one level down must still produce a new tree up to the root."""
    for sibling in range(3):
        write_file(source / f"sib{sibling}" / "keep.txt", b"unchanged\n")
    backup_json(repo, source)
    changes = [
        lambda: (source / "sub" / "c.bin").rename(source / "sub" / "renamed.bin"),
        lambda: (source / "b.txt").unlink(),
        lambda: os.chmod(source / "sub", 0o700),
        lambda: write_file(source / "sub" / "deeper" / "new.txt", b"new\n"),
        lambda: os.setxattr(source / "sib1", "user.note", b"x"),
    ]
    for number, change in enumerate(changes):
        change()
        summary = backup_json(repo, source)
        assert summary["files_unchanged"] >= 3  # the siblings came from the parent snapshot
        target = tmp_path / f"restored-{number}"
        result = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)
        assert result.code == 0, result.err
        assert compare_trees(source, target, include_root=False) == []


def test_backups_of_a_small_repository_never_load_numpy(
    repo: Path, source: Path, tmp_path: Path
) -> None:
    """numpy (the arrays of a large index) is loaded only for an index of more than
    SMALL_INDEX blobs: not by a backup of a small repository that writes new trees and reads
    a changed large file (chunked, its blobs copied into packs)."""
    backup_json(repo, source)
    (source / "sub" / "new-dir").mkdir()  # sub's mtime changes: its tree and the root's are new
    write_file(source / "sub" / "c.bin", random.Random(8).randbytes(600 * 1024))  # chunked
    script = (
        "import sys\n"
        "from safehold.cli.main import main\n"
        f"code = main(['backup', '--repo', {str(repo)!r}, '--quiet', {str(source)!r}])\n"
        "print(code, 'numpy' in sys.modules)\n"
    )
    env = dict(os.environ, SAFEHOLD_PASSPHRASE=PASSPHRASE, SAFEHOLD_CACHE_DIR=str(tmp_path / "c"))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.stdout.split() == ["0", "False"], done.stderr
    with open_repository(repo) as repository:
        snapshots = [repository.load_snapshot(n.split("/")[1]) for n in repository.snapshot_names()]
    last = max(snapshots, key=lambda snapshot: snapshot["time"])["summary"]
    assert last["files_changed"] == 1 and last["bytes_read"] == 600 * 1024
    assert last["blobs_new"] >= 3  # the two trees and at least one chunk of c.bin


def test_an_unchanged_backup_loads_neither_the_chunker_nor_the_restorer(
    repo: Path, source: Path, tmp_path: Path
) -> None:
    """Start-up is spent while the key is derived, on both cores: a backup that has nothing to
    cut does not import pyfastcdc (and typing_extensions with it), nor the restore code."""
    env = dict(os.environ, SAFEHOLD_PASSPHRASE=PASSPHRASE, SAFEHOLD_CACHE_DIR=str(tmp_path / "c"))
    script = (
        "import sys\n"
        "from safehold.cli.main import main\n"
        f"code = main(['backup', '--repo', {str(repo)!r}, '--quiet', {str(source)!r}])\n"
        "print(code, *(name in sys.modules for name in\n"
        "    ('pyfastcdc', 'safehold.archive.restorer', 'numpy')))\n"
    )

    def run() -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
        )
        return done.stdout.split()

    assert run() == ["0", "True", "False", "False"]  # the first backup cuts a.bin and c.bin
    assert run() == ["0", "False", "False", "False"]
