"""Tree tables (safehold/archive/treetable.py): a changed leaf directory's tree spliced from
its parent's bytes must be byte for byte the tree the full decode-compare-encode path writes
(the same id: deduplication and every later comparison rely on it), and a table that does
not describe its tree exactly is never used."""

from __future__ import annotations

import os
import random
from pathlib import Path

import msgpack
import pytest
from conftest import open_repository, set_times, snapshot_entry
from test_hostile_trees import _FILE_ENTRY
from test_reader_processes import (  # noqa: F401  (offloads: a fixture)
    _archive_tree,
    _backup,
    _restores_as_source,
    _same_counts,
    _source_tree,
    change_series,
    offloads,
)

import safehold.archive.archiver as archiver_module
from safehold.archive import treetable
from safehold.archive.archiver import Archiver
from safehold.archive.entries import decode_tree, encode_tree
from safehold.repo.repository import Repository
from safehold.repo.writer import BlobWriter


def _entry(number: int) -> dict:
    """A file entry as the archiver makes them (fields in ``base_entry``'s order)."""
    return {
        **_FILE_ENTRY,
        "name": b"instance_%06d.dcm" % number,
        "mtime": 1_700_000_000_000_000_000 + number,
        "ctime": 1_700_000_000_000_000_000 + number,
        "inode": 1000 + number,
        "size": number,
        "content": [bytes([number % 256]) * 32],
    }


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65535, 65536])
def test_a_tree_encoded_with_its_table_is_the_tree_encode_tree_makes(count: int) -> None:
    entries = [_entry(number) for number in range(count)]
    data, rows = treetable.encode(entries)
    assert data == encode_tree(entries)
    assert len(rows) == count
    if count:
        assert rows[-1][1] == len(data) and rows[0][2:] == [
            entries[0]["mtime"],
            entries[0]["ctime"],
            0,
            entries[0]["inode"],
        ]


def _leaf(root: Path) -> Path:
    """A leaf directory of every kind of entry a reader process archives."""
    leaf = root / "series"
    leaf.mkdir(parents=True)
    for number in range(40):
        (leaf / f"instance_{number:03}.dcm").write_bytes(os.urandom(number * 97))
    os.setxattr(leaf / "instance_001.dcm", "user.tag", b"tagged")
    (leaf / "link").symlink_to("instance_002.dcm")
    os.mkfifo(leaf / "fifo")
    with open(leaf / "sparse.dcm", "wb") as handle:
        handle.truncate(1 << 20)
        handle.write(b"head")
    set_times(root)
    return leaf


def _archive_leaf(
    repository: Repository,
    leaf: Path,
    parent: bytes | None,
    plain: bytes | None,
    rows: list | None,
) -> bytes:
    with (
        BlobWriter(repository) as writer,
        Archiver(repository, writer, reader_processes=0) as archiver,
    ):
        children, complete = archiver._scan(os.fsencode(leaf))
        assert complete
        tree_id, _count = archiver.archive_leaf(os.fsencode(leaf), children, parent, plain, rows)
        writer.flush()
    return tree_id


def _table(repository: Repository, tree_id: bytes) -> tuple[bytes, list | None]:
    """The tree's plaintext and its table's rows as the local tree cache holds them."""
    plain = repository.load_tree_blob(tree_id, cached=True)
    _sealed, sealed_table = repository.tree_cache.get_with_table(tree_id)
    assert sealed_table is not None, "the tree was cached without its table"
    return plain, treetable.load(repository.cipher, tree_id, plain, sealed_table)


