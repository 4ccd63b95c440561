"""Backup with the CLI, restore with the CLI, and the restored tree equals the original."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import (
    IS_ROOT,
    PASSPHRASE,
    compare_trees,
    describe,
    open_repository,
    require_page_cache,
    resident_bytes,
    run_cli,
    write_file,
)


@pytest.fixture
def backed_up(tmp_path: Path, full_tree: Path) -> tuple[Path, Path]:
    """A repository created with 'safehold init' holding one snapshot of the full tree."""
    repo = tmp_path / "repo"
    assert run_cli("init", "--repo", repo).code == 0
    result = run_cli("backup", "--repo", repo, full_tree)
    assert result.code == 0, result.err
    assert result.err == ""
    return repo, full_tree


def test_init_creates_repository_that_opens_with_the_passphrase(tmp_path: Path) -> None:
    result = run_cli("init", "--repo", tmp_path / "repo")
    assert result.code == 0, result.err
    assert "created repository" in result.out
    assert (tmp_path / "repo" / "meta" / "format").read_bytes().startswith(b"safehold repository")
    with open_repository(tmp_path / "repo", PASSPHRASE) as repository:
        assert repository.snapshot_names() == []


def test_restore_of_a_directory_equals_the_original(backed_up, tmp_path: Path) -> None:
    repo, source = backed_up
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)
    assert result.code == 0, result.err
    assert compare_trees(source, target, include_root=False) == []


def test_restore_of_the_whole_snapshot_puts_the_tree_under_its_absolute_path(
    backed_up, tmp_path: Path
) -> None:
    repo, source = backed_up
    target = tmp_path / "everything"
    result = run_cli("restore", "--repo", repo, "latest", "--target", target)
    assert result.code == 0, result.err
    restored = target / source.relative_to("/")
    assert compare_trees(source, restored) == []
    assert sorted(os.listdir(target)) == [source.parts[1]]


def test_restore_of_a_single_file(backed_up, tmp_path: Path) -> None:
    repo, source = backed_up
    target = tmp_path / "one"
    result = run_cli("restore", "--repo", repo, f"latest:{source}/text.txt", "--target", target)
    assert result.code == 0, result.err
    assert os.listdir(target) == ["text.txt"]
    assert describe(os.fsencode(target / "text.txt")) == describe(os.fsencode(source / "text.txt"))


def test_restore_of_a_single_file_with_an_undecodable_name(backed_up, tmp_path: Path) -> None:
    repo, source = backed_up
    name = os.fsencode(source) + b"/d\xe9j\xe0/\xff\xfe.bin"
    target = tmp_path / "odd"
    result = run_cli("restore", "--repo", repo, b"latest:" + name, "--target", target)
    assert result.code == 0, result.err
    assert describe(os.fsencode(target) + b"/\xff\xfe.bin") == describe(name)


@pytest.mark.skipif(not IS_ROOT, reason="owners are only restored by root")
def test_restore_keeps_numeric_owners(backed_up, tmp_path: Path) -> None:
    repo, source = backed_up
    target = tmp_path / "owners"
    result = run_cli("restore", "--repo", repo, f"latest:{source}/owned", "--target", target)
    assert result.code == 0, result.err
    assert (os.lstat(target / "by-70").st_uid, os.lstat(target / "by-70").st_gid) == (70, 70)
    assert os.lstat(target / "by-1000").st_uid == 1000
    assert (os.lstat(target / "link-by-1000").st_uid, os.lstat(target / "link-by-1000").st_gid) == (
        1000,
        70,
    )


def test_restore_include_takes_only_matching_files(backed_up, tmp_path: Path) -> None:
    repo, source = backed_up
    target = tmp_path / "inc"
    result = run_cli(
        "restore", "--repo", repo, f"latest:{source}", "--target", target, "--include", "*.txt"
    )
    assert result.code == 0, result.err
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if not p.is_dir())
    assert files == ["sub/deeper/nested.txt", "text.txt"]
    assert (target / "text.txt").read_bytes() == (source / "text.txt").read_bytes()


def test_restore_include_of_a_directory_path_takes_everything_below(backed_up, tmp_path) -> None:
    repo, source = backed_up
    target = tmp_path / "incdir"
    result = run_cli(
        "restore",
        "--repo",
        repo,
        f"latest:{source}",
        "--target",
        target,
        "--include",
        f"{source}/sub",
    )
    assert result.code == 0, result.err
    assert os.listdir(target) == ["sub"]
    assert compare_trees(source / "sub", target / "sub") == []


def test_restore_include_of_a_deeper_directory_makes_its_parents(backed_up, tmp_path) -> None:
    repo, source = backed_up
    target = tmp_path / "incdeep"
    result = run_cli(
        "restore", "--repo", repo, f"latest:{source}", "-t", target, "-i", f"{source}/sub/deeper"
    )
    assert result.code == 0, result.err
    assert os.listdir(target) == ["sub"] and os.listdir(target / "sub") == ["deeper"]
    assert compare_trees(source / "sub" / "deeper", target / "sub" / "deeper") == []


def test_restore_exclude_leaves_out_names_and_subtrees(backed_up, tmp_path: Path) -> None:
    repo, source = backed_up
    target = tmp_path / "exc"
    result = run_cli(
        "restore",
        "--repo",
        repo,
        f"latest:{source}",
        "--target",
        target,
        "--exclude",
        "*.bin",
        "--exclude",
        "sub",
    )
    assert result.code == 0, result.err
    names = {p.name for p in target.rglob("*")}
    assert "sub" not in names and "nested.txt" not in names
    assert not any(name.endswith(".bin") for name in names)
    assert "text.txt" in names and "sparse.img" in names


def test_restore_of_a_path_not_in_the_snapshot_fails_clearly(backed_up, tmp_path: Path) -> None:
    repo, source = backed_up
    result = run_cli("restore", "--repo", repo, f"latest:{source}/nope", "--target", tmp_path / "t")
    assert result.code == 17
    assert "nope" in result.err and "is not in snapshot" in result.err


def test_sparse_file_stays_sparse(backed_up, tmp_path: Path) -> None:
    repo, source = backed_up
    target = tmp_path / "sparse"
    assert (
        run_cli("restore", "--repo", repo, f"latest:{source}/sparse.img", "--target", target).code
        == 0
    )
    restored = os.stat(target / "sparse.img")
    assert restored.st_size == 4 * 1024 * 1024
    assert restored.st_blocks * 512 < 64 * 1024
    assert describe(os.fsencode(target / "sparse.img")) == describe(
        os.fsencode(source / "sparse.img")
    )


def test_hard_link_in_a_later_subdirectory_is_kept(make_repo, tmp_path: Path) -> None:
    repo = make_repo()
    source = tmp_path / "src"
    write_file(source / "a_first", b"content\n")
    (source / "sub").mkdir()
    os.link(source / "a_first", source / "sub" / "second")
    assert run_cli("backup", "--repo", repo, source).code == 0
    target = tmp_path / "restored"
    assert run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target).code == 0
    assert compare_trees(source, target, include_root=False) == []


def test_many_small_chunks_and_holes_across_chunk_boundaries(make_repo, tmp_path) -> None:
    repo = make_repo(chunker={"min_size": 4096, "avg_size": 16384, "max_size": 65536})
    source = tmp_path / "src"
    write_file(source / "random.bin", os.urandom(700 * 1024))
    with open(write_file(source / "sparse.bin", b""), "r+b") as handle:
        handle.truncate(2 * 1024 * 1024)
        for offset in (0, 100_000, 700_001, 1_500_000, 2 * 1024 * 1024 - 3):
            handle.seek(offset)
            handle.write(os.urandom(3))
    assert run_cli("backup", "--repo", repo, source).code == 0
    target = tmp_path / "restored"
    assert run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target).code == 0
    assert compare_trees(source, target, include_root=False) == []


def test_restore_never_writes_through_a_symlink_in_the_target(make_repo, tmp_path) -> None:
    repo = make_repo()
    source = tmp_path / "src"
    write_file(source / "sub" / "file", b"data")
    assert run_cli("backup", "--repo", repo, source).code == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "sub")
    result = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)
    assert os.listdir(outside) == []
    assert result.code in (0, 3)


def test_large_restored_files_are_on_disk_and_out_of_the_page_cache(make_repo, tmp_path) -> None:
    """A restored file of 1 MiB or more is fdatasynced and dropped from the page cache when
    its last blob is written; small files are left to the kernel."""
    require_page_cache(tmp_path)
    source = tmp_path / "src"
    write_file(source / "large.bin", os.urandom(3 * 1024 * 1024))
    write_file(source / "small.txt", b"small" * 100)
    repo = make_repo()
    assert run_cli("backup", "--repo", repo, source).code == 0
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)
    assert result.code == 0, result.err
    assert resident_bytes(target / "large.bin") == 0
    assert resident_bytes(target / "small.txt") > 0
    compare_trees(source, target)
