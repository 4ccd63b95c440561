"""tag: snapshot metadata rewritten (new object first, old removed), under the exclusive lock,
refused in no-delete mode, checked by check, honoured by forget --keep-tag."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehold.errors import RepositoryLocked
from safehold.ops import tag as tag_module
from safehold.store.locks import Lock
from tests.conftest import (
    assert_one_line_error,
    backup_json,
    mini_platform,
    open_repository,
    run_cli,
    write_file,
)
from tests.test_no_delete import NO_DELETE_EXIT, add_no_delete_key


def _snapshots(repo: Path) -> list[dict]:
    result = run_cli("snapshots", "--repo", repo, "--json")
    assert result.code == 0, result.err
    return result.json()  # type: ignore[return-value]


@pytest.fixture
def three(repo: Path, tmp_path: Path) -> list[str]:
    source = tmp_path / "src"
    ids = []
    for number in range(3):
        write_file(source / f"f{number}.txt", f"file {number}\n".encode() * 100)
        ids.append(backup_json(repo, source, "--tag", "nightly")["snapshot_id"])
    return ids


def test_tag_rewrites_only_the_snapshot_objects(repo: Path, three: list[str]) -> None:
    before = {s["id"]: s for s in _snapshots(repo)}
    data_before = sorted(p.name for p in (repo / "data").rglob("*") if p.is_file())
    index_before = sorted(p.name for p in (repo / "index").iterdir())
    result = run_cli("tag", "--repo", repo, "--json", "--add", "keep-forever,audit", three[0][:8])
    assert result.code == 0, result.err
    [changed] = result.json()
    assert changed["old_id"] == three[0] and changed["changed"]
    assert changed["tags"] == ["audit", "keep-forever", "nightly"]
    after = {s["id"]: s for s in _snapshots(repo)}
    assert three[0] not in after and changed["new_id"] in after
    new = after.pop(changed["new_id"])
    old = before.pop(three[0])
    assert {k: v for k, v in new.items() if k not in ("id", "tags")} == {
        k: v for k, v in old.items() if k not in ("id", "tags")
    }
    assert after == before  # the others untouched
    assert sorted(p.name for p in (repo / "data").rglob("*") if p.is_file()) == data_before
    assert sorted(p.name for p in (repo / "index").iterdir()) == index_before
    again = run_cli("tag", "--repo", repo, "--add", "audit", changed["new_id"][:8])
    assert again.code == 0 and "unchanged" in again.out
    removed = run_cli("tag", "--repo", repo, "--json", "--remove", "audit", "latest")
    assert removed.json()[0]["tags"] == ["nightly"]
    replaced = run_cli("tag", "--repo", repo, "--json", "--set", "a,b", "latest")
    assert replaced.json()[0]["tags"] == ["a", "b"]
    cleared = run_cli("tag", "--repo", repo, "--json", "--set", "", "latest")
    assert cleared.json()[0]["tags"] == []
    check = run_cli("check", "--repo", repo, "--read-data", "--json")
    assert check.code == 0 and check.json()["snapshots"] == 3


def test_forget_keep_tag_keeps_a_tagged_snapshot(repo: Path, three: list[str]) -> None:
    tagged = run_cli("tag", "--repo", repo, "--json", "--add", "keep-forever", three[0])
    new_id = tagged.json()[0]["new_id"]
    result = run_cli(
        "forget", "--repo", repo, "--json", "--keep-last", "1", "--keep-tag", "keep-forever"
    )
    assert result.code == 0, result.err
    [group] = result.json()["groups"]
    kept = {entry["id"]: entry["reasons"] for entry in group["keep"]}
    assert kept[new_id] == ["tag keep-forever"]
    assert kept[three[2]] == ["last"]
    assert result.json()["removed"] == [three[1]]


def test_platform_snapshots_keep_their_component_tags(repo: Path, tmp_path: Path) -> None:
    config = mini_platform(tmp_path / "platform", repo)
    assert run_cli("backup", "--config", config, "--tag", "weekly").code == 0
    result = run_cli("tag", "--repo", repo, "--json", "--set", "monthly", "latest")
    assert result.code == 0, result.err
    assert result.json()[0]["tags"] == ["component:appdb", "component:data", "monthly"]
    assert_one_line_error(
        run_cli("tag", "--repo", repo, "--remove", "component:data", "latest"), 2, "component:"
    )
    [snapshot] = _snapshots(repo)
    assert snapshot["platform"] == "mini" and len(snapshot["components"]) == 2
    assert run_cli("restore", "--config", config, "--dry-run").code == 0


def test_tag_bad_input_changes_nothing(repo: Path, three: list[str]) -> None:
    before = _snapshots(repo)
    assert_one_line_error(run_cli("tag", "--repo", repo, "latest"), 2, "--add")
    assert_one_line_error(run_cli("tag", "--repo", repo, "--add", "x", "latest", "abcd"), 17)
    assert _snapshots(repo) == before


def test_tag_is_refused_in_no_delete_mode(repo: Path, three: list[str], monkeypatch) -> None:
    add_no_delete_key(repo, monkeypatch)
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", "the backup client's passphrase")
    before = sorted(p.name for p in (repo / "snapshots").iterdir())
    result = run_cli("tag", "--repo", repo, "--add", "x", "latest")
    assert_one_line_error(result, NO_DELETE_EXIT, "tag refused")
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == before


def test_tag_waits_for_a_held_lock(repo: Path, three: list[str]) -> None:
    with open_repository(repo) as repository, Lock(repository.store, exclusive=False):
        result = run_cli("tag", "--repo", repo, "--add", "x", "latest")
    assert_one_line_error(result, 14, "locked")
    assert all("x" not in s["tags"] for s in _snapshots(repo))


def test_tag_stops_when_its_lock_was_lost(repo: Path, three: list[str], monkeypatch) -> None:
    """A lock that went stale (another process may have taken the repository) stops tag before
    it writes anything more."""
    calls = []

    def lost(self: Lock, operation: str) -> None:
        calls.append(operation)
        if len(calls) == 2:
            raise RepositoryLocked("by another process: lost")

    monkeypatch.setattr(Lock, "ensure_exclusive", lost)
    before = {s["id"] for s in _snapshots(repo)}
    result = run_cli("tag", "--repo", repo, "--add", "x", three[0], three[1])
    assert result.code == 14
    after = {s["id"]: s for s in _snapshots(repo)}
    assert len(after) == 3
    assert three[1] in after and "x" not in after[three[1]]["tags"]  # the second untouched
    assert three[0] not in after and len(set(after) - before) == 1  # the first done
    assert tag_module.RESERVED_PREFIX == "component:"
