"""`safehold forget` on real repositories, through the command line.

Snapshots at chosen times are copies of one real backup's snapshot (same tree, other time,
host or tags) written with Repository.save_snapshot, so every one of them restores.
"""

from __future__ import annotations

import threading
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

DAY = 86400.0


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write_file(root / "a.txt", b"alpha\n" * 100)
    write_file(root / "sub" / "b.bin", bytes(range(256)) * 64)
    return root


@pytest.fixture
def template(repo: Path, source: Path) -> dict:
    """One real backup; its snapshot object is removed, its content is the template."""
    snapshot_id = backup_json(repo, source)["snapshot_id"]
    with open_repository(repo) as repository:
        snapshot = repository.load_snapshot(snapshot_id)
        repository.store.delete("snapshots/" + snapshot_id)
    del snapshot["id"]
    return snapshot


def add_snapshots(repo: Path, template: dict, ages_in_days: list[float], **fields) -> list[str]:
    """Write one copy of ``template`` per age (days before now, plus an hour); returns ids."""
    now = time.time()
    with open_repository(repo) as repository:
        return [
            repository.save_snapshot(dict(template, time=now - age * DAY - 3600, **fields))
            for age in ages_in_days
        ]


def snapshot_ids(repo: Path) -> set[str]:
    with open_repository(repo) as repository:
        return {name.split("/", 1)[1] for name in repository.snapshot_names()}


def forget_json(repo: Path, *args: object) -> dict:
    result = run_cli("forget", "--repo", repo, "--json", *args)
    assert result.code == 0, result.err
    document = result.json()
    assert isinstance(document, dict)
    return document


def _ids(document: dict, side: str) -> set[str]:
    return {item["id"] for group in document["groups"] for item in group[side]}


# ------------------------------------------------------------------ dry run and deletion


def test_dry_run_deletes_nothing(repo: Path, template: dict) -> None:
    ids = add_snapshots(repo, template, [1, 2, 3, 4, 5])
    before = repo_state(repo)
    result = run_cli("forget", "--repo", repo, "--keep-last", "2", "--dry-run")
    assert result.code == 0, result.err
    assert "dry run: 3 snapshot(s) would be removed, 2 kept; nothing was changed" in result.out
    assert repo_state(repo) == before
    assert snapshot_ids(repo) == set(ids)
    document = forget_json(repo, "--keep-last", "2", "--dry-run")
    assert document["dry_run"] is True and document["removed"] == []
    assert _ids(document, "remove") == set(ids[2:])
    assert repo_state(repo) == before


def test_forget_deletes_only_the_listed_snapshots_and_the_rest_restore(
    repo: Path, template: dict, source: Path, tmp_path: Path
) -> None:
    ids = add_snapshots(repo, template, [0, 1, 2, 3, 10, 40])  # newest first
    data_before = {
        name: data
        for name, data in repo_state(repo).items()
        if name.startswith(("data/", "index/", "keys/", "meta/"))
    }
    document = forget_json(repo, "--keep-last", "2", "--keep-within", "5d")
    kept, removed = _ids(document, "keep"), _ids(document, "remove")
    assert kept == set(ids[:4]) and removed == set(ids[4:])
    assert set(document["removed"]) == removed
    assert snapshot_ids(repo) == kept
    # only snapshot objects went: packs, index files, keys and config are untouched
    after = repo_state(repo)
    assert {k: v for k, v in after.items() if k in data_before} == data_before
    assert not [name for name in after if name.startswith("locks/")]
    for number, snapshot_id in enumerate(sorted(kept)):
        target = tmp_path / f"restored-{number}"
        result = run_cli("restore", "--repo", repo, f"{snapshot_id}:{source}", "--target", target)
        assert result.code == 0, result.err
        assert compare_trees(source, target, include_root=False) == []
    assert run_cli("check", "--repo", repo, "--read-data").code == 0
    assert backup_json(repo, source)["files_unchanged"] == 2  # the next backup still works


def test_reasons_in_the_table(repo: Path, template: dict) -> None:
    add_snapshots(repo, template, [0, 1, 2], tags=["nightly"])
    add_snapshots(repo, template, [3])
    result = run_cli("forget", "--repo", repo, "--keep-last", "1", "--keep-tag", "nightly")
    assert result.code == 0, result.err
    assert "policy: keep the last 1, tag nightly" in result.out
    assert "keep 3 snapshot(s):" in result.out and "remove 1 snapshot(s):" in result.out
    assert "last, tag nightly" in result.out
    assert "removed 1 snapshot(s), kept 3" in result.out
    assert "their data stays in the repository until prune" in result.out


def test_json_output(repo: Path, template: dict) -> None:
    ids = add_snapshots(repo, template, [0, 1, 30], tags=["t"])
    document = forget_json(repo, "--keep-daily", "1", "--keep-tag", "x,t", "--dry-run")
    assert document["policy"] == {"keep_daily": 1, "keep_tags": ["t,x"]}
    assert document["group_by"] == ["host", "paths", "platform"]
    [group] = document["groups"]
    assert group["group"]["host"] == template["hostname"]
    assert group["group"]["paths"] == template["paths"]
    assert group["group"]["platform"] is None
    [newest] = group["keep"]
    assert newest["id"] == ids[0]
    assert newest["reasons"] == [
        f"daily {time.strftime('%Y-%m-%d', time.localtime(newest['time']))}"
    ]
    assert newest["time_iso"].endswith("+00:00")
    assert [item["id"] for item in group["remove"]] == [ids[2], ids[1]]  # oldest first
    assert all("reasons" not in item for item in group["remove"])


