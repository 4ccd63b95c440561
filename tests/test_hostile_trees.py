"""Damaged or crafted tree content is a named integrity error, never a traceback; directory
depth is limited by the file system, not by Python's recursion limit."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import PASSPHRASE, init_repository, needs_root, open_repository, run_cli

from safehold.archive.entries import DIR, FILE, SYMLINK, decode_tree, encode_tree, synthetic_entry
from safehold.errors import IntegrityError
from safehold.repo.format import BLOB_DATA, BLOB_TREE
from safehold.repo.writer import BlobWriter

CONTENT = b"payload"


@pytest.fixture(autouse=True)
def remove_deep_trees(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Remove what a test left, without recursion: pytest's own clean-up of old temporary
    directories (shutil.rmtree) fails on trees 1,500 levels deep in a later session."""
    yield
    stack = [os.fspath(tmp_path)]
    while stack:
        entries = list(os.scandir(stack[-1]))
        directories = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        if directories:
            stack.extend(directories)
        else:
            os.rmdir(stack.pop())


def _snapshot(repo: Path, build) -> None:  # type: ignore[no-untyped-def]
    """Write the trees ``build(add)`` makes (``add(entries) -> tree id``) and a snapshot
    whose root is the tree it returns."""
    with open_repository(repo) as repository:
        blob_id = repository.cipher.blob_id(CONTENT)
        with BlobWriter(repository) as writer:
            writer.add(BLOB_DATA, blob_id, CONTENT)

            def add(entries: list[dict]) -> bytes:
                data = encode_tree(sorted(entries, key=lambda entry: entry["name"]))
                tree_id = repository.cipher.blob_id(data)
                writer.add(BLOB_TREE, tree_id, data)
                return tree_id

            root = build(add, blob_id)
            writer.flush()
        repository.save_snapshot(
            {"version": 1, "time": 1.0, "hostname": "h", "paths": ["/x"], "tags": [], "tree": root}
        )


def _file(name: bytes, blob_id: bytes, **extra: object) -> dict:
    return synthetic_entry(name, FILE, size=len(CONTENT), content=[blob_id], **extra)


def _dir(name: bytes, subtree: bytes) -> dict:
    return synthetic_entry(name, DIR, subtree=subtree)


def _assert_named_integrity_error(result) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    assert result.code == 13, (result.code, result.err)


@pytest.mark.parametrize(
    "case",
    ["long name", "nul in name", "subtree is a data blob", "entry without uid", "bad holes"],
)
def test_crafted_tree_content_is_a_named_integrity_error(tmp_path: Path, case: str) -> None:
    repo = init_repository(tmp_path / "repo")

    def build(add, blob_id):  # type: ignore[no-untyped-def]
        good = _file(b"good", blob_id)
        if case == "long name":
            bad = _file(b"n" * 300, blob_id)
        elif case == "nul in name":
            bad = _file(b"a\0b", blob_id)
        elif case == "subtree is a data blob":
            bad = _dir(b"d", blob_id)
        elif case == "entry without uid":
            bad = _file(b"u", blob_id)
            del bad["uid"]
        else:
            bad = _file(b"h", blob_id, holes=[["x", 1]])
        return add([_dir(b"x", add([good, bad]))])

    _snapshot(repo, build)
    target = tmp_path / "target"
    for command in (
        ("restore", "--repo", repo, "latest", "--target", target),
        ("ls", "--repo", repo, "latest", "-R"),
        ("check", "--repo", repo),
    ):
        result = run_cli(*command)
        _assert_named_integrity_error(result)
    assert not any(p.is_file() for p in target.rglob("*") if p.name != "good")


def test_a_name_listed_twice_never_writes_through_or_over_the_first(tmp_path: Path) -> None:
    """A restore does not look for what is in the way inside a directory it has just created;
    a crafted tree naming an entry twice (a symlink to a file outside, then a file of the same
    name; a file twice) must still not write through the link nor replace the first file."""
    repo = init_repository(tmp_path / "repo")
    outside = tmp_path / "outside"
    outside.write_bytes(b"not yours")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def build(add, blob_id):  # type: ignore[no-untyped-def]
        link = synthetic_entry(b"a", SYMLINK, target=os.fsencode(outside))
        entries = [link, _file(b"a", blob_id), _file(b"b", blob_id), _file(b"b", blob_id)]
        # A link to a directory outside, then a directory of the same name with a file in it.
        entries.append(synthetic_entry(b"d", SYMLINK, target=os.fsencode(elsewhere)))
        entries.append(_dir(b"d", add([_file(b"f", blob_id)])))
        return add([_dir(b"x", add(entries))])

    _snapshot(repo, build)
    target = tmp_path / "target"
    result = run_cli("restore", "--repo", repo, "latest", "--target", target)
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    assert result.code == 3, (result.code, result.err)  # the second "a", "b" and "d" reported
    assert outside.read_bytes() == b"not yours"
    assert os.readlink(target / "x" / "a") == os.fspath(outside)
    assert (target / "x" / "b").read_bytes() == CONTENT
    assert os.listdir(elsewhere) == []
    assert os.readlink(target / "x" / "d") == os.fspath(elsewhere)


