"""The local directory table: a backup takes a directory whose listing (names and lstat of
every child) equals the one its parent snapshot recorded as the parent's tree, without
loading that tree; and every change still reaches the snapshot."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from conftest import (
    backup_json,
    compare_trees,
    mini_platform,
    open_repository,
    run_cli,
    write_file,
)

from safehold.archive import readprocs
from safehold.archive.entries import DIR, decode_tree
from safehold.archive.reader import FileReader
from safehold.repo.index import Index
from safehold.repo.repository import Repository


def snapshots(repo: Path) -> list[dict]:
    with open_repository(repo) as repository:
        ids = [name.split("/")[1] for name in repository.snapshot_names()]
        return sorted(repository.load_snapshots(ids), key=lambda snapshot: snapshot["time"])


def table_of(repo: Path, snapshot: dict) -> dict:
    with open_repository(repo) as repository:
        return repository.load_dir_table(snapshot)


def tree_ids(repo: Path, root: bytes) -> set[bytes]:
    """Every tree id reachable from ``root``."""
    found, todo = set(), [root]
    with open_repository(repo) as repository:
        while todo:
            tree_id = todo.pop()
            found.add(tree_id)
            data = repository.load_tree_blob(tree_id, cached=False)
            todo += [e["subtree"] for e in decode_tree(data) if e["type"] == DIR]
    return found


def subtree_of(repo: Path, snapshot: dict, path: Path) -> bytes:
    tree_id = snapshot["tree"]
    with open_repository(repo) as repository:
        for part in str(path).strip("/").split("/"):
            entries = decode_tree(repository.load_tree_blob(tree_id, cached=False))
            tree_id = next(e["subtree"] for e in entries if e["name"] == part.encode())
    return tree_id


@pytest.fixture
def source(tmp_path: Path) -> Path:
    rnd = random.Random(11)
    root = tmp_path / "src"
    for group in range(3):
        for number in range(4):
            write_file(root / f"g{group}" / f"d{number}" / "f.bin", rnd.randbytes(3000))
            write_file(root / f"g{group}" / f"d{number}" / "t.txt", b"text\n" * number)
    write_file(root / "top.txt", b"top\n")
    os.symlink("top.txt", root / "link")
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture
def tree_loads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The ids of the trees loaded through Repository.load_tree_blob, in this process."""
    loaded: list[bytes] = []
    original = Repository.load_tree_blob

    def counting(self, tree_id, **options):  # type: ignore[no-untyped-def]
        loaded.append(tree_id)
        return original(self, tree_id, **options)

    monkeypatch.setattr(Repository, "load_tree_blob", counting)
    return loaded


def test_an_unchanged_backup_loads_none_of_the_backed_up_trees(
    repo: Path, source: Path, tree_loads: list[bytes]
) -> None:
    first = backup_json(repo, source)
    parent = snapshots(repo)[-1]
    table = table_of(repo, parent)
    below = tree_ids(repo, subtree_of(repo, parent, source))
    assert {tree for tree, _ in table.values()} == below  # every directory of the source
    tree_loads.clear()
    second = backup_json(repo, source)
    assert not below & set(tree_loads)  # only the trees above the source were read
    assert second["files_unchanged"] == first["files_new"] == 25
    assert second["bytes_total"] == first["bytes_total"] and second["bytes_read"] == 0
    assert second["dirs"] == first["dirs"]
    latest = snapshots(repo)[-1]
    assert subtree_of(repo, latest, source) == subtree_of(repo, parent, source)


def test_the_table_names_only_trees_of_its_own_snapshot(repo: Path, source: Path) -> None:
    """A tree in the table is reused without a look: it must be one the snapshot keeps (so
    no prune can delete it while the snapshot exists)."""
    backup_json(repo, source)
    write_file(source / "g1" / "d2" / "t.txt", b"changed\n")
    os.rename(source / "g2" / "d0", source / "g2" / "moved")
    backup_json(repo, source)
    latest = snapshots(repo)[-1]
    table = table_of(repo, latest)
    reachable = tree_ids(repo, latest["tree"])
    assert table and all(tree in reachable for tree, _ in table.values())
    assert all(set(subs.values()) <= reachable for _, subs in table.values())


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


