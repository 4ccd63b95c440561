"""The tree comparison used by the round-trip tests notices every kind of difference."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import IS_ROOT, compare_trees, set_times, write_file


def small_tree(root: Path) -> Path:
    write_file(root / "file", b"content")
    write_file(root / "other", b"other")
    os.link(root / "file", root / "hard")
    os.symlink("file", root / "link")
    with open(root / "sparse", "wb") as handle:
        handle.truncate(1024 * 1024)
        handle.write(b"head")
    os.setxattr(root / "file", "user.a", b"1")
    set_times(root)
    return root


@pytest.fixture
def twins(tmp_path: Path) -> tuple[Path, Path]:
    return small_tree(tmp_path / "a"), small_tree(tmp_path / "b")


def _rewrite(path: Path, data: bytes) -> None:
    times = os.lstat(path)
    path.write_bytes(data)
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


def _relink(root: Path) -> None:
    times = os.lstat(root)
    (root / "hard").unlink()
    shutil.copy2(root / "file", root / "hard")
    os.utime(root, ns=(times.st_atime_ns, times.st_mtime_ns))


def _fill_hole(path: Path) -> None:
    times = os.lstat(path)
    with open(path, "r+b") as handle:
        handle.seek(512 * 1024)
        handle.write(bytes(4096))
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


def _retarget(root: Path) -> None:
    times = os.lstat(root / "link")
    (root / "link").unlink()
    os.symlink("other", root / "link")
    os.utime(root / "link", ns=(times.st_atime_ns, times.st_mtime_ns), follow_symlinks=False)


CHANGES: dict[str, Callable[[Path], None]] = {
    "sha256": lambda root: _rewrite(root / "other", b"OTHER"),
    "mode": lambda root: os.chmod(root / "other", 0o600),
    "mtime_ns": lambda root: os.utime(root / "other", ns=(1, 2)),
    "xattrs": lambda root: os.setxattr(root / "file", "user.a", b"2"),
    "target": _retarget,
    "hard links": _relink,
    "data_map": lambda root: _fill_hole(root / "sparse"),
}


def test_identical_trees_compare_equal(twins) -> None:
    assert compare_trees(*twins) == []


@pytest.mark.parametrize("kind", sorted(CHANGES))
def test_each_difference_is_reported(twins, kind: str) -> None:
    CHANGES[kind](twins[1])
    problems = compare_trees(*twins)
    assert problems and any(kind in problem for problem in problems), problems


def test_missing_entry_is_reported(twins) -> None:
    (twins[1] / "other").unlink()
    assert any("only in" in problem for problem in compare_trees(*twins, include_root=False))


@pytest.mark.skipif(not IS_ROOT, reason="chown needs root")
def test_owner_difference_is_reported(twins) -> None:
    os.lchown(twins[1] / "link", 70, 70)
    assert any("uid" in problem for problem in compare_trees(*twins))