def test_metadata_a_target_cannot_take_does_not_keep_the_rest_back(tmp_path: Path) -> None:
    """An xattr the target refuses (here a name in no namespace, which every file system
    refuses; a target without xattr support does the same for all) is reported, and the file
    and the directory still get their times and modes: none keeps the in-progress marker
    (mode 01600 / 01700) that would have a rerun write it again. Before: the file stayed
    01600 with the restore's own time."""
    repo = init_repository(tmp_path / "repo")
    when = 1_600_000_000 * 10**9
    refused = {b"bogus.name": b"v"}

    def build(add, blob_id):  # type: ignore[no-untyped-def]
        file = _file(b"f", blob_id, mode=0o640, mtime_ns=when, xattrs=refused)
        folder = synthetic_entry(b"d", DIR, subtree=add([file]), mtime_ns=when, xattrs=refused)
        folder["mode"] = 0o750
        return add([folder])

    _snapshot(repo, build)
    target = tmp_path / "target"
    result = run_cli("restore", "--repo", repo, "latest", "--target", target)
    assert result.code == 3, (result.code, result.err)
    assert f"{target}/d/f" in result.err and f"{target}/d:" in result.err, result.err
    for path, mode in ((target / "d" / "f", 0o640), (target / "d", 0o750)):
        status = os.lstat(path)
        assert (stat.S_IMODE(status.st_mode), status.st_mtime_ns) == (mode, when), path
    assert (target / "d" / "f").read_bytes() == CONTENT
    # The summary names the snapshot's path, not the last path that could not be restored.
    summary = [line for line in result.out.splitlines() if line.startswith("restored snapshot")]
    assert summary and ":" not in summary[0].split(" to ")[0], summary


def test_a_tree_nested_1500_levels_restores(tmp_path: Path) -> None:
    repo = init_repository(tmp_path / "repo")
    depth = 1500

    def build(add, blob_id):  # type: ignore[no-untyped-def]
        tree = add([_file(b"f", blob_id)])
        for _ in range(depth):
            tree = add([_dir(b"d", tree)])
        return add([_dir(b"x", tree)])

    _snapshot(repo, build)
    target = tmp_path / "t"
    result = run_cli("restore", "--repo", repo, "latest", "--target", target)
    assert result.code == 0, result.err
    deepest = target / "x" / os.path.join(*["d"] * depth) / "f"
    assert deepest.read_bytes() == CONTENT
    assert run_cli("check", "--repo", repo, "--read-data").code == 0
    assert run_cli("ls", "--repo", repo, "latest", "-R").code == 0
    # and copy, which walks it with a stack of its own
    other = init_repository(tmp_path / "other")
    os.environ["SAFEHOLD_TO_PASSPHRASE"] = PASSPHRASE
    try:
        copied = run_cli("copy", "--repo", repo, "--to", other)
    finally:
        del os.environ["SAFEHOLD_TO_PASSPHRASE"]
    assert copied.code == 0, copied.err
    again = tmp_path / "again"
    assert run_cli("restore", "--repo", other, "latest", "--target", again).code == 0
    assert (again / "x" / os.path.join(*["d"] * depth) / "f").read_bytes() == CONTENT