MUTATIONS = [
    lambda root: write_file(root / "g0" / "d1" / "f.bin", b"same size? no: shorter"),
    lambda root: append(root / "g0" / "d1" / "t.txt", b"appended\n"),
    lambda root: os.chmod(root / "g1" / "d1" / "f.bin", 0o600),
    lambda root: os.rename(root / "g1" / "d2" / "f.bin", root / "g1" / "d2" / "renamed.bin"),
    lambda root: (root / "g2" / "d3" / "t.txt").unlink(),
    lambda root: write_file(root / "g2" / "d3" / "deeper" / "new.txt", b"new\n"),
    lambda root: os.setxattr(root / "g0" / "d0" / "f.bin", "user.note", b"x"),
    lambda root: os.utime(root / "g1" / "d0", ns=(5, 5_000_000_000)),
    lambda root: (os.unlink(root / "link"), os.symlink("g0", root / "link")),
    lambda root: os.link(root / "g2" / "d1" / "f.bin", root / "g2" / "d2" / "hard.bin"),
    lambda root: write_file(root / "g2" / "d1" / "f.bin", b"written through a hard link"),
    lambda root: os.chmod(root / "g0", 0o700),
]


@pytest.fixture(params=["0", "2"], ids=["one-process", "reader-processes"])
def readers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Backups in one process, or with leaf directories in reader processes from the first."""
    monkeypatch.setenv("SAFEHOLD_READ_PROCESSES", request.param)
    monkeypatch.setattr(readprocs, "START_AFTER", 0)
    return request.param


@pytest.mark.parametrize("number", range(len(MUTATIONS)))
def test_every_kind_of_change_gives_the_tree_a_full_comparison_gives(
    repo: Path,
    source: Path,
    tmp_path: Path,
    number: int,
    monkeypatch: pytest.MonkeyPatch,
    readers: str,
) -> None:
    """After a change, the backup that took unchanged directories from the table writes
    exactly the trees (equal ids) of a backup that compared every entry (no local cache),
    and restores to the changed source; with reader processes too."""
    backup_json(repo, source)
    for mutation in MUTATIONS[: number + 1]:
        mutation(source)
        with_table = backup_json(repo, source)
    first = snapshots(repo)[-1]
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")
    without = backup_json(repo, source)
    second = snapshots(repo)[-1]
    monkeypatch.delenv("SAFEHOLD_CACHE_DIR")
    assert subtree_of(repo, first, source) == subtree_of(repo, second, source)
    assert with_table["bytes_total"] == without["bytes_total"]
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", repo, f"{first['id']}:{source}", "--target", target)
    assert result.code == 0, result.err
    assert compare_trees(source, target, include_root=False) == []


def test_a_directory_with_an_unreadable_file_is_not_remembered(
    repo: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that could not be read is missing from its directory's tree: the next backup
    must try it again, not take the directory as known."""
    victim = source / "g1" / "d3" / "f.bin"
    original = FileReader.read_file

    def failing(self, path, entry):  # type: ignore[no-untyped-def]
        if path == os.fsencode(victim):
            raise PermissionError(13, "Permission denied")
        return original(self, path, entry)

    monkeypatch.setattr(FileReader, "read_file", failing)
    first = run_cli("backup", "--repo", repo, "--json", source)
    assert first.code == 3, first.err
    monkeypatch.setattr(FileReader, "read_file", original)
    second = backup_json(repo, source)
    assert second["files_new"] == 1 and second["bytes_read"] == 3000
    latest = snapshots(repo)[-1]
    result = run_cli("ls", "--repo", repo, f"{latest['id']}:{victim.parent}")
    assert "f.bin" in result.out


def test_a_damaged_or_foreign_table_is_ignored(repo: Path, source: Path, tmp_path: Path) -> None:
    backup_json(repo, source)
    parent = snapshots(repo)[-1]
    with open_repository(repo) as repository:
        path = Path(repository.object_cache.directory) / "dirs" / parent["id"]  # type: ignore[union-attr]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    assert table_of(repo, parent) == {}
    assert not path.exists()  # dropped, like any cached copy that fails
    write_file(source / "g0" / "d0" / "t.txt", b"after the damage\n")
    summary = backup_json(repo, source)
    assert summary["files_changed"] == 1
    latest = snapshots(repo)[-1]
    assert table_of(repo, latest)
    # A table kept for one version of a snapshot does not serve another one (repair).
    assert table_of(repo, dict(latest, tree=parent["tree"])) == {}


