"""Shared fixtures and helpers: repositories, the CLI in-process, tree building and comparison.

Repositories are real (borgstore on tmp_path) and opened with a cheap Argon2 setting so that
the suite stays fast; everything else runs the production code unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import safehold.crypto
import safehold.secrecy
from safehold.archive import tree
from safehold.cli.main import main
from safehold.repo.repository import Repository, pack_name
from safehold.repo.snapshots import resolve

# Real PostgreSQL, MariaDB and sshd servers (tests/servers.py).
pytest_plugins = ["sources_conftest", "remote_conftest"]  # real servers: tests/servers.py

PASSPHRASE = "correct horse battery staple"
FAST_KDF = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}
MiB = 1024 * 1024
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (owners, device nodes)")


# ------------------------------------------------------------------ environment and repositories


@pytest.fixture(autouse=True)
def safehold_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The passphrase in the environment, no stray repository, a cheap KDF for new keys, and
    local state (tree cache, check progress, schedule state) of the test's own."""
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("SAFEHOLD_CACHE_DIR", raising=False)
    monkeypatch.delenv("SAFEHOLD_REPO", raising=False)
    monkeypatch.delenv("SAFEHOLD_NEW_PASSPHRASE", raising=False)
    monkeypatch.setattr(safehold.crypto, "KDF_DEFAULTS", dict(FAST_KDF))
    # Secrets remembered by one test's commands (run in this process) are not another's.
    monkeypatch.setattr(safehold.secrecy, "_known", set())


def init_repository(path: Path, passphrase: str = PASSPHRASE, **config: object) -> Path:
    """Create a real repository at ``path`` and return the path."""
    Repository.init(str(path), passphrase.encode(), kdf=FAST_KDF, config=config or None).close()
    return path


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_repo(name="repo", **config)`` creates a repository under tmp_path."""

    def factory(name: str = "repo", **config: object) -> Path:
        return init_repository(tmp_path / name, **config)

    return factory


@pytest.fixture
def repo(make_repo: Callable[..., Path]) -> Path:
    return make_repo()


def open_repository(path: Path, passphrase: str = PASSPHRASE) -> Repository:
    return Repository.open(str(path), passphrase.encode())


def repo_state(path: Path) -> dict[str, bytes]:
    """Every file below a repository directory with its bytes: compare before/after."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def snapshot_entry(repo_path: Path, spec: str, path: str) -> dict:
    """The tree entry at ``path`` in snapshot ``spec``."""
    with open_repository(repo_path) as repository:
        return tree.find(repository, resolve(repository, spec), path)


def pack_file(repo_path: Path, pack_id: bytes) -> Path:
    name = pack_name(pack_id)
    return repo_path / "data" / name[5:7] / name[5:]


def blob_place(repo_path: Path, blob_id: bytes) -> tuple[Path, int, int]:
    """(pack file, offset, sealed length) of a blob."""
    with open_repository(repo_path) as repository:
        location = repository.index.lookup(blob_id)
    assert location is not None
    return pack_file(repo_path, location.pack_id), location.offset, location.length


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ the command line


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def _stream() -> io.TextIOWrapper:
    # Like a real process in the C locale: undecodable names pass as surrogate escapes.
    return io.TextIOWrapper(
        io.BytesIO(), encoding="utf-8", errors="surrogateescape", write_through=True
    )


def _text(stream: io.TextIOWrapper) -> str:
    raw = stream.buffer.getvalue()  # type: ignore[attr-defined]
    return raw.decode("utf-8", errors="surrogateescape")


def run_cli(*args: object) -> CliResult:
    """Run ``safehold ARGS`` in this process; returns exit code, stdout and stderr."""
    argv = [os.fsdecode(arg) if isinstance(arg, (bytes, os.PathLike)) else str(arg) for arg in args]
    out, err = _stream(), _stream()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: usage errors, --help, --version
            code = exit_.code if isinstance(exit_.code, int) else 2
    return CliResult(code, _text(out), _text(err))


@pytest.fixture(name="run_cli")
def run_cli_fixture() -> Callable[..., CliResult]:
    return run_cli


def assert_one_line_error(result: CliResult, code: int, *fragments: str) -> None:
    """A failed command: the exit code, one 'safehold: ...' line on stderr, no traceback."""
    assert result.code == code, (result.code, result.err)
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith("safehold: "), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)


def backup_json(repo_path: Path, *args: object) -> dict:
    """``safehold backup --json``; asserts success and returns the summary."""
    result = run_cli("backup", "--repo", repo_path, "--json", *args)
    assert result.code == 0, result.err
    summary = result.json()
    assert isinstance(summary, dict)
    return summary


# ------------------------------------------------------------------ trees on disk


