"""A full disk during a backup: a clear error (exit 16), nothing corrupted, and the next
backup works once there is space again. The repository lives on a small tmpfs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import init_repository, run_cli


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_a_clear_error_and_the_next_backup_works(small_disk: Path, tmp_path: Path):
    repo = init_repository(small_disk / "repo")
    source = tmp_path / "source"
    source.mkdir()
    (source / "small.txt").write_text("fits\n")
    assert run_cli("backup", "--repo", repo, source).code == 0
    (source / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))  # twice the disk

    full = run_cli("backup", "--repo", repo, source)
    assert full.code == 16
    assert "no space left" in full.err and str(repo) in full.err
    assert len(full.err.strip().splitlines()) == 1
    checked = run_cli("check", "--repo", repo, "--read-data")
    assert checked.code == 0, checked.err
    assert len(os.listdir(repo / "snapshots")) == 1

    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)
    assert run_cli("backup", "--repo", repo, source).code == 0
    target = tmp_path / "restore"
    assert run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target).code == 0
    assert (target / "big.bin").read_bytes() == (source / "big.bin").read_bytes()
    assert run_cli("check", "--repo", repo, "--read-data").code == 0


def test_a_restore_onto_a_full_disk_leaves_no_partial_file_and_a_rerun_completes(
    small_disk: Path, tmp_path: Path
) -> None:
    repo = init_repository(tmp_path / "repo")
    source = tmp_path / "source"
    source.mkdir()
    for number in range(40):
        (source / f"f{number:02}.bin").write_bytes(os.urandom(200 * 1024))  # 8 MB in all
    (source / "empty").write_bytes(b"")
    assert run_cli("backup", "--repo", repo, source).code == 0
    target = small_disk / "restore"

    full = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)

    assert full.code == 3, full.err
    written = [path for path in target.iterdir() if path.is_file()]
    assert 0 < len(written) < 41
    for path in written:  # whatever is there is complete and right
        assert path.read_bytes() == (source / path.name).read_bytes(), path
    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)
    again = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)
    assert again.code == 0, again.err  # the files restored before are kept ...
    assert f"{len(written)} already there as in the snapshot" in again.out
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in source.iterdir())
    for path in source.iterdir():  # ... and the rest is restored now
        assert (target / path.name).read_bytes() == path.read_bytes()