def test_a_backup_of_a_tree_1500_levels_deep(repo: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    current = source
    current.mkdir()
    for _ in range(1500):  # one level at a time: os.makedirs would recurse 1500 deep
        current = current / "d"
        current.mkdir()
    (current / "f").write_bytes(CONTENT)
    backup = run_cli("backup", "--repo", repo, source)
    assert backup.code == 0, backup.err
    target = tmp_path / "t"
    assert run_cli("restore", "--repo", repo, "latest", "--target", target).code == 0
    assert (target / current.relative_to("/") / "f").read_bytes() == CONTENT


@needs_root
def test_no_special_leaves_out_devices_setid_bits_and_capabilities(
    repo: Path, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    tool = source / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    os.chmod(tool, 0o6755)
    os.mknod(source / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    capability = bytes.fromhex("0000000200200000000000000000000000000000")  # cap_net_raw
    os.setxattr(tool, "security.capability", capability)
    assert run_cli("backup", "--repo", repo, source).code == 0

    plain = tmp_path / "plain"
    assert run_cli("restore", "--repo", repo, "latest", "--target", plain).code == 0
    restored = plain / source.relative_to("/")
    assert stat.S_IMODE(os.lstat(restored / "tool").st_mode) == 0o6755
    assert stat.S_ISCHR(os.lstat(restored / "null").st_mode)
    assert os.getxattr(restored / "tool", "security.capability") == capability

    safe = tmp_path / "safe"
    result = run_cli("restore", "--repo", repo, "latest", "--target", safe, "--no-special")
    assert result.code == 0, result.err
    restored = safe / source.relative_to("/")
    assert stat.S_IMODE(os.lstat(restored / "tool").st_mode) == 0o755
    assert not os.path.lexists(restored / "null")
    assert "security.capability" not in os.listxattr(restored / "tool")
    assert "1 device node(s) not created" in result.err


def test_names_with_terminal_escapes_are_printed_escaped(repo: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    evil = b"evil\x1b]0;pwned\x07\n\x9b2J.txt"
    (Path(os.fsdecode(source)) / os.fsdecode(evil)).write_bytes(b"x")
    assert run_cli("backup", "--repo", repo, source).code == 0
    listing = run_cli("ls", "--repo", repo, "latest", "-R")
    assert listing.code == 0
    assert "\x1b" not in listing.out and "\x07" not in listing.out and "\x9b" not in listing.out
    assert "evil\\x1b]0;pwned\\x07\\x0a\\x9b2J.txt" in listing.out
    as_json = run_cli("ls", "--repo", repo, "latest", "-R", "--json")
    assert any(
        item["path"].endswith("evil\x1b]0;pwned\x07\n\\x9b2J.txt") for item in as_json.json()
    )


_FILE_ENTRY = {
    "name": b"instance_000.dcm",
    "type": "file",
    "mode": 0o644,
    "uid": 0,
    "gid": 0,
    "user": "root",
    "group": "root",
    "mtime": 1,
    "ctime": 1,
    "inode": 5,
    "dev": 6,
    "nlink": 1,
    "size": 7,
    "content": [b"\xfd" * 32],
}
_VALID = [
    _FILE_ENTRY,
    {**_FILE_ENTRY, "type": "dir", "subtree": b"s" * 32},
    {**_FILE_ENTRY, "type": "symlink", "target": b"elsewhere"},
    {**_FILE_ENTRY, "type": "chardev", "rdev": 3},
    {**_FILE_ENTRY, "type": "fifo"},
    {**_FILE_ENTRY, "holes": [[0, 4096]], "hardlink": [6, 5], "xattrs": {b"user.a": b"b"}},
]
_MALFORMED = {
    "not a map": [1],
    "empty name": {**_FILE_ENTRY, "name": b""},
    "dot-dot name": {**_FILE_ENTRY, "name": b".."},
    "slash in name": {**_FILE_ENTRY, "name": b"a/b"},
    "text name": {**_FILE_ENTRY, "name": "a"},
    "name too long": {**_FILE_ENTRY, "name": b"n" * 256},
    "unknown type": {**_FILE_ENTRY, "type": "socket"},
    "no type": {k: v for k, v in _FILE_ENTRY.items() if k != "type"},
    "mode not an integer": {**_FILE_ENTRY, "mode": "0644"},
    "uid a boolean": {**_FILE_ENTRY, "uid": True},
    "no gid": {k: v for k, v in _FILE_ENTRY.items() if k != "gid"},
    "mtime a float": {**_FILE_ENTRY, "mtime": 1.5},
    "size missing": {k: v for k, v in _FILE_ENTRY.items() if k != "size"},
    "content not a list": {**_FILE_ENTRY, "content": b"x" * 32},
    "short blob id": {**_FILE_ENTRY, "content": [b"x" * 32, b"x"]},
    "no content": {k: v for k, v in _FILE_ENTRY.items() if k != "content"},
    "short subtree": {**_FILE_ENTRY, "type": "dir", "subtree": b"s"},
    "empty link target": {**_FILE_ENTRY, "type": "symlink", "target": b""},
    "nul in link target": {**_FILE_ENTRY, "type": "symlink", "target": b"a\0b"},
    "rdev not an integer": {**_FILE_ENTRY, "type": "blockdev", "rdev": "3"},
    "negative hole": {**_FILE_ENTRY, "holes": [[0, -1]]},
    "hard link of one number": {**_FILE_ENTRY, "hardlink": [6]},
    "xattr value text": {**_FILE_ENTRY, "xattrs": {b"user.a": "b"}},
    # Fewer common fields do not let a bad optional one through.
    "bad holes, fields missing": {
        **{k: v for k, v in _FILE_ENTRY.items() if k not in ("user", "ctime")},
        "holes": "everything",
    },
}


def test_every_well_formed_kind_of_entry_decodes() -> None:
    assert decode_tree(encode_tree(_VALID)) == _VALID


@pytest.mark.parametrize("case", sorted(_MALFORMED))
def test_a_malformed_entry_is_a_named_integrity_error(case: str) -> None:
    """Every field every reader relies on is checked (decode_tree, for every tree read)."""
    with pytest.raises(IntegrityError, match="not a valid tree"):
        decode_tree(encode_tree([_VALID[0], _MALFORMED[case]]))
