"""The local tree cache (safehold/repo/cache.py): backups, ls, diff and restore read trees
from it instead of the repository, a damaged cached tree is never believed, and what proves
the repository (check, drill) never looks at it."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from conftest import backup_json, compare_trees, open_repository, run_cli, write_file

from safehold.archive.entries import DIR
from safehold.archive.tree import load_tree
from safehold.store.wrappers import FaultyStore


@pytest.fixture
def source(tmp_path: Path) -> Path:
    rnd = random.Random(3)
    root = tmp_path / "src"
    for number in range(12):
        write_file(root / f"d{number % 4}" / f"sub{number % 3}" / f"f{number}", rnd.randbytes(900))
    return root


def cache_files(repo: Path) -> list[Path]:
    with open_repository(repo) as repository:
        repository_id = repository.config["id"]
    trees = Path(os.environ["XDG_CACHE_HOME"]) / "safehold" / repository_id / "trees"
    return sorted(p for p in trees.rglob("*") if p.is_file())


def walk_all_trees(repo: Path, use_tree_cache: bool = True) -> tuple[int, int]:
    """Reads every tree of the latest snapshot as ls does (or as check does, without
    ``use_tree_cache``); returns (trees read, loads from the repository)."""
    with open_repository(repo) as repository:
        repository.use_tree_cache = use_tree_cache
        snapshot = repository.load_snapshot(repository.snapshot_names()[-1].split("/")[1])
        counting = FaultyStore(repository.store)
        repository.store = counting
        pending, trees = [snapshot["tree"]], 0
        while pending:
            entries = load_tree(repository, pending.pop())
            trees += 1
            pending += [e["subtree"] for e in entries if e["type"] == DIR]
        loads = counting.calls["load"]
    return trees, loads


def test_a_backup_leaves_its_trees_in_the_cache(make_repo, source: Path) -> None:
    repo = make_repo()
    backup_json(repo, source)
    trees, loads = walk_all_trees(repo)
    assert trees >= 17  # root path, 4 + 12 directories below the source
    assert len(cache_files(repo)) == trees
    assert loads == 0  # every tree came from the cache


def test_without_the_cache_trees_come_from_the_repository(
    make_repo, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo()
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")
    backup_json(repo, source)
    trees, loads = walk_all_trees(repo)
    assert loads >= trees  # at least one ranged read per tree
    monkeypatch.delenv("SAFEHOLD_CACHE_DIR")
    assert cache_files(repo) == []


def test_a_cache_emptied_between_backups_is_filled_again(make_repo, source: Path) -> None:
    repo = make_repo()
    backup_json(repo, source)
    for path in cache_files(repo):
        path.unlink()
    trees, loads = walk_all_trees(repo)  # read from the repository, and kept
    assert loads >= trees
    assert len(cache_files(repo)) == trees
    assert walk_all_trees(repo)[1] == 0


@pytest.mark.parametrize("damage", ["flipped", "torn", "empty"])
def test_a_damaged_cached_tree_is_dropped_and_read_from_the_repository(
    make_repo, source: Path, tmp_path: Path, damage: str
) -> None:
    """Flipped: the disk. Torn or empty: a put cut short by a crash (a put is one exclusive
    create and a write, no rename), or read while being written."""
    repo = make_repo()
    backup_json(repo, source)
    rnd = random.Random(11)
    for path in cache_files(repo):  # in every cached tree
        data = bytearray(path.read_bytes())
        if damage == "flipped":
            data[rnd.randrange(len(data))] ^= 0x20
        else:
            del data[len(data) // 2 if damage == "torn" else 0 :]
        path.write_bytes(bytes(data))
    damaged = {path: path.read_bytes() for path in cache_files(repo)}
    summary = backup_json(repo, source)  # parent trees from the repository
    assert summary["files_unchanged"] == 12 and summary["files_new"] == 0
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)
    assert result.code == 0, result.err
    assert compare_trees(source, target, include_root=False) == []
    for path, data in damaged.items():  # each replaced by the good copy
        assert path.read_bytes() != data


def test_checks_and_drills_read_trees_from_the_repository(make_repo, source: Path) -> None:
    repo = make_repo()
    backup_json(repo, source)
    trees, loads = walk_all_trees(repo, use_tree_cache=False)
    assert loads >= trees


def damage_root_tree(repo: Path) -> bytes:
    """Flips a bit of the latest snapshot's root tree in its pack; returns the tree id."""
    with open_repository(repo) as repository:
        snapshot = repository.load_snapshot(repository.snapshot_names()[-1].split("/")[1])
        location = repository.index.lookup(snapshot["tree"])
        pack = next((repo / "data").rglob(location.pack_id.hex()))
    data = bytearray(pack.read_bytes())
    data[location.offset + location.length // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    return snapshot["tree"]


def test_a_restore_takes_verified_trees_from_the_cache(
    make_repo, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached copy authenticates as the very tree the snapshot names, so a restore from
    it is the same restore; without the cache, the damage in the repository is reported."""
    repo = make_repo()
    backup_json(repo, source)
    damage_root_tree(repo)
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", repo, "latest", "--target", target)
    assert result.code == 0, result.err
    assert compare_trees(source, target / str(source).lstrip("/"), include_root=False) == []
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")
    result = run_cli("restore", "--repo", repo, "latest", "--target", tmp_path / "again")
    assert result.code != 0
    assert "damaged" in result.err


def test_check_reads_trees_from_the_repository_not_the_cache(make_repo, source: Path) -> None:
    """A tree damaged in the repository is reported although a good copy is cached."""
    repo = make_repo()
    backup_json(repo, source)
    assert cache_files(repo)
    tree_id = damage_root_tree(repo)
    result = run_cli("check", "--repo", repo)
    assert result.code != 0
    assert tree_id.hex()[:16] in result.out + result.err


def snapshot_tree_ids(repo: Path) -> set[str]:
    """The ids (hex) of every tree of every snapshot, read from the repository."""
    ids: set[str] = set()
    with open_repository(repo) as repository:
        repository.use_tree_cache = False
        for name in repository.snapshot_names():
            pending = [repository.load_snapshot(name.split("/")[1])["tree"]]
            while pending:
                tree_id = pending.pop()
                ids.add(tree_id.hex())
                entries = load_tree(repository, tree_id)
                pending += [e["subtree"] for e in entries if e["type"] == DIR]
    return ids


def test_prune_trims_the_cache_to_the_trees_snapshots_need(make_repo, source: Path) -> None:
    """Each backup after a change leaves its changed directories' old trees in the cache:
    prune removes those no snapshot needs any more (a dry run, none), the rest stay used."""
    repo = make_repo()
    backup_json(repo, source)
    write_file(source / "d0" / "sub0" / "f0", b"changed")
    backup_json(repo, source)
    both = snapshot_tree_ids(repo)
    assert {p.name for p in cache_files(repo)} == both  # the old trees of d0/sub0, d0, ... too

    assert run_cli("prune", "--repo", repo, "--dry-run").code == 0
    result = run_cli("prune", "--repo", repo, "--json", "--keep-young", "0")
    assert result.code == 0, result.err
    assert result.json()["done"]["cached_trees_removed"] == 0  # both snapshots need them all
    assert {p.name for p in cache_files(repo)} == both

    result = run_cli("forget", "--repo", repo, "--keep-last", "1")
    assert result.code == 0, result.err
    latest = snapshot_tree_ids(repo)
    assert len(latest) < len(both)
    result = run_cli("prune", "--repo", repo, "--keep-young", "0")
    assert result.code == 0, result.err
    assert f"removed {len(both - latest)} tree(s) no snapshot needs" in result.out
    assert {p.name for p in cache_files(repo)} == latest

    backup_json(repo, source)  # the next backup finds its parent's trees in the cache
    trees, loads = walk_all_trees(repo)
    assert loads == 0 and trees == len(latest)


def test_cache_lists_the_repositories_caches_and_cleanup_removes_the_old_ones(
    make_repo, source: Path
) -> None:
    """`safehold cache`: each repository's cache with its size and last use (a mark its
    commands touch); --cleanup removes those not used for --max-age days, nothing else."""
    used, gone = make_repo("used"), make_repo("gone")
    backup_json(used, source)
    backup_json(gone, source)
    root = Path(os.environ["XDG_CACHE_HOME"]) / "safehold"
    with open_repository(gone) as repository:
        old = root / repository.config["id"]
    with open_repository(used) as repository:
        kept = root / repository.config["id"]
    forty_days_ago = time.time() - 40 * 86400
    os.utime(old / "last-used", (forty_days_ago, forty_days_ago))
    (root / "dashboard-token").write_text("not a repository's cache")

    listed = run_cli("cache", "--json")
    assert listed.code == 0, listed.err
    caches = {row["repository_id"]: row for row in listed.json()["caches"]}
    assert set(caches) == {old.name, kept.name}
    assert caches[old.name]["old"] and not caches[kept.name]["old"]
    assert caches[old.name]["bytes"] > 0 and not caches[old.name]["removed"]
    assert old.is_dir()  # listing removes nothing

    result = run_cli("cache", "--cleanup")
    assert result.code == 0, result.err
    assert "removed 1 of 2 cache(s)" in result.out
    assert not old.exists() and kept.is_dir() and (root / "dashboard-token").exists()
    assert run_cli("cache", "--cleanup", "--max-age", "-1").code == 2

    trees, loads = walk_all_trees(gone)  # a cache removed costs only time: filled again
    assert loads >= trees > 0 and (old / "last-used").exists()
