"""The key derivation started ahead at start-up (safehold.cli.prefetch, safehold.kdf) is the
one the repository then uses, and changes nothing about what a wrong passphrase does."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import pytest
from conftest import PASSPHRASE, init_repository, open_repository, run_cli

from safehold import kdf
from safehold.cli import prefetch


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every real Argon2id run, by thread name. Starts with no derivation made ahead
    (commands of earlier tests that stopped before opening their repository leave theirs)."""
    kdf._ahead.clear()
    runs: list[str] = []
    real = kdf.derive_now

    def derive_now(passphrase: bytes, salt: bytes, params: dict) -> bytes:
        runs.append(threading.current_thread().name)
        return real(passphrase, salt, params)

    monkeypatch.setattr(kdf, "derive_now", derive_now)
    return runs


def args_for(repo: object, passphrase_file: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(repo=str(repo), passphrase_file=passphrase_file, config=None)


def wait_for_prefetch() -> None:
    for thread in threading.enumerate():
        if thread.name == "kdf-ahead":
            thread.join(timeout=30)


def test_the_key_derived_ahead_is_used_once(make_repo, counted: list[str]) -> None:
    repo = make_repo()
    counted.clear()
    prefetch.start(args_for(repo))
    wait_for_prefetch()
    assert counted == ["kdf-ahead"]
    with open_repository(repo):  # opens with the derivation made ahead: no second run
        pass
    assert counted == ["kdf-ahead"]
    assert kdf._ahead == {}  # taken out by its use


def test_a_passphrase_file_and_a_file_url_work_too(make_repo, tmp_path: Path, counted) -> None:
    repo = make_repo()
    secret = tmp_path / "secret"
    secret.write_text(PASSPHRASE + "\n")
    counted.clear()
    prefetch.start(args_for(f"file://{repo}", str(secret)))
    wait_for_prefetch()
    assert counted == ["kdf-ahead"]
    with open_repository(repo):
        pass
    assert counted == ["kdf-ahead"]


def test_a_wrong_passphrase_is_still_refused(
    make_repo, monkeypatch: pytest.MonkeyPatch, counted: list[str]
) -> None:
    repo = make_repo()
    counted.clear()
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", "not the passphrase")
    result = run_cli("snapshots", "--repo", repo)  # main() starts the prefetch itself
    assert result.code == 12, result.err
    assert "wrong passphrase" in result.err
    assert counted == ["kdf-ahead"]  # made ahead, and used by the failed unwrap
    assert kdf._ahead == {}


@pytest.mark.parametrize(
    "location", ["sftp://user@127.0.0.1/srv/repo", "s3://bucket/prefix", "/nonexistent/repo"]
)
def test_nothing_is_derived_ahead_for_remote_or_missing_repositories(
    location: str, counted: list[str]
) -> None:
    prefetch.start(args_for(location))
    wait_for_prefetch()
    assert counted == []
    assert kdf._ahead == {}


def test_nothing_is_derived_ahead_without_a_passphrase_source(
    make_repo, monkeypatch: pytest.MonkeyPatch, counted: list[str]
) -> None:
    repo = make_repo()
    monkeypatch.delenv("SAFEHOLD_PASSPHRASE")
    counted.clear()
    prefetch.start(args_for(repo))  # it would have to prompt: not known yet
    wait_for_prefetch()
    assert counted == []


@pytest.mark.parametrize(
    ("secret", "params"),
    [
        (b"passphrase", {"time_cost": 3, "memory_cost": 65536, "parallelism": 2}),
        ("pässwörd \x00 with a NUL".encode(), {"time_cost": 1, "memory_cost": 8, "parallelism": 1}),
    ],
)
def test_derive_now_is_argon2_cffi_s_argon2id(secret: bytes, params: dict) -> None:
    """safehold calls the C library's bindings itself (a faster start): the result must be
    argon2-cffi's own Argon2id of the same inputs, byte for byte."""
    from argon2.low_level import Type, hash_secret_raw

    salt = bytes(range(16))
    expected = hash_secret_raw(secret, salt, hash_len=32, type=Type.ID, **params)
    assert kdf.derive_now(secret, salt, params) == expected


def test_derive_now_names_what_the_library_refused() -> None:
    with pytest.raises(ValueError, match="Salt is too short"):
        kdf.derive_now(
            b"passphrase", b"short", {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
        )


@pytest.mark.parametrize("backend", ["sftp", "s3"])
def test_a_remote_repository_is_derived_ahead_from_where_its_key_was_last_seen(
    backend: str, remote_location, counted: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = remote_location(backend, "repo")
    init_repository(url)  # type: ignore[arg-type]  # remembers the key's salt and parameters
    counted.clear()
    prefetch.start(args_for(url))  # no connection: from the local cache
    wait_for_prefetch()
    assert counted == ["kdf-ahead"]
    with open_repository(url):  # type: ignore[arg-type]
        pass
    assert counted == ["kdf-ahead"]
    assert kdf._ahead == {}

    # A new passphrase (a new key file, a new salt): the hint is stale, one derivation is
    # wasted, the repository opens all the same and the hint follows the key.
    monkeypatch.setenv("SAFEHOLD_NEW_PASSPHRASE", "another passphrase")
    assert run_cli("key", "passwd", "--repo", url).code == 0
    counted.clear()
    prefetch.start(argparse.Namespace(repo=url, passphrase_file=None, config=None))
    wait_for_prefetch()
    with open_repository(url, "another passphrase"):  # type: ignore[arg-type]
        pass
    assert counted == ["kdf-ahead", "MainThread"]
    counted.clear()
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", "another passphrase")
    prefetch.start(args_for(url))
    wait_for_prefetch()
    with open_repository(url, "another passphrase"):  # type: ignore[arg-type]
        pass
    assert counted == ["kdf-ahead"]


def test_no_hint_is_kept_with_the_cache_off(
    remote_location, counted: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")
    url = remote_location("s3", "repo")
    init_repository(url)  # type: ignore[arg-type]
    counted.clear()
    prefetch.start(args_for(url))
    wait_for_prefetch()
    assert counted == []
