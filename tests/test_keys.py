"""key list / add / passwd / remove."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PASSPHRASE, assert_one_line_error, repo_state, run_cli

NEW = "a new and different passphrase"


def key_list(repo: Path) -> list[dict]:
    result = run_cli("key", "list", "--repo", repo, "--json")
    assert result.code == 0, result.err
    return result.json()  # type: ignore[return-value]


def opens_with(repo: Path, passphrase: str, monkeypatch: pytest.MonkeyPatch) -> bool:
    with monkeypatch.context() as patch:
        patch.setenv("SAFEHOLD_PASSPHRASE", passphrase)
        result = run_cli("snapshots", "--repo", repo, "--json")
    assert result.code in (0, 12), result.err
    return result.code == 0


def test_key_list_shows_the_one_key_in_use(repo: Path) -> None:
    keys = key_list(repo)
    assert len(keys) == 1
    assert keys[0]["current"] is True
    assert keys[0]["kdf"] == "argon2id"
    assert len(keys[0]["id"]) == 32


def test_key_list_table(repo: Path) -> None:
    result = run_cli("key", "list", "--repo", repo)
    assert result.code == 0
    assert key_list(repo)[0]["id"][:8] in result.out


def test_key_add_lets_both_passphrases_open(repo: Path, monkeypatch) -> None:
    monkeypatch.setenv("SAFEHOLD_NEW_PASSPHRASE", NEW)
    result = run_cli("key", "add", "--repo", repo)
    assert result.code == 0, result.err
    assert "added" in result.out
    assert len(key_list(repo)) == 2
    assert opens_with(repo, PASSPHRASE, monkeypatch)
    assert opens_with(repo, NEW, monkeypatch)


def test_key_add_reads_the_new_passphrase_from_a_file(repo, tmp_path, monkeypatch) -> None:
    secret = tmp_path / "new-passphrase"
    secret.write_text(NEW + "\n")
    assert run_cli("key", "add", "--repo", repo, "--new-passphrase-file", secret).code == 0
    assert opens_with(repo, NEW, monkeypatch)


def test_key_passwd_replaces_the_passphrase(repo: Path, monkeypatch) -> None:
    monkeypatch.setenv("SAFEHOLD_NEW_PASSPHRASE", NEW)
    result = run_cli("key", "passwd", "--repo", repo)
    assert result.code == 0, result.err
    assert "passphrase changed" in result.out
    assert not opens_with(repo, PASSPHRASE, monkeypatch)
    assert opens_with(repo, NEW, monkeypatch)
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", NEW)
    assert len(key_list(repo)) == 1


def test_key_passwd_without_a_new_passphrase_changes_nothing(repo: Path) -> None:
    before = repo_state(repo)
    result = run_cli("key", "passwd", "--repo", repo)
    assert_one_line_error(result, 12, "no passphrase given")
    assert repo_state(repo) == before


def test_key_remove_refuses_the_key_in_use(repo: Path) -> None:
    before = repo_state(repo)
    current = key_list(repo)[0]["id"]
    result = run_cli("key", "remove", "--repo", repo, current[:8])
    assert_one_line_error(result, 2, "refusing to remove the key in use")
    assert repo_state(repo) == before


def test_key_remove_of_another_key(repo: Path, monkeypatch) -> None:
    monkeypatch.setenv("SAFEHOLD_NEW_PASSPHRASE", NEW)
    assert run_cli("key", "add", "--repo", repo).code == 0
    other = next(key for key in key_list(repo) if not key["current"])
    result = run_cli("key", "remove", "--repo", repo, other["id"][:10])
    assert result.code == 0, result.err
    assert [key["current"] for key in key_list(repo)] == [True]
    assert not opens_with(repo, NEW, monkeypatch)


def test_key_remove_of_an_unknown_id(repo: Path) -> None:
    before = repo_state(repo)
    result = run_cli("key", "remove", "--repo", repo, "0123abcd")
    assert_one_line_error(result, 2, "no single key matches")
    assert repo_state(repo) == before