# ------------------------------------------------------------------ locks


def test_exclusive_lock_conflicts_with_a_running_backup(repo: Path, template: dict) -> None:
    ids = add_snapshots(repo, template, [0, 1, 2])
    with open_repository(repo) as repository, repository.lock():
        result = run_cli("forget", "--repo", repo, "--keep-last", "1")
        assert_one_line_error(result, 14, "locked by a running backup or restore")
        assert snapshot_ids(repo) == set(ids)
        assert len(list(repository.store.list("locks"))) == 1  # ours was taken back
        preview = run_cli("forget", "--repo", repo, "--keep-last", "1", "--dry-run")
        assert preview.code == 0, preview.err  # a dry run takes no lock
    assert snapshot_ids(repo) == set(ids)


def test_lock_wait_proceeds_once_the_backup_is_done(repo: Path, template: dict) -> None:
    ids = add_snapshots(repo, template, [0, 1])
    with open_repository(repo) as repository:
        holder = repository.lock().acquire()
        threading.Timer(0.3, holder.release).start()
        result = run_cli("forget", "--repo", repo, "--keep-last", "1", "--lock-wait", "10")
    assert result.code == 0, result.err
    assert snapshot_ids(repo) == {ids[0]}


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--keep-last", "1", "--prune", "--max-unused", "lots"], 2, "--max-unused takes"),
        ([], 2, "empty retention policy"),
        (["--keep-last", "0", "--keep-daily", "0"], 2, "empty retention policy"),
        (["--keep-last", "-1"], 2, "keep_last must be a whole number"),
        (["--keep-within", "10"], 2, "invalid duration '10'"),
        (["--keep-last", "1", "--group-by", "hostname"], 2, "cannot group by 'hostname'"),
        (["--keep-tag", "nothing-has-it"], 2, "would remove all 3 snapshot(s)"),
    ],
)
def test_refusals_change_nothing(
    repo: Path, template: dict, args: list[str], code: int, message: str
) -> None:
    add_snapshots(repo, template, [0, 1, 2])
    before = repo_state(repo)
    result = run_cli("forget", "--repo", repo, *args)
    assert_one_line_error(result, code, message)
    assert repo_state(repo) == before


def test_prune_options_are_checked_before_anything_else(tmp_path: Path) -> None:
    result = run_cli(
        "forget",
        "--repo",
        tmp_path / "nowhere",
        "--keep-last",
        "1",
        "--prune",
        "--max-repack-size",
        "lots",
    )
    assert_one_line_error(result, 2, "--max-repack-size takes a size")


# ------------------------------------------------------------------ selection and grouping


def test_groups_host_filter_and_tag_filter(repo: Path, template: dict) -> None:
    alpha = add_snapshots(repo, template, [0, 1, 2], hostname="alpha")
    beta = add_snapshots(repo, template, [0.5, 1.5], hostname="beta", tags=["x"])
    document = forget_json(repo, "--keep-last", "1", "--dry-run")
    assert _ids(document, "keep") == {alpha[0], beta[0]}
    assert [group["group"]["host"] for group in document["groups"]] == ["alpha", "beta"]
    document = forget_json(repo, "--keep-last", "1", "--group-by", "", "--dry-run")
    assert _ids(document, "keep") == {alpha[0]}
    assert document["groups"][0]["group"] == {}
    document = forget_json(repo, "--keep-last", "1", "--tag", "x", "--dry-run")
    assert _ids(document, "keep") | _ids(document, "remove") == set(beta)
    forget_json(repo, "--keep-last", "1", "--host", "alpha")
    assert snapshot_ids(repo) == {alpha[0], *beta}


def test_platform_file_retention_section_with_overrides(
    repo: Path, template: dict, tmp_path: Path, source: Path
) -> None:
    platform = add_snapshots(repo, template, [0, 1, 2, 3], platform="labplat")
    plain = add_snapshots(repo, template, [0, 1])
    config = tmp_path / "labplat.yaml"
    config.write_text(
        f"platform: labplat\nrepository: {repo}\n"
        f"components:\n  - name: files\n    type: files\n    paths: [{source}]\n"
        "retention:\n  keep_last: 1\n  keep_tags: [precious]\n  group_by: [host]\n"
    )
    result = run_cli("forget", "--config", config, "--json", "--dry-run")
    assert result.code == 0, result.err
    document = result.json()
    assert document["policy"] == {"keep_last": 1, "keep_tags": ["precious"]}
    assert document["group_by"] == ["host"]
    assert _ids(document, "keep") == {platform[0]}  # only this platform's snapshots
    assert _ids(document, "remove") == set(platform[1:])
    result = run_cli("forget", "--config", config, "--keep-last", "3", "--group-by", "platform")
    assert result.code == 0, result.err
    assert "platform labplat:" in result.out
    assert snapshot_ids(repo) == {*platform[:3], *plain}


@pytest.mark.parametrize(
    ("retention", "message"),
    [
        ("keep_last: -1", "at retention.keep_last"),
        ("keep_within: 10", "at retention.keep_within"),
        ("keep_dayly: 3", "unknown key 'keep_dayly'"),
        ("group_by: [hostname]", "at retention.group_by[0]"),
    ],
)
def test_invalid_retention_section_is_a_config_error(
    repo: Path, tmp_path: Path, retention: str, message: str
) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(
        f"repository: {repo}\ncomponents:\n  - name: f\n    type: files\n    paths: [/srv]\n"
        f"retention:\n  {retention}\n"
    )
    result = run_cli("forget", "--config", config)
    assert_one_line_error(result, 21, message)