def test_tables_go_with_their_snapshots(repo: Path, source: Path) -> None:
    backup_json(repo, source)
    first = snapshots(repo)[-1]
    backup_json(repo, source)
    second = snapshots(repo)[-1]
    with open_repository(repo) as repository:
        directory = Path(repository.object_cache.directory) / "dirs"  # type: ignore[union-attr]
    assert sorted(os.listdir(directory)) == [second["id"]]  # the parent's was superseded
    backup_json(repo, source, "--force")  # no parent: nothing superseded
    third = snapshots(repo)[-1]
    assert sorted(os.listdir(directory)) == sorted([second["id"], third["id"]])
    result = run_cli("forget", "--repo", repo, "--keep-last", "1")
    assert result.code == 0, result.err
    run_cli("snapshots", "--repo", repo)
    assert sorted(os.listdir(directory)) == [third["id"]]
    assert first["id"] not in os.listdir(directory)


def test_without_a_local_cache_backups_compare_every_entry(
    repo: Path, source: Path, monkeypatch: pytest.MonkeyPatch, tree_loads: list[bytes]
) -> None:
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")
    backup_json(repo, source)
    parent = snapshots(repo)[-1]
    tree_loads.clear()
    summary = backup_json(repo, source)
    assert summary["files_unchanged"] == 25
    assert subtree_of(repo, parent, source) in tree_loads


def test_a_hot_cold_platform_backup_keeps_only_its_cold_trees(
    repo: Path, tmp_path: Path, tree_loads: list[bytes], readers: str
) -> None:
    """The cold pass takes what the hot pass just walked as known (so it reads no tree of
    it), and the table the snapshot keeps names only trees the snapshot holds: not the hot
    pass's tree of a directory that changed before the cold pass (stopping the services
    writes to d5 here)."""
    root = tmp_path / "platform"
    for number in range(6):
        write_file(root / "data" / f"d{number}" / "f.bin", bytes([number]) * 5000)
    services = {
        "control": "command",
        "stop_command": f"echo stopped >> {root}/data/d5/f.bin",
        "start_command": "true",
    }
    config = mini_platform(root, repo, strategy="hot+cold", services=services)
    tree_loads.clear()
    result = run_cli("backup", "--config", config, "--json")
    assert result.code == 0, result.err
    loaded = set(tree_loads)
    latest = snapshots(repo)[-1]
    table = table_of(repo, latest)
    reachable = tree_ids(repo, latest["tree"])
    assert len(table) == 7  # data and its six subdirectories
    assert all(tree in reachable for tree, _ in table.values())
    assert not {tree for tree, _ in table.values()} & loaded
    write_file(root / "data" / "d3" / "f.bin", b"changed between the backups")
    result = run_cli("backup", "--config", config, "--json")
    assert result.code == 0, result.err
    second = snapshots(repo)[-1]
    reachable = tree_ids(repo, second["tree"])
    assert all(tree in reachable for tree, _ in table_of(repo, second).values())
    target = tmp_path / "restored"
    result = run_cli("restore", "--config", config, "--target", target, "--json")
    assert result.code == 0, result.err
    restored = next(target.rglob("d3")) / "f.bin"
    assert restored.read_bytes() == b"changed between the backups"


def test_an_unchanged_platform_of_files_loads_no_index(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing changed: the component entries and the snapshot's root tree are the parent's,
    so nothing is written and the index is never loaded (for a large repository: seconds and
    hundreds of MB)."""
    root = tmp_path / "platform"
    for number in range(3):
        write_file(root / "data" / f"d{number}" / "f.bin", bytes([number]) * 5000)
    config = mini_platform(root, repo)
    document = json.loads(config.read_text())
    document["components"] = [c for c in document["components"] if c["type"] == "files"]
    config.write_text(json.dumps(document))
    result = run_cli("backup", "--config", config, "--json")
    assert result.code == 0, result.err
    loads: list[int] = []
    original = Index.finish_loading
    monkeypatch.setattr(Index, "finish_loading", lambda self: loads.append(1) or original(self))
    result = run_cli("backup", "--config", config, "--json")
    assert result.code == 0, result.err
    assert loads == []
    first, second = snapshots(repo)[-2:]
    assert first["tree"] == second["tree"]
    write_file(root / "data" / "d1" / "f.bin", b"changed")
    result = run_cli("backup", "--config", config, "--json")
    assert result.code == 0, result.err
    assert snapshots(repo)[-1]["tree"] != second["tree"]
