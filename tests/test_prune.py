"""`safehold prune` on real repositories: space freed, repacking, interrupted backups, the
lock, dry runs, and crashes at every kind of write or delete (the next prune finishes)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from conftest import (
    assert_one_line_error,
    backup_json,
    compare_trees,
    open_repository,
    repo_state,
    run_cli,
    write_file,
)

from safehold.errors import RepositoryLocked, StorageError
from safehold.ops.prune import prune
from safehold.repo.pack import PackBuilder
from safehold.repo.repository import pack_name
from safehold.store.wrappers import Fault, FaultyStore

KiB = 1024
SMALL_PACKS = {"pack_size": 64 * KiB}  # many packs from a few hundred KiB


def data_size(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())


def contents(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def prune_json(repo: Path, *args: object) -> dict:
    result = run_cli("prune", "--repo", repo, "--json", "--keep-young", "0", *args)
    assert result.code == 0, result.err
    document = result.json()
    assert isinstance(document, dict)
    return document


def check_ok(repo: Path) -> dict:
    result = run_cli("check", "--repo", repo, "--read-data", "--json")
    assert result.code == 0, result.out + result.err
    document = result.json()
    assert isinstance(document, dict)
    return document


@pytest.fixture
def history(make_repo, tmp_path: Path) -> tuple[Path, Path, dict[str, dict[str, bytes]]]:
    """Three backups of a changing directory of small incompressible files (three snapshots,
    many small packs); returns (repository, source, {snapshot id: expected contents})."""
    repo = make_repo(**SMALL_PACKS)
    source = tmp_path / "src"
    rnd = random.Random(5)
    expected = {}
    gone = [[], [n for n in range(24) if n % 2], [n for n in range(24) if n % 4 == 0]]
    for step in range(3):  # interleaved deletions: every pack of the first backup stays part used
        for number in range(step * 12, step * 12 + 24):
            write_file(source / f"f{number:03}", rnd.randbytes(6 * KiB))
        for number in gone[step]:
            (source / f"f{number:03}").unlink(missing_ok=True)
        expected[backup_json(repo, source)["snapshot_id"]] = contents(source)
    return repo, source, expected


def assert_restores(repo: Path, source: Path, expected: dict, tmp_path: Path) -> None:
    """Every listed snapshot restores bit-identical; the latest equals the source exactly."""
    for number, (snapshot_id, files) in enumerate(expected.items()):
        target = tmp_path / f"restored-{number}-{random.random()}"
        result = run_cli("restore", "--repo", repo, f"{snapshot_id}:{source}", "--target", target)
        assert result.code == 0, result.err
        assert contents(target) == files
    assert compare_trees(source, target, include_root=False) == []


def forget_oldest(repo: Path, expected: dict) -> None:
    oldest = next(iter(expected))
    with open_repository(repo) as repository:
        repository.store.delete("snapshots/" + oldest)
    del expected[oldest]


# ------------------------------------------------------------------ freeing space


def test_forget_prune_frees_space_and_everything_left_restores(history, tmp_path: Path) -> None:
    repo, source, expected = history
    before = data_size(repo)
    result = run_cli("forget", "--repo", repo, "--keep-last", "2", "--prune", "--keep-young", "0")
    assert result.code == 0, result.err
    assert "freed" in result.out
    del expected[next(iter(expected))]
    assert data_size(repo) < before
    document = check_ok(repo)
    assert document["notes"] == [] and document["snapshots"] == 2
    assert_restores(repo, source, expected, tmp_path)
    again = prune_json(repo, "--max-unused", "0%")  # nothing left to do
    assert not again["packs_delete"] and not again["packs_repack"] and not again["packs_unindexed"]
    unchanged = backup_json(repo, source)["files_unchanged"]
    assert unchanged == len(list(source.iterdir()))  # the next backup still works


def test_dry_run_changes_nothing(history) -> None:
    repo, _source, expected = history
    forget_oldest(repo, expected)
    before = repo_state(repo)
    plan = prune_json(repo, "--dry-run", "--max-unused", "0%")
    assert plan["dry_run"] and plan["packs_repack"] and plan["done"] == {}
    assert repo_state(repo) == before
    text = run_cli("prune", "--repo", repo, "--dry-run")
    assert text.code == 0 and "nothing was changed" in text.out
    assert repo_state(repo) == before


def test_partly_used_pack_is_repacked(make_repo, tmp_path: Path) -> None:
    repo = make_repo()  # 16 MiB packs: the first backup's files share one pack
    source = tmp_path / "src"
    rnd = random.Random(7)
    for number in range(16):
        write_file(source / f"f{number:02}", rnd.randbytes(8 * KiB))
    first = backup_json(repo, source)["snapshot_id"]
    with open_repository(repo) as repository:
        (old_pack,) = repository.index.packs
    for number in range(8):
        (source / f"f{number:02}").unlink()
    second = backup_json(repo, source)["snapshot_id"]
    assert run_cli("forget", "--repo", repo, "--keep-last", "1").code == 0
    tolerant = prune_json(repo, "--dry-run", "--max-unused", "100%")
    assert tolerant["packs_repack"] == [] and tolerant["packs_delete"] == []
    plan = prune_json(repo)  # half of the pack is unused: far above 5%
    assert plan["packs_repack"] == [old_pack.hex()]
    assert plan["done"]["blobs_repacked"] == 8 and plan["done"]["packs_written"] == 1
    assert plan["bytes_unused_after"] == 0
    assert not (repo / "data" / old_pack.hex()[:2] / old_pack.hex()).exists()
    check_ok(repo)
    assert_restores(repo, source, {second: contents(source)}, tmp_path)
    assert first not in run_cli("snapshots", "--repo", repo).out


def test_repacking_into_several_new_packs(make_repo, tmp_path: Path) -> None:
    """Kept blobs fill more than one new pack: each written pack is whole and readable."""
    repo = make_repo(pack_size=16 * KiB)
    source = tmp_path / "src"
    rnd = random.Random(9)
    for number in range(40):
        write_file(source / f"f{number:02}", rnd.randbytes(6 * KiB))
    first = backup_json(repo, source)["snapshot_id"]
    for number in range(0, 40, 2):  # every pack of the first backup is left half used
        (source / f"f{number:02}").unlink()
    second = backup_json(repo, source)["snapshot_id"]
    with open_repository(repo) as repository:
        repository.store.delete("snapshots/" + first)
    plan = prune_json(repo, "--max-unused", "0%")
    assert plan["done"]["packs_written"] >= 3
    assert check_ok(repo)["notes"] == []  # --read-data: every pack and header intact
    assert_restores(repo, source, {second: contents(source)}, tmp_path)


def test_new_index_in_many_small_files_lists_every_blob(history, monkeypatch, tmp_path) -> None:
    """The new index is written file by file from the kept rows, then the repacked ones: with
    7 records a file, files hold kept rows, repacked rows or both, and nothing is lost."""
    import safehold.ops.prune

    monkeypatch.setattr(safehold.ops.prune, "INDEX_FILE_RECORDS", 7)
    repo, source, expected = history
    forget_oldest(repo, expected)
    plan = prune_json(repo, "--max-unused", "0%")
    assert plan["done"]["blobs_repacked"] and plan["done"]["index_files_written"] > 3
    with open_repository(repo) as repository:
        names = repository.index_names()
        assert len(names) == plan["done"]["index_files_written"]
        sizes = [len(repository.load_index_file(name)["records"]) // 49 for name in names]
    assert max(sizes) == 7 and sum(sizes) > 7 * (len(sizes) - 1)  # all full but one
    assert check_ok(repo)["notes"] == []
    assert_restores(repo, source, expected, tmp_path)


def test_size_limits_are_respected(history) -> None:
    repo, _source, expected = history
    forget_oldest(repo, expected)
    plan = prune_json(repo, "--dry-run", "--max-unused", "0%", "--max-repack-size", "1")
    assert plan["packs_repack"] == []  # no pack is as small as one byte
    assert run_cli("prune", "--repo", repo, "--max-repack-size", "lots").code == 2
    assert run_cli("prune", "--repo", repo, "--max-unused", "120%").code == 2


# ------------------------------------------------------------------ leftovers and the lock


def write_stray_pack(repo: Path) -> bytes:
    """A valid pack that no index lists, as an interrupted backup leaves it."""
    with open_repository(repo) as repository:
        builder = PackBuilder()
        data = b"written by a backup that was killed"
        blob_id = repository.cipher.blob_id(data)
        builder.add(0, blob_id, repository.seal_blob(0, blob_id, data), len(data))
        pack_id, pack = builder.finish(repository.cipher)
        repository.store.save(pack_name(pack_id), pack)
    return pack_id


def test_packs_no_index_lists_are_removed(history) -> None:
    repo, _source, _expected = history
    stray = write_stray_pack(repo)
    assert any(stray.hex() in note for note in check_ok(repo)["notes"])
    plan = prune_json(repo)
    assert plan["packs_unindexed"] == [stray.hex()]
    assert check_ok(repo)["notes"] == []


def test_young_packs_are_left_alone_by_default(history, tmp_path: Path) -> None:
    """Defence in depth: whatever a lock says, packs written within --keep-young (4h by
    default) are neither deleted nor repacked; a prune later (by the store's clock) takes them."""
    repo, source, expected = history
    forget_oldest(repo, expected)
    stray = write_stray_pack(repo)
    before = repo_state(repo)
    result = run_cli("prune", "--repo", repo, "--json", "--max-unused", "0%")
    assert result.code == 0, result.err
    plan = result.json()
    assert (plan["packs_delete"], plan["packs_repack"], plan["packs_unindexed"]) == ([], [], [])
    assert stray.hex() in plan["packs_young"] and plan["keep_young"] == 4 * 3600
    assert {p for p in before if p.startswith("data")} <= set(repo_state(repo))
    text = run_cli("prune", "--repo", repo, "--dry-run", "--max-unused", "0%")
    assert "written less than 4h ago" in text.out
    with open_repository(repo) as repository:  # five hours later
        later = prune(repository, max_unused=0.0, clock=lambda: time.time() + 5 * 3600)
    assert stray in later.unindexed and later.delete and later.done["packs_deleted"]
    assert later.young == []
    check_ok(repo)
    assert_restores(repo, source, expected, tmp_path)


@pytest.mark.parametrize("text", ["4", "4x", "h", "1 day"])
def test_keep_young_takes_a_duration(history, text: str) -> None:
    repo, _source, _expected = history
    assert_one_line_error(run_cli("prune", "--repo", repo, "--keep-young", text), 2, "--keep-young")


def test_temp_files_of_interrupted_writes_are_removed(history) -> None:
    """A process killed between borgstore's temp-file write and its rename leaves the temp file
    (invisible to listing); prune removes those, but in locks/ only stale ones, as another
    process may be writing its lock right now."""
    repo, source, _expected = history
    pack_dir = next(d for d in sorted((repo / "data").iterdir()) if any(d.iterdir()))
    leftovers = {
        pack_dir / "tmpkilled1.tmp": 5000,
        repo / "index" / "tmpkilled2.tmp": 300,
        repo / "snapshots" / "tmpkilled3.tmp": 200,
        repo / "locks" / "tmpold.tmp": 100,
    }
    for path, size in leftovers.items():
        path.write_bytes(b"x" * size)
    old = time.time() - 3600
    os.utime(repo / "locks" / "tmpold.tmp", (old, old))
    fresh = repo / "locks" / "tmpfresh.tmp"
    fresh.write_bytes(b"y" * 100)
    dry = prune_json(repo, "--dry-run")
    assert sorted(dry["temporaries"]) == sorted(str(p.relative_to(repo)) for p in leftovers)
    assert dry["bytes_temporaries"] == sum(leftovers.values())
    assert all(path.exists() for path in leftovers)  # a dry run removes nothing
    text = run_cli("prune", "--repo", repo, "--keep-young", "0")
    assert text.code == 0, text.err
    assert "removed 4 temp file(s) of interrupted writes" in text.out
    assert not any(path.exists() for path in leftovers)
    assert fresh.exists()  # possibly another process's lock being written
    assert check_ok(repo)["notes"] == []
    assert backup_json(repo, source)["files_unchanged"] == len(list(source.iterdir()))


def test_a_running_backup_blocks_prune(history) -> None:
    repo, _source, _expected = history
    stray = write_stray_pack(repo)  # what a running backup might just have written
    with open_repository(repo) as repository, repository.lock():
        before = repo_state(repo)
        result = run_cli("prune", "--repo", repo)
        assert_one_line_error(result, 14, "locked by a running backup or restore")
        assert repo_state(repo) == before
    assert prune_json(repo)["packs_unindexed"] == [stray.hex()]


# ------------------------------------------------------------------ crashes


FAULTS = [
    Fault("save", 1, match="data/"),  # the first repacked pack
    Fault("load", 1, match="index/"),  # before anything was written
    Fault("save", 1, match="index/"),  # the new index
    Fault("delete", 1, match="index/"),  # the old index, first and second file
    Fault("delete", 2, match="index/"),
    Fault("delete", 1, match="data/"),  # the packs
    Fault("delete", 3, match="data/"),
    Fault("load", 4, match="data/"),  # reading a tree or a pack to repack
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f"{f.kind}-{f.match[:-1]}-{f.nth}")
def test_a_crash_at_any_step_leaves_a_sound_repository(
    history, fault: Fault, tmp_path: Path
) -> None:
    repo, source, expected = history
    forget_oldest(repo, expected)
    write_stray_pack(repo)
    with open_repository(repo) as repository:
        faulty = FaultyStore(
            repository.store,
            Fault(**{**fault.__dict__, "error": StorageError("injected: the machine died here")}),
        )
        repository.store = faulty
        with pytest.raises(StorageError, match="injected"):
            prune(repository, max_unused=0.0, keep_young=0)
        assert faulty.injected, "the fault never struck: the test is not testing anything"
    check_ok(repo)
    assert_restores(repo, source, expected, tmp_path)
    prune_json(repo, "--max-unused", "0%")  # the next prune finishes the job
    after = prune_json(repo, "--dry-run", "--max-unused", "0%")
    assert (after["packs_delete"], after["packs_repack"], after["packs_unindexed"]) == ([], [], [])
    assert check_ok(repo)["notes"] == []
    assert_restores(repo, source, expected, tmp_path)


def test_prune_that_lost_its_lock_deletes_nothing(history, tmp_path: Path) -> None:
    """If prune's lock vanished (it stalled until others took it for stale), a backup may be
    running: prune stops before its first deletion and the repository stays sound."""
    repo, source, expected = history
    forget_oldest(repo, expected)

    def lose_lock(message: str) -> None:
        if message == "writing the new index":
            for name, _size in list(repository.store.list("locks")):
                repository.store.delete(name)

    with open_repository(repo) as repository:
        packs = {name for name, _size in repository.store.list("data")}
        with pytest.raises(RepositoryLocked, match="run prune again"):
            prune(repository, max_unused=0.0, keep_young=0, progress=lose_lock)
        assert packs <= {name for name, _size in repository.store.list("data")}
    check_ok(repo)
    assert_restores(repo, source, expected, tmp_path)
    prune_json(repo, "--max-unused", "0%")
    assert check_ok(repo)["notes"] == []
