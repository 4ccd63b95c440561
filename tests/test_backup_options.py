"""Backup options: --exclude, --exclude-file, --exclude-caches, --one-file-system, --tag."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IS_ROOT, run_cli, write_file

from safehold.archive.excludes import CACHEDIR_SIGNATURE


def listed_paths(repo: Path, source: Path) -> set[str]:
    """Paths below ``source`` in the latest snapshot, relative to it."""
    result = run_cli("ls", "--repo", repo, "--json", "-R", f"latest:{source}")
    assert result.code == 0, result.err
    return {entry["path"][len(str(source)) + 1 :] for entry in result.json()}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write_file(root / "keep.txt", b"keep")
    write_file(root / "scratch.tmp", b"temp")
    write_file(root / "deep" / "more.tmp", b"temp")
    write_file(root / "deep" / "data.csv", b"1,2")
    write_file(root / "build" / "out.o", b"obj")
    write_file(root / "node_modules" / "pkg" / "index.js", b"js")
    return root


def test_exclude_name_pattern_matches_at_any_depth(repo: Path, source: Path) -> None:
    assert run_cli("backup", "--repo", repo, source, "--exclude", "*.tmp").code == 0
    assert listed_paths(repo, source) == {
        "keep.txt",
        "deep",
        "deep/data.csv",
        "build",
        "build/out.o",
        "node_modules",
        "node_modules/pkg",
        "node_modules/pkg/index.js",
    }


def test_exclude_path_pattern_is_anchored_and_star_stays_in_one_component(
    repo: Path, source: Path
) -> None:
    result = run_cli(
        "backup",
        "--repo",
        repo,
        source,
        "--exclude",
        f"{source}/build/",
        "--exclude",
        f"{source}/*.csv",
        "--exclude",
        "/keep.txt",
    )
    assert result.code == 0, result.err
    paths = listed_paths(repo, source)
    assert "build" not in paths and "build/out.o" not in paths
    assert "deep/data.csv" in paths  # '*' does not cross '/'
    assert "keep.txt" in paths  # a path pattern matches from the start only


def test_exclude_file_reads_patterns_and_skips_comments(repo, source, tmp_path) -> None:
    patterns = tmp_path / "excludes.txt"
    patterns.write_text("# comment line\n\nnode_modules\n*.tmp\n")
    assert run_cli("backup", "--repo", repo, source, "--exclude-file", patterns).code == 0
    assert listed_paths(repo, source) == {
        "keep.txt",
        "deep",
        "deep/data.csv",
        "build",
        "build/out.o",
    }


def test_exclude_caches_keeps_only_the_tag_of_a_tagged_directory(repo, source) -> None:
    write_file(source / "build" / "CACHEDIR.TAG", CACHEDIR_SIGNATURE + b"\n# a comment\n")
    write_file(source / "deep" / "CACHEDIR.TAG", b"Signature: not the right one\n")
    assert run_cli("backup", "--repo", repo, source, "--exclude-caches").code == 0
    paths = listed_paths(repo, source)
    assert "build/CACHEDIR.TAG" in paths and "build/out.o" not in paths
    assert "deep/data.csv" in paths  # a wrong signature does not count


def test_without_exclude_caches_tagged_directories_are_kept(repo, source) -> None:
    write_file(source / "build" / "CACHEDIR.TAG", CACHEDIR_SIGNATURE)
    assert run_cli("backup", "--repo", repo, source).code == 0
    assert "build/out.o" in listed_paths(repo, source)


@pytest.fixture
def mounted(source: Path) -> Iterator[Path]:
    """A small tmpfs mounted inside the source tree (skipped where mounting is not allowed)."""
    point = source / "mnt"
    point.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(point)]
    if not IS_ROOT or subprocess.run(mount, capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        write_file(point / "other-fs.txt", b"on another file system")
        yield point
    finally:
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def test_one_file_system_records_the_mount_point_but_not_its_content(repo, source, mounted) -> None:
    assert run_cli("backup", "--repo", repo, source, "--one-file-system").code == 0
    paths = listed_paths(repo, source)
    assert "mnt" in paths and "mnt/other-fs.txt" not in paths
    assert "deep/data.csv" in paths


def test_without_one_file_system_mounts_are_crossed(repo, source, mounted) -> None:
    assert run_cli("backup", "--repo", repo, source).code == 0
    assert "mnt/other-fs.txt" in listed_paths(repo, source)


def test_backup_of_a_single_file_and_two_paths(repo: Path, source: Path) -> None:
    result = run_cli("backup", "--repo", repo, source / "keep.txt", source / "deep")
    assert result.code == 0, result.err
    assert listed_paths(repo, source) == {"keep.txt", "deep", "deep/data.csv", "deep/more.tmp"}
