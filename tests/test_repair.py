"""repair index rebuilds the index from the packs; repair snapshots salvages what is readable."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import (
    backup_json,
    blob_place,
    flip_byte,
    open_repository,
    repo_state,
    run_cli,
    snapshot_entry,
    write_file,
)

from safehold.crypto import NONCE_SIZE


@pytest.fixture
def repo(make_repo) -> Path:  # type: ignore[no-untyped-def]
    return make_repo(pack_size=16 * 1024)  # small packs: each file's blob in a pack of its own


@pytest.fixture
def source(tmp_path: Path) -> Path:
    rnd = random.Random(5)
    root = tmp_path / "src"
    # first in the walk, so its pack holds its blob alone (no tree written before it)
    write_file(root / "0victim.bin", rnd.randbytes(64 * 1024))
    write_file(root / "healthy.bin", rnd.randbytes(64 * 1024))
    write_file(root / "sub" / "note.txt", b"fine\n")
    write_file(root / "sub" / "deeper" / "more.bin", rnd.randbytes(40 * 1024))
    return root


@pytest.fixture
def snapshot_id(repo: Path, source: Path) -> str:
    return backup_json(repo, source)["snapshot_id"]


def index_files(repo: Path) -> list[Path]:
    return sorted((repo / "index").iterdir())


def victim_pack(repo: Path, source: Path) -> tuple[Path, int, int]:
    entry = snapshot_entry(repo, "latest", f"{source}/0victim.bin")
    assert len(entry["content"]) == 1
    return blob_place(repo, entry["content"][0])


def restored(tmp_path: Path, repo: Path, source: Path, name: str = "out") -> Path:
    target = tmp_path / name
    result = run_cli("restore", "latest", "--repo", repo, "--target", target)
    assert result.code == 0, result.err
    return target / str(source).lstrip("/")


def files_below(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_repair_index_after_losing_every_index_file(repo, source, snapshot_id, tmp_path) -> None:
    old = index_files(repo)
    for path in old:
        path.unlink()
    assert run_cli("check", "--repo", repo).code == 13
    result = run_cli("repair", "index", "--repo", repo)
    assert result.code == 0, result.err
    assert "wrote 1 index file(s)" in result.out
    check = run_cli("check", "--repo", repo, "--read-data")
    assert check.code == 0, check.err
    assert "not referenced" not in check.out
    assert files_below(restored(tmp_path, repo, source)) == files_below(source)


def test_repair_index_supersedes_and_replaces_the_old_files(repo, source, snapshot_id) -> None:
    backup_json(repo, source, "--force")
    old = {path.name for path in index_files(repo)}
    result = run_cli("repair", "index", "--repo", repo, "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["index_files_old"] == len(old) and report["index_files_deleted"] == len(old)
    new = index_files(repo)
    assert len(new) == report["index_files_written"] == 1 and new[0].name not in old
    with open_repository(repo) as repository:
        content = repository.load_object(f"index/{new[0].name}")
        assert sorted(s.hex() for s in content["supersedes"]) == sorted(old)  # type: ignore[index]
        assert content["version"] == 1  # type: ignore[index]
    assert run_cli("check", "--repo", repo, "--read-data").code == 0


def test_repair_index_splits_large_indexes(repo, source, snapshot_id, monkeypatch) -> None:
    import safehold.ops.repair

    monkeypatch.setattr(safehold.ops.repair, "INDEX_FILE_RECORDS", 2)
    result = run_cli("repair", "index", "--repo", repo, "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["index_files_written"] == (report["blobs"] + 1) // 2 > 1
    assert len(index_files(repo)) == report["index_files_written"]
    assert run_cli("check", "--repo", repo, "--read-data").code == 0


def test_repair_index_leaves_a_damaged_pack_out_and_in_place(repo, source, snapshot_id) -> None:
    pack, offset, length = victim_pack(repo, source)
    flip_byte(pack, offset + NONCE_SIZE + length // 2)
    damaged = pack.read_bytes()
    result = run_cli("repair", "index", "--repo", repo)
    assert result.code == 13
    assert f"pack {pack.name} is damaged" in result.err
    assert result.err_lines[-1].startswith("safehold: integrity error: 1 damaged pack(s)")
    assert pack.read_bytes() == damaged  # never deleted
    healthy = snapshot_entry(repo, "latest", f"{source}/healthy.bin")["content"]
    victim = snapshot_entry(repo, "latest", f"{source}/0victim.bin")["content"]
    with open_repository(repo) as repository:
        assert all(repository.index.lookup(blob) is not None for blob in healthy)
        assert all(repository.index.lookup(blob) is None for blob in victim)
    check = run_cli("check", "--repo", repo)
    assert check.code == 13 and "not indexed" in check.err and "0victim.bin" in check.err


def test_repair_snapshots_after_losing_a_pack(repo, source, snapshot_id, tmp_path) -> None:
    pack, _, _ = victim_pack(repo, source)
    pack.unlink()
    result = run_cli("repair", "snapshots", "--repo", repo)
    assert result.code == 0, result.err
    assert f"snapshot {snapshot_id[:8]} replaced by" in result.out
    assert f"{source}/0victim.bin" in result.out
    assert run_cli("check", "--repo", repo).code == 13  # the index still names the lost pack
    assert run_cli("repair", "index", "--repo", repo).code == 0
    check = run_cli("check", "--repo", repo, "--read-data")
    assert check.code == 0, check.err
    listed = run_cli("snapshots", "--repo", repo, "--json").json()
    assert len(listed) == 1 and listed[0]["id"] != snapshot_id  # type: ignore[index]
    with open_repository(repo) as repository:
        new = repository.load_snapshot(listed[0]["id"])  # type: ignore[index]
    assert new["repaired_from"] == snapshot_id
    assert new["dropped_paths"] == [f"{source}/0victim.bin".encode()]
    expected = files_below(source)
    del expected["0victim.bin"]
    assert files_below(restored(tmp_path, repo, source)) == expected


def test_repair_index_then_snapshots_after_a_flipped_byte(repo, source, snapshot_id, tmp_path):
    pack, offset, length = victim_pack(repo, source)
    flip_byte(pack, offset + NONCE_SIZE + length // 2)
    assert run_cli("repair", "index", "--repo", repo).code == 13
    result = run_cli("repair", "snapshots", "--repo", repo, "--json")
    assert result.code == 0, result.err
    (item,) = result.json()["repaired"]  # type: ignore[index]
    assert item["snapshot"] == snapshot_id and item["dropped"] == [f"{source}/0victim.bin"]
    check = run_cli("check", "--repo", repo)
    assert check.code == 0, check.err
    assert f"data/{pack.name}" in check.out  # the damaged pack stays, as a note
    expected = files_below(source)
    del expected["0victim.bin"]
    assert files_below(restored(tmp_path, repo, source)) == expected


def test_repair_snapshots_drops_an_unreadable_subtree(repo, source, snapshot_id, tmp_path):
    deeper = snapshot_entry(repo, "latest", f"{source}/sub/deeper")
    tree_pack, offset, length = blob_place(repo, deeper["subtree"])
    flip_byte(tree_pack, offset + NONCE_SIZE + length // 2)
    result = run_cli("repair", "snapshots", "--repo", repo, "--json")
    assert result.code == 0, result.err
    (item,) = result.json()["repaired"]  # type: ignore[index]
    assert item["dropped"] == [f"{source}/sub/deeper"]
    expected = files_below(source)
    del expected["sub/deeper/more.bin"]
    assert files_below(restored(tmp_path, repo, source)) == expected


def test_repair_snapshots_leaves_intact_snapshots_alone(repo, source, snapshot_id) -> None:
    before = repo_state(repo)
    result = run_cli("repair", "snapshots", "--repo", repo)
    assert result.code == 0, result.err
    assert "1 snapshot(s) read, 0 replaced" in result.out
    assert repo_state(repo) == before


def test_dry_runs_change_nothing(repo, source, snapshot_id) -> None:
    pack, _, _ = victim_pack(repo, source)
    pack.unlink()
    for path in index_files(repo)[:1]:
        path.unlink()
    before = repo_state(repo)
    index = run_cli("repair", "index", "--repo", repo, "--dry-run")
    assert index.code == 0, index.err
    assert "nothing was changed" in index.out
    snapshots = run_cli("repair", "snapshots", "--repo", repo, "--dry-run", "--json")
    assert snapshots.code == 0, snapshots.err
    report = snapshots.json()
    assert report["dry_run"] is True and len(report["repaired"]) == 1  # type: ignore[index]
    assert repo_state(repo) == before


def test_repair_snapshots_refuses_with_a_damaged_index_file(repo, source, snapshot_id) -> None:
    path = index_files(repo)[0]
    flip_byte(path, len(path.read_bytes()) // 2)
    before = repo_state(repo)
    result = run_cli("repair", "snapshots", "--repo", repo)
    assert result.code == 13
    assert "repair index" in result.err and "nothing was changed" in result.err
    assert repo_state(repo) == before
    assert run_cli("repair", "index", "--repo", repo).code == 0
    assert run_cli("check", "--repo", repo, "--read-data").code == 0


def test_repair_refuses_while_another_process_holds_the_repository(repo, snapshot_id) -> None:
    with open_repository(repo) as repository, repository.lock():
        for action in ("index", "snapshots"):
            assert run_cli("repair", action, "--repo", repo).code == 14
