"""stats against real backups (files and a platform): a snapshot's unique size is exactly what
prune frees once that snapshot alone is forgotten; per component and per day figures add up;
no file data is read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from safehold.ops.stats import compute_stats
from tests.conftest import (
    backup_json,
    mini_platform,
    open_repository,
    run_cli,
    write_file,
)


@pytest.fixture
def mixed(repo: Path, tmp_path: Path) -> dict:
    """Three file snapshots sharing data, and two platform snapshots."""
    source = tmp_path / "src"
    shared = os.urandom(600_000)
    write_file(source / "a.bin", shared)
    write_file(source / "b.bin", os.urandom(400_000))
    write_file(source / "static" / "deep" / "s.bin", os.urandom(500_000))  # one shared subtree
    ids = [backup_json(repo, source)["snapshot_id"]]
    write_file(source / "c.bin", os.urandom(700_000))
    ids.append(backup_json(repo, source)["snapshot_id"])
    (source / "b.bin").unlink()
    write_file(source / "d.bin", os.urandom(300_000) + shared[:1000])
    ids.append(backup_json(repo, source)["snapshot_id"])
    config = mini_platform(tmp_path / "platform", repo)
    for _ in range(2):
        result = run_cli("backup", "--config", config, "--json")
        assert result.code == 0, result.err
        ids.append(result.json()["snapshot_id"])
        write_file(tmp_path / "platform" / "data" / "new.bin", os.urandom(200_000))
    return {"ids": ids, "config": config}


def _stats(repo: Path) -> dict:
    result = run_cli("stats", "--repo", repo, "--json")
    assert result.code == 0, result.err
    return result.json()  # type: ignore[return-value]


def _prune(repo: Path, *options: str) -> dict:
    result = run_cli(
        "prune", "--repo", repo, "--json", "--max-unused", "0", "--keep-young", "0", *options
    )
    assert result.code == 0, result.err
    return result.json()  # type: ignore[return-value]


def _data_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())


@pytest.mark.slow
def test_unique_is_what_prune_frees(repo: Path, mixed: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")  # copies of one repository, one id
    stats = _stats(repo)
    by_id = {s["id"]: s for s in stats["snapshots"]}
    assert [s["id"] for s in stats["snapshots"]] == mixed["ids"]
    for snapshot_id in mixed["ids"]:
        copy = tmp_path / f"copy-{snapshot_id[:8]}"
        shutil.copytree(repo, copy)
        before = _prune(copy, "--dry-run")
        assert before["bytes_used"] == stats["stored"]
        data_before = _data_bytes(copy)
        with open_repository(copy) as repository:  # what forget does for the chosen one
            repository.store.delete("snapshots/" + snapshot_id)
        after = _prune(copy)
        unique = by_id[snapshot_id]["unique"]
        assert before["bytes_used"] - after["bytes_used"] == unique, snapshot_id
        freed = data_before - _data_bytes(copy)
        assert unique <= freed - before["bytes_unused"] <= unique + 4096, (snapshot_id, freed)
        assert _stats(copy)["stored"] == stats["stored"] - unique


def test_figures_add_up(repo: Path, mixed: dict) -> None:
    stats = _stats(repo)
    ids = mixed["ids"]
    snapshots = {s["id"]: s for s in stats["snapshots"]}
    assert sum(s["added"] for s in stats["snapshots"]) == stats["stored"]
    assert sum(day["added"] for day in stats["growth_per_day"]) == stats["stored"]
    assert sum(day["snapshots"] for day in stats["growth_per_day"]) == 5
    first, second, third = (snapshots[i] for i in ids[:3])
    assert second["added"] > 700_000 and second["unique"] < 100_000  # c.bin is in the third too
    assert third["unique"] > 300_000  # d.bin is its own
    assert first["unique"] > 0 and first["unique"] < 100_000  # b.bin is in the second too
    assert snapshots[ids[3]]["size"] > 0
    groups = {(g["platform"], g["name"]): g for g in stats["groups"]}
    assert set(groups) >= {("mini", "data"), ("mini", "appdb")}
    data = groups[("mini", "data")]
    assert data["snapshots"] == 2 and data["stored"] >= data["unique"] > 200_000
    [files] = [g for g in stats["groups"] if g["platform"] is None]
    assert files["snapshots"] == 3
    assert files["stored"] >= 600_000 + 400_000 + 700_000 + 300_000 + 500_000
    assert sum(g["unique"] for g in stats["groups"]) <= stats["stored"]
    text = run_cli("stats", "--repo", repo, ids[0][:8])
    assert text.code == 0 and ids[0][:8] in text.out and ids[1][:8] not in text.out
    assert "component / files" in text.out and "prune frees it" in text.out


def test_stats_reads_no_file_data(repo: Path, mixed: dict, monkeypatch) -> None:
    """With the trees in the local cache (a first run puts them there), stats loads nothing
    from the packs: index files and snapshots only."""
    assert _stats(repo)["stored"] > 0
    with open_repository(repo) as repository:
        repository.use_tree_cache = True
        loaded: list[str] = []
        original = repository.store.load

        def spy(name: str, *args: object, **kwargs: object) -> bytes:
            loaded.append(name)
            return original(name, *args, **kwargs)

        monkeypatch.setattr(repository.store, "load", spy)
        stats = compute_stats(repository)
    assert stats.stored > 0
    assert [name for name in loaded if name.startswith("data/")] == []


def test_an_empty_repository(repo: Path) -> None:
    stats = _stats(repo)
    assert stats["snapshots"] == [] and stats["stored"] == 0 and stats["growth_per_day"] == []
    assert run_cli("stats", "--repo", repo).code == 0
    found = run_cli("find", "--repo", repo, "--json", "*")
    assert found.code == 0 and found.json() == []
    assert run_cli("dump", "--repo", repo, "latest:/").code == 17
    assert run_cli("stats", "--repo", repo, "abcd").code == 17