def test_a_changed_leaf_is_spliced_into_the_tree_the_full_path_writes(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaf = _leaf(tmp_path / "src")
    with open_repository(repo) as repository:
        first = _archive_leaf(repository, leaf, None, None, None)
        plain, rows = _table(repository, first)
        assert rows is not None and len(rows) == 43
        # Changes of every kind: content, mode (ctime only), gone, new, link target, xattr.
        (leaf / "instance_003.dcm").write_bytes(b"rewritten")
        os.chmod(leaf / "instance_004.dcm", 0o600)
        (leaf / "instance_005.dcm").unlink()
        (leaf / "instance_040.dcm").write_bytes(b"new")
        (leaf / "link").unlink()
        (leaf / "link").symlink_to("instance_006.dcm")
        os.setxattr(leaf / "instance_007.dcm", "user.tag", b"added")

        def no_decode(data: bytes) -> list[dict]:
            raise AssertionError("the parent tree was decoded: no splice")

        monkeypatch.setattr(archiver_module, "decode_tree", no_decode)
        spliced = _archive_leaf(repository, leaf, first, plain, rows)
        monkeypatch.undo()
        full = _archive_leaf(repository, leaf, first, plain, None)  # decoded
        assert spliced == full != first
        # The spliced tree passes every check a tree read from the repository gets, and
        # its own table (written with it) describes it: the next backup splices again.
        new_plain, new_rows = _table(repository, spliced)
        names = [entry["name"] for entry in decode_tree(new_plain)]
        assert names == sorted(names) and b"instance_005.dcm" not in names
        assert [row[0] for row in new_rows] == names  # type: ignore[union-attr]
        assert _archive_leaf(repository, leaf, spliced, new_plain, new_rows) == spliced


def test_random_changes_splice_as_the_full_path_encodes(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty rounds of random changes to one leaf (rewritten, chmod'ed, touched, removed,
    added, relinked files): each time the spliced tree is the decoded path's, and the next
    round splices from it."""
    rnd = random.Random(40)
    leaf = _leaf(tmp_path / "src")
    with open_repository(repo) as repository:
        tree_id = _archive_leaf(repository, leaf, None, None, None)
        for _round in range(40):
            names = sorted(p.name for p in leaf.iterdir() if p.is_file() and not p.is_symlink())
            for name in rnd.sample(names, k=min(len(names), rnd.randint(1, 4))):
                action = rnd.choice(("rewrite", "chmod", "touch", "remove"))
                path = leaf / name
                if action == "rewrite":
                    path.write_bytes(os.urandom(rnd.randint(0, 5000)))
                elif action == "chmod":
                    os.chmod(path, rnd.choice((0o600, 0o640, 0o644)))
                elif action == "touch":
                    os.utime(path, ns=(rnd.randint(1, 10**18), rnd.randint(1, 10**18)))
                else:
                    path.unlink()
            for _new in range(rnd.randint(0, 3)):
                (leaf / f"added_{rnd.randint(0, 999):03}.dcm").write_bytes(os.urandom(64))
            if rnd.random() < 0.3:
                (leaf / "link").unlink()
                (leaf / "link").symlink_to(f"target_{rnd.randint(0, 9)}")
            plain, rows = _table(repository, tree_id)
            assert rows is not None
            monkeypatch.setattr(archiver_module, "decode_tree", _no_decode)
            spliced = _archive_leaf(repository, leaf, tree_id, plain, rows)
            monkeypatch.undo()
            assert spliced == _archive_leaf(repository, leaf, tree_id, plain, None)
            tree_id = spliced


def _no_decode(data: bytes) -> list[dict]:
    raise AssertionError("the parent tree was decoded: no splice")


def _sealed_rows(repository: Repository, tree_id: bytes, rows: list) -> bytes:
    return treetable.seal(repository.cipher, tree_id, rows)


def test_a_table_that_does_not_describe_its_tree_is_not_used(repo: Path, tmp_path: Path) -> None:
    leaf = _leaf(tmp_path / "src")
    with open_repository(repo) as repository:
        tree_id = _archive_leaf(repository, leaf, None, None, None)
        plain, rows = _table(repository, tree_id)
        assert rows is not None
        cipher = repository.cipher

        def load(crafted: list) -> list | None:
            return treetable.load(
                cipher, tree_id, plain, _sealed_rows(repository, tree_id, crafted)
            )

        assert load(rows) == rows
        shifted = [list(row) for row in rows]
        shifted[3][1] += 1  # an entry's end one byte off
        renamed = [list(row) for row in rows]
        renamed[5][0] += b"x"  # a name the bytes there do not have, still in order
        swapped = [list(row) for row in rows]
        swapped[1], swapped[2] = swapped[2], swapped[1]
        for crafted in (shifted, renamed, swapped, rows[:-1], rows + [[b"zz", len(plain)]]):
            assert load(crafted) is None
        assert treetable.load(cipher, tree_id, plain, b"\0" * 64) is None  # not sealed
        other = _archive_leaf(repository, _leaf(tmp_path / "other"), None, None, None)
        table_of_other = _sealed_rows(repository, other, rows)  # sealed for another tree
        assert treetable.load(cipher, tree_id, plain, table_of_other) is None
        # A table of the right shape whose plaintext is not rows at all.
        junk = bytes(cipher.seal(msgpack.packb({"a": 1}), treetable.table_aad(tree_id)))
        assert treetable.load(cipher, tree_id, plain, junk) is None


def test_reader_processes_splice_a_changed_archive_into_the_same_snapshot(
    repo: Path,
    tmp_path: Path,
    offloads: list[bytes],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first backup by reader processes caches every leaf tree with its table; after a
    change, their spliced trees are the main process's (which decodes), and the snapshot
    restores to the source."""
    source = _archive_tree(tmp_path / "src")
    with open_repository(repo) as repository:
        first = _backup(repository, source, "2", monkeypatch)
        series = source / "archive" / "study_1" / "series_2"
        change_series(series)
        (source / "archive" / "study_0" / "series_0" / "instance_007.dcm").write_bytes(b"x")
        parent = dict(first.snapshot)
        spread = _backup(repository, source, "2", monkeypatch, parent=parent)
        alone = _backup(repository, source, "0", monkeypatch, parent=parent)
        cached = repository.tree_cache.get_with_table(_leaf_tree(repo, spread.snapshot_id, series))
    assert cached[1] is not None, "a reader process's tree was cached without its table"
    assert (
        _source_tree(repo, spread, source)
        == _source_tree(repo, alone, source)
        != _source_tree(repo, first, source)
    )
    _same_counts(alone, spread)
    assert spread.snapshot["summary"]["files_changed"] == 3
    _restores_as_source(repo, spread.snapshot_id, source, tmp_path)


def _leaf_tree(repo: Path, snapshot_id: str, path: Path) -> bytes:
    return snapshot_entry(repo, snapshot_id, str(path))["subtree"]
