"""diff, ls and snapshots, in text and --json form."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PASSPHRASE, backup_json, run_cli, write_file


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write_file(root / "changed.txt", b"old content")
    write_file(root / "removed.txt", b"going away")
    write_file(root / "chmodded.txt", b"same bytes")
    write_file(root / "same" / "untouched.txt", b"never changes")
    os.symlink("changed.txt", root / "link")
    return root


@pytest.fixture
def two_snapshots(repo: Path, source: Path) -> tuple[str, str]:
    first = backup_json(repo, source, "--tag", "daily")["snapshot_id"]
    write_file(source / "changed.txt", b"new content, longer")
    (source / "removed.txt").unlink()
    write_file(source / "added" / "new.txt", b"brand new")
    os.chmod(source / "chmodded.txt", 0o600)
    second = backup_json(repo, source, "--tag", "weekly", "--tag", "daily")["snapshot_id"]
    return first, second


def test_diff_names_added_removed_modified_and_metadata_changes(
    repo, source, two_snapshots
) -> None:
    first, second = two_snapshots
    result = run_cli("diff", "--repo", repo, first[:8], second[:8])
    assert result.code == 0, result.err
    lines = set(result.out.splitlines())
    assert f"M  {source}/changed.txt" in lines
    assert f"-  {source}/removed.txt" in lines
    assert f"+  {source}/added/" in lines
    assert f"+  {source}/added/new.txt" in lines
    assert f"U  {source}/chmodded.txt" in lines
    assert not any("untouched" in line or line.endswith("/link") for line in lines)
    assert "1 removed, 1 modified" in result.out


def test_diff_json(repo, source, two_snapshots) -> None:
    first, second = two_snapshots
    result = run_cli("diff", "--repo", repo, "--json", first, second)
    assert result.code == 0, result.err
    changes = {(c["change"], c["path"], c["type"]) for c in result.json()}
    assert ("M", f"{source}/changed.txt", "file") in changes
    assert ("-", f"{source}/removed.txt", "file") in changes
    assert ("+", f"{source}/added", "dir") in changes


def test_diff_of_a_snapshot_with_itself_is_empty(repo, two_snapshots) -> None:
    first, _ = two_snapshots
    result = run_cli("diff", "--repo", repo, "--json", first, first)
    assert result.code == 0 and result.json() == []


def test_ls_lists_children_of_a_directory(repo, source, two_snapshots) -> None:
    result = run_cli("ls", "--repo", repo, f"latest:{source}")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert len(lines) == 5
    assert any(line.endswith(f"{source}/link -> changed.txt") for line in lines)
    assert any(line.startswith("drwx") and line.endswith(f"{source}/same") for line in lines)
    assert not any("untouched" in line for line in lines)


def test_ls_json_gives_path_type_mode_and_size(repo, source, two_snapshots) -> None:
    result = run_cli("ls", "--repo", repo, "--json", f"latest:{source}")
    assert result.code == 0, result.err
    entries = {entry["path"]: entry for entry in result.json()}
    changed = entries[f"{source}/changed.txt"]
    assert (changed["type"], changed["size"], changed["mode"]) == ("file", 19, 0o644)
    assert entries[f"{source}/chmodded.txt"]["mode"] == 0o600
    assert entries[f"{source}/same"]["type"] == "dir"
    assert f"{source}/removed.txt" not in entries


def test_ls_recursive_and_of_a_single_file(repo, source, two_snapshots) -> None:
    recursive = run_cli("ls", "--repo", repo, "--json", "-R", f"latest:{source}")
    assert f"{source}/same/untouched.txt" in {e["path"] for e in recursive.json()}
    single = run_cli("ls", "--repo", repo, "--json", f"latest:{source}/same/untouched.txt")
    assert [e["path"] for e in single.json()] == [f"{source}/same/untouched.txt"]


def test_ls_of_an_old_snapshot_by_id_prefix(repo, source, two_snapshots) -> None:
    first, _ = two_snapshots
    result = run_cli("ls", "--repo", repo, "--json", f"{first[:6]}:{source}")
    assert f"{source}/removed.txt" in {e["path"] for e in result.json()}


def test_ls_json_of_a_file_with_xattrs(repo, tmp_path: Path) -> None:
    source = write_file(tmp_path / "x" / "with-xattr", b"data").parent
    os.setxattr(source / "with-xattr", "user.key", b"value")
    backup_json(repo, source)
    result = run_cli("ls", "--repo", repo, "--json", f"latest:{source}")
    assert result.code == 0, result.err
    [entry] = result.json()
    assert entry["path"] == f"{source}/with-xattr"
    assert entry["xattrs"] == {"user.key": b"value".hex()}


def test_ls_of_an_undecodable_name_on_a_utf8_terminal(repo, tmp_path: Path) -> None:
    source = tmp_path / "odd"
    source.mkdir()
    Path(os.fsdecode(os.fsencode(source) + b"/caf\xe9")).write_bytes(b"x")
    backup_json(repo, source)
    env = dict(os.environ, PYTHONIOENCODING="utf-8", SAFEHOLD_PASSPHRASE=PASSPHRASE)
    result = subprocess.run(
        [sys.executable, "-m", "safehold", "ls", "--repo", str(repo), f"latest:{source}"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout.rstrip().endswith(b"/caf\\xe9")


def test_snapshots_json_lists_oldest_first_with_sorted_tags(repo, source, two_snapshots) -> None:
    first, second = two_snapshots
    result = run_cli("snapshots", "--repo", repo, "--json")
    assert result.code == 0, result.err
    found = result.json()
    assert [s["id"] for s in found] == [first, second]
    assert found[1]["tags"] == ["daily", "weekly"]
    assert found[0]["paths"] == [str(source)]
    assert "tree" not in found[0]
    assert found[0]["summary"]["files_new"] == 4


def test_snapshots_filter_by_tag_and_host(repo, source, two_snapshots) -> None:
    _, second = two_snapshots
    weekly = run_cli("snapshots", "--repo", repo, "--json", "--tag", "weekly")
    assert [s["id"] for s in weekly.json()] == [second]
    backup_json(repo, source, "--host", "elsewhere")
    elsewhere = run_cli("snapshots", "--repo", repo, "--json", "--host", "elsewhere")
    assert [s["hostname"] for s in elsewhere.json()] == ["elsewhere"]


def test_snapshots_table(repo, source, two_snapshots) -> None:
    first, _ = two_snapshots
    result = run_cli("snapshots", "--repo", repo)
    assert result.code == 0
    assert first[:8] in result.out and "2 snapshot(s)" in result.out


def test_latest_in_an_empty_repository_is_not_found(repo: Path) -> None:
    result = run_cli("ls", "--repo", repo, "latest")
    assert result.code == 17
    assert "no snapshot matches 'latest'" in result.err


def test_unknown_snapshot_prefix_is_not_found(repo, two_snapshots) -> None:
    result = run_cli("diff", "--repo", repo, "ffffffff", "latest")
    assert result.code == 17


def test_diff_reports_a_change_of_type(repo: Path, source: Path) -> None:
    first = backup_json(repo, source)["snapshot_id"]
    (source / "changed.txt").unlink()
    write_file(source / "changed.txt" / "now-a-file-inside", b"x")
    second = backup_json(repo, source)["snapshot_id"]
    result = run_cli("diff", "--repo", repo, "--json", first, second)
    changes = {(c["change"], c["path"]) for c in result.json()}
    assert ("T", f"{source}/changed.txt") in changes
    assert ("+", f"{source}/changed.txt/now-a-file-inside") in changes
