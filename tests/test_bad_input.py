"""Bad input: exit code, one clear line on stderr, and the repository left as it was."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    IS_ROOT,
    PASSPHRASE,
    assert_one_line_error,
    backup_json,
    mini_platform,
    repo_state,
    run_cli,
    write_file,
)

from safehold.archive.restorer import SKIPPED_NAMED
from safehold.store import open_store
from safehold.store.locks import Lock


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write_file(root / "file.txt", b"original content")
    write_file(root / "sub" / "other.txt", b"other")
    return root


@pytest.fixture
def with_snapshot(repo: Path, source: Path) -> Path:
    backup_json(repo, source)
    return repo


def test_wrong_passphrase(with_snapshot: Path, monkeypatch) -> None:
    before = repo_state(with_snapshot)
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", "not the passphrase")
    result = run_cli("snapshots", "--repo", with_snapshot)
    assert_one_line_error(result, 12, "wrong passphrase")
    assert repo_state(with_snapshot) == before


def test_wrong_passphrase_from_a_file(with_snapshot: Path, tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("wrong\n")
    result = run_cli("snapshots", "--repo", with_snapshot, "--passphrase-file", secret)
    assert_one_line_error(result, 12, "wrong passphrase")


def test_passphrase_file_is_used_before_the_environment(
    with_snapshot, tmp_path, monkeypatch
) -> None:
    secret = tmp_path / "pass"
    secret.write_text(PASSPHRASE + "\n")
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", "wrong")
    assert run_cli("snapshots", "--repo", with_snapshot, "--passphrase-file", secret).code == 0


def test_missing_passphrase_file_is_a_usage_error(with_snapshot, tmp_path) -> None:
    result = run_cli("snapshots", "--repo", with_snapshot, "--passphrase-file", tmp_path / "no")
    assert_one_line_error(result, 2, "cannot read passphrase file")


def test_no_passphrase_and_no_terminal(with_snapshot: Path, monkeypatch) -> None:
    monkeypatch.delenv("SAFEHOLD_PASSPHRASE")
    result = run_cli("snapshots", "--repo", with_snapshot)
    assert_one_line_error(result, 12, "no passphrase given")


def test_no_repository_given(source: Path) -> None:
    assert_one_line_error(run_cli("backup", source), 2, "no repository given")


def test_repository_that_does_not_exist(tmp_path: Path) -> None:
    result = run_cli("snapshots", "--repo", tmp_path / "missing")
    assert_one_line_error(result, 10, "no safehold repository at", "safehold init")
    assert not (tmp_path / "missing").exists()


def test_repository_url_that_does_not_exist(tmp_path: Path) -> None:
    result = run_cli("snapshots", "--repo", f"file://{tmp_path}/missing")
    assert_one_line_error(result, 10, "no safehold repository at")


def test_directory_that_is_not_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    write_file(plain / "notes.txt", b"just a directory")
    before = repo_state(plain)
    result = run_cli("snapshots", "--repo", plain)
    assert_one_line_error(result, 10, "is not a safehold repository")
    assert repo_state(plain) == before
    assert os.listdir(plain) == ["notes.txt"]


def test_empty_directory_is_not_a_repository(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("snapshots", "--repo", tmp_path / "empty")
    assert_one_line_error(result, 10, "is not a safehold repository")
    assert os.listdir(tmp_path / "empty") == []


def test_regular_file_is_not_a_repository(tmp_path: Path) -> None:
    plain = write_file(tmp_path / "file", b"not a repository")
    result = run_cli("snapshots", "--repo", plain)
    assert_one_line_error(result, 10, "not a safehold repository")
    assert plain.read_bytes() == b"not a repository"


def test_repository_of_a_newer_format(with_snapshot: Path) -> None:
    (with_snapshot / "meta" / "format").write_bytes(b"safehold repository\nformat 99\n")
    before = repo_state(with_snapshot)
    result = run_cli("snapshots", "--repo", with_snapshot)
    assert_one_line_error(result, 11, "format 99", "upgrade safehold")
    assert repo_state(with_snapshot) == before


def test_garbled_format_marker_is_named_as_damage(with_snapshot: Path, tmp_path: Path) -> None:
    (with_snapshot / "meta" / "format").write_bytes(b"something else\n")
    result = run_cli("snapshots", "--repo", with_snapshot)
    assert_one_line_error(result, 13, "meta/format is damaged", "safehold repository")
    other = tmp_path / "other"  # the same marker where no repository's keys are
    write_file(other / "meta" / "format", b"something else\n")
    result = run_cli("snapshots", "--repo", other)
    assert_one_line_error(result, 10, "is not a safehold repository")


def test_init_over_a_non_empty_directory(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    write_file(occupied / "precious.db", b"do not touch")
    before = repo_state(occupied)
    result = run_cli("init", "--repo", occupied)
    assert_one_line_error(result, 10, "already holds data")
    assert repo_state(occupied) == before
    assert os.listdir(occupied) == ["precious.db"]


def test_init_over_an_existing_repository(repo: Path) -> None:
    before = repo_state(repo)
    assert_one_line_error(run_cli("init", "--repo", repo), 10, "already holds data")
    assert repo_state(repo) == before


def test_backup_source_that_does_not_exist(with_snapshot: Path, tmp_path: Path) -> None:
    before = repo_state(with_snapshot)
    result = run_cli("backup", "--repo", with_snapshot, tmp_path / "nowhere")
    assert_one_line_error(result, 19, "nowhere", "does not exist")
    assert repo_state(with_snapshot) == before


@pytest.mark.parametrize("below", ["sub", ""])
def test_restore_target_at_or_below_a_regular_file(
    with_snapshot, source, tmp_path, below: str
) -> None:
    blocker = write_file(tmp_path / "blocker", b"a file, not a directory")
    target = blocker / below if below else blocker
    before = repo_state(with_snapshot)
    result = run_cli("restore", "--repo", with_snapshot, f"latest:{source}", "--target", target)
    assert_one_line_error(result, 18, "cannot write to restore target", str(target))
    assert blocker.read_bytes() == b"a file, not a directory"
    assert repo_state(with_snapshot) == before


def test_restore_does_not_overwrite_existing_files(with_snapshot, source, tmp_path) -> None:
    target = tmp_path / "target"
    existing = write_file(target / "file.txt", b"local edits")
    result = run_cli("restore", "--repo", with_snapshot, f"latest:{source}", "--target", target)
    assert result.code == 3
    assert f"exists, not overwritten: {existing}" in result.err
    assert "--overwrite" in result.err_lines[-1]
    assert existing.read_bytes() == b"local edits"
    assert (target / "sub" / "other.txt").read_bytes() == b"other"


def _edit_every_file(root: Path) -> None:
    """Local edits: files that are no longer as the snapshot has them."""
    for path in root.rglob("*"):
        if path.is_file():
            path.write_bytes(b"edited locally")


def test_a_restore_over_many_existing_files_counts_them_and_names_a_few(repo, tmp_path) -> None:
    """Skipped files are counted; only the first SKIPPED_NAMED paths are kept and named."""
    source = tmp_path / "many"
    count = SKIPPED_NAMED + 7
    for number in range(count):
        write_file(source / f"d{number % 3}" / f"f{number:02}.txt", b"%d" % number)
    backup_json(repo, source)
    target = tmp_path / "target"
    assert run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target).code == 0
    _edit_every_file(target)
    again = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target, "--json")
    assert again.code == 3
    report = again.json()
    assert report["skipped"] == count and report["files"] == 0 and report["present"] == 0
    named = report["skipped_paths"]
    assert len(named) == len(set(named)) == SKIPPED_NAMED
    assert all(Path(path).is_file() and Path(path).is_relative_to(target) for path in named)
    lines = [line for line in again.err_lines if "exists, not overwritten: " in line]
    assert [line.rsplit(": ", 1)[1] for line in lines] == named
    assert f"... and {count - SKIPPED_NAMED} more existing paths not overwritten" in again.err
    assert f"{count} existing path(s)" in again.err_lines[-1]
    assert "--overwrite" in again.err_lines[-1]


def test_a_platform_restore_over_existing_files_names_a_few(repo, tmp_path) -> None:
    """restore --config --target over an earlier extraction: a problem line per named path
    and one for the rest, per component."""
    root = tmp_path / "platform"
    count = SKIPPED_NAMED + 5
    for number in range(count):
        write_file(root / "data" / "many" / f"f{number:02}.txt", b"%d" % number)
    config = mini_platform(root, repo)
    assert run_cli("backup", "--config", config).code == 0
    target = tmp_path / "extract"
    assert run_cli("restore", "--config", config, "--target", target).code == 0
    _edit_every_file(target)
    again = run_cli("restore", "--config", config, "--target", target, "--json")
    assert again.code == 3
    problems = [p for p in again.json()["problems"] if p.startswith("data: ")]
    named = [p for p in problems if p.startswith("data: exists, not replaced: ")]
    assert len(named) == SKIPPED_NAMED
    assert problems[SKIPPED_NAMED:] == [
        f"data: ... and {count + 1 - SKIPPED_NAMED} more existing paths not replaced"
    ]  # the files of data/many and data/a.txt


def test_restore_with_overwrite_replaces_existing_files(with_snapshot, source, tmp_path) -> None:
    target = tmp_path / "target"
    existing = write_file(target / "file.txt", b"local edits")
    result = run_cli(
        "restore", "--repo", with_snapshot, f"latest:{source}", "--target", target, "--overwrite"
    )
    assert result.code == 0, result.err
    assert existing.read_bytes() == b"original content"


def test_locked_repository(with_snapshot: Path, source: Path) -> None:
    with open_store(str(with_snapshot)) as store, Lock(store, exclusive=True):
        before = repo_state(with_snapshot)
        result = run_cli("backup", "--repo", with_snapshot, source)
        assert_one_line_error(result, 14, "locked")
        assert repo_state(with_snapshot) == before


def test_unknown_option_is_a_usage_error(repo: Path) -> None:
    result = run_cli("backup", "--repo", repo, "--no-such-option", "x")
    assert result.code == 2
    assert "unrecognized arguments" in result.err


# ------------------------------------------------------------------ unreadable file

SETPRIV = shutil.which("setpriv")


def _backup_obeying_permissions(repo: Path, source: Path) -> subprocess.CompletedProcess:
    """`safehold backup` as root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so that file
    permissions apply to it."""
    command = [
        SETPRIV,
        "--bounding-set",
        "-dac_override,-dac_read_search",
        sys.executable,
        "-m",
        "safehold",
        "backup",
        "--repo",
        str(repo),
        str(source),
    ]
    env = dict(os.environ, SAFEHOLD_PASSPHRASE=PASSPHRASE, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.mark.skipif(
    not IS_ROOT or SETPRIV is None,
    reason="needs root and setpriv to drop the capability to read anything",
)
def test_unreadable_file_is_named_and_the_rest_is_saved(repo: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    write_file(source / "readable.txt", b"anyone may read this")
    secret = write_file(source / "secret.txt", b"nobody may read this", 0o000)
    result = _backup_obeying_permissions(repo, source)
    assert result.returncode == 3, result.stderr
    assert f"could not read {secret}: Permission denied" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(os.listdir(repo / "snapshots")) == 1
    listing = run_cli("ls", "--repo", repo, "--json", f"latest:{source}")
    assert [entry["path"] for entry in listing.json()] == [f"{source}/readable.txt"]


@pytest.mark.skipif(
    not IS_ROOT or SETPRIV is None,
    reason="needs root and setpriv to drop the capability to write anywhere",
)
def test_unwritable_repository_is_a_storage_error_and_saves_no_snapshot(
    with_snapshot: Path, source: Path
) -> None:
    write_file(source / "new.txt", b"needs a new pack")
    for level in (with_snapshot / "data").iterdir():
        os.chmod(level, 0o555)
    before = repo_state(with_snapshot)
    result = _backup_obeying_permissions(with_snapshot, source)
    assert result.returncode == 15, result.stderr
    assert result.stderr.startswith("safehold: storage error: permission denied")
    assert len(result.stderr.strip().splitlines()) == 1
    assert repo_state(with_snapshot) == before