def write_file(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def set_times(root: Path, base_ns: int = 1_500_000_000_123_456_789) -> None:
    """Give every entry (links included, root last) its own mtime with nanoseconds."""
    paths = [os.fsencode(p) for p in _walk(os.fsencode(root))]
    for number, path in enumerate(reversed(paths)):
        value = base_ns + number * 1_000_000_007
        os.utime(path, ns=(value, value), follow_symlinks=False)


def build_full_tree(root: Path) -> Path:
    """A tree holding every kind of entry safehold records (owners and devices as root)."""
    rnd = random.Random(20240601)
    root.mkdir()
    write_file(root / "empty", b"")
    text = write_file(root / "text.txt", b"hello safehold\n" * 200, 0o640)
    os.setxattr(text, "user.comment", b"a note")
    os.setxattr(text, "user.binary", bytes(range(256)))
    write_file(root / "script.sh", b"#!/bin/sh\necho hi\n", 0o755)
    write_file(root / "setuid-tool", b"\x7fELF not really", 0o4755)
    write_file(root / "readonly", b"read only", 0o444)
    write_file(root / "noperm", b"no permissions", 0o000)
    write_file(root / "big.bin", rnd.randbytes(int(1.5 * MiB)))
    shared = rnd.randbytes(300 * 1024)
    write_file(root / "dup1.bin", shared)
    write_file(root / "sub" / "dup2.bin", shared)
    write_file(root / "sub" / "deeper" / "nested.txt", b"nested\n")
    os.setxattr(root / "sub", "user.dirattr", b"on a directory")
    # Hard links: a pair in one directory, a triple, and one whose first name sits in a
    # directory that is walked before the second name.
    write_file(root / "links" / "first", b"linked content\n")
    os.link(root / "links" / "first", root / "links" / "second")
    write_file(root / "links" / "triple-1", b"three names\n")
    os.link(root / "links" / "triple-1", root / "links" / "triple-2")
    os.link(root / "links" / "triple-1", root / "links" / "triple-3")
    write_file(root / "a_dir" / "inner-link", b"across directories\n")
    os.link(root / "a_dir" / "inner-link", root / "z_outer-link")
    _make_sparse(root / "sparse.img", 4 * MiB, {0: b"head", 3 * MiB + 5: b"tail"})
    _make_sparse(root / "all-hole.img", MiB, {})
    os.symlink("text.txt", root / "link-relative")
    os.symlink("/nonexistent/target", root / "link-dangling")
    os.symlink("sub", root / "link-to-dir")
    os.symlink(b"caf\xe9", os.fsencode(root / "link-odd-target"))
    os.mkfifo(root / "pipe", 0o620)
    odd_dir = os.fsencode(root) + b"/d\xe9j\xe0"
    os.mkdir(odd_dir)
    with open(odd_dir + b"/\xff\xfe.bin", "wb") as handle:
        handle.write(b"not utf-8 name")
    with open(odd_dir + b"/caf\xe9 \n tab\t", "wb") as handle:
        handle.write(b"")
    for name, mode in (("private", 0o700), ("sticky", 0o1777), ("setgid", 0o2775)):
        (root / name).mkdir()
        os.chmod(root / name, mode)
    write_file(root / "setgid" / "child", b"in setgid dir")
    write_file(root / "ro-dir" / "inside", b"in a read-only directory")
    os.chmod(root / "ro-dir", 0o555)
    if IS_ROOT:
        _add_root_only(root)
    os.chmod(root, 0o750)
    os.setxattr(root, "user.root", b"root xattr")
    set_times(root)
    return root


def _add_root_only(root: Path) -> None:
    owned = root / "owned"
    write_file(owned / "by-70", b"kaapana uid 70")
    os.chown(owned / "by-70", 70, 70)
    write_file(owned / "by-1000", b"uid 1000")
    os.chown(owned / "by-1000", 1000, 1000)
    os.symlink("by-70", owned / "link-by-1000")
    os.lchown(owned / "link-by-1000", 1000, 70)
    os.chown(owned, 70, 1000)
    os.mknod(root / "null-dev", stat.S_IFCHR | 0o640, os.makedev(1, 3))
    os.chown(root / "null-dev", 70, 70)


def _make_sparse(path: Path, size: int, pieces: dict[int, bytes]) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in pieces.items():
            handle.seek(offset)
            handle.write(data)


@pytest.fixture
def full_tree(tmp_path: Path) -> Path:
    return build_full_tree(tmp_path / "src")


# ------------------------------------------------------------------ comparing trees


def _walk(root: bytes) -> list[bytes]:
    """Every path below ``root`` (root first, pre-order), without following links."""
    paths = [root]
    with os.scandir(root) as entries:
        children = sorted(entry.path for entry in entries)
    for child in children:
        if stat.S_ISDIR(os.lstat(child).st_mode):
            paths += _walk(child)
        else:
            paths.append(child)
    return paths


def data_map(path: bytes) -> list[tuple[int, int]]:
    """The (start, end) extents that hold data, from SEEK_DATA/SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, position, extents = os.fstat(fd).st_size, 0, []
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as error:
                if error.errno == errno.ENXIO:
                    break
                raise
            position = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, position))
        return extents
    finally:
        os.close(fd)


def user_xattrs(path: bytes) -> dict[str, bytes]:
    names = [n for n in os.listxattr(path, follow_symlinks=False) if n.startswith("user.")]
    return {name: os.getxattr(path, name, follow_symlinks=False) for name in sorted(names)}


def describe(path: bytes) -> dict:
    """Everything compared about one entry."""
    st = os.lstat(path)
    info: dict = {
        "type": stat.S_IFMT(st.st_mode),
        "mode": oct(stat.S_IMODE(st.st_mode)),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime_ns": st.st_mtime_ns,
        "xattrs": user_xattrs(path),
    }
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as handle:
            info["sha256"] = hashlib.sha256(handle.read()).hexdigest()
        info["size"] = st.st_size
        info["data_map"] = data_map(path)
        info["sparse"] = st.st_size > 64 * 1024 and st.st_blocks * 512 < st.st_size // 4
    elif stat.S_ISLNK(st.st_mode):
        info["target"] = os.readlink(path)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info["rdev"] = st.st_rdev
    return info


def _hardlink_groups(root: bytes, paths: list[bytes]) -> set[frozenset[bytes]]:
    groups: dict[tuple[int, int], set[bytes]] = {}
    for path in paths:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            groups.setdefault((st.st_dev, st.st_ino), set()).add(os.path.relpath(path, root))
    return {frozenset(group) for group in groups.values() if len(group) > 1}


def scan_tree(root: os.PathLike | str | bytes, *, include_root: bool = True) -> dict[bytes, dict]:
    base = os.fsencode(root)
    paths = _walk(base)
    found = {os.path.relpath(path, base): describe(path) for path in paths}
    if not include_root:
        del found[b"."]
    return found


def compare_trees(
    a: os.PathLike | str | bytes, b: os.PathLike | str | bytes, *, include_root: bool = True
) -> list[str]:
    """Differences between two trees (empty if equal): content, type, mode, owner, mtime_ns,
    symlink targets, device numbers, user xattrs, sparse extents and hard-link structure.

    ``include_root=False`` ignores the metadata of the two top directories themselves.
    """
    left, right = scan_tree(a, include_root=include_root), scan_tree(b, include_root=include_root)
    problems = [
        f"only in {os.fsdecode(a)}: {os.fsdecode(p)!r}" for p in sorted(left.keys() - right.keys())
    ]
    problems += [
        f"only in {os.fsdecode(b)}: {os.fsdecode(p)!r}" for p in sorted(right.keys() - left.keys())
    ]
    for path in sorted(left.keys() & right.keys()):
        for key in sorted(left[path].keys() | right[path].keys()):
            if left[path].get(key) != right[path].get(key):
                problems.append(
                    f"{os.fsdecode(path)!r} {key}: "
                    f"{left[path].get(key)!r} != {right[path].get(key)!r}"
                )
    links_a = _hardlink_groups(os.fsencode(a), _walk(os.fsencode(a)))
    links_b = _hardlink_groups(os.fsencode(b), _walk(os.fsencode(b)))
    if links_a != links_b:
        problems.append(
            f"hard links differ: {sorted(map(sorted, links_a))} != {sorted(map(sorted, links_b))}"
        )
    return problems


@pytest.fixture(name="compare_trees")
def compare_trees_fixture() -> Callable[..., list[str]]:
    return compare_trees


# ------------------------------------------------------------------ a small platform


def mini_platform(root: Path, repo: Path | str, **extra: object) -> Path:
    """A platform of one file tree and one SQLite database below ``root``, backed up cold
    (its stop and start commands do nothing) into ``repo``; ``extra`` adds or replaces
    top-level keys of the platform file. Returns the platform file."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "a.txt").write_text("hello\n" * 1000)
    with sqlite3.connect(root / "app.db") as db:
        db.execute("create table if not exists notes (id integer primary key, body text)")
        db.executemany("insert into notes (body) values (?)", [(f"n{i}",) for i in range(7)])
    config = {
        "repository": str(repo),
        "platform": "mini",
        "strategy": "cold",
        "services": {"control": "command", "stop_command": "true", "start_command": "true"},
        "components": [
            {"name": "data", "type": "files", "paths": [str(root / "data")]},
            {"name": "appdb", "type": "sqlite", "path": str(root / "app.db")},
        ],
    } | extra
    path = root / "platform.yaml"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch):
    """Local time is UTC for the test (cron expressions are in local time)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def require_page_cache(path: Path) -> None:
    """Skip unless page-cache residency can be seen below ``path`` (fincore, not tmpfs)."""
    if shutil.which("fincore") is None:
        pytest.skip("util-linux's fincore is missing")
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    if kind.stdout.strip() == "tmpfs":
        pytest.skip("tmpfs keeps its pages: they are the file")


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache, by util-linux's fincore."""
    output = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(output.split()[0])
