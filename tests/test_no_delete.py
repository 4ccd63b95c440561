"""No-delete mode: a key added with --no-delete (or a repository created with --no-delete)
backs up, restores and checks, and never deletes or overwrites anything; the commands that
would are refused with one line and exit 26. Locks take their append-only form, which an
sftp account that cannot delete (internal-sftp -P remove,rmdir) accepts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import servers
from conftest import (
    PASSPHRASE,
    assert_one_line_error,
    backup_json,
    init_repository,
    open_repository,
    repo_state,
    run_cli,
    write_file,
)
from remote_conftest import SftpServer, sftp_server_process

from safehold.errors import NoDeleteMode
from safehold.store import open_store
from safehold.store.locks import Lock, list_locks, lock_states
from safehold.store.nodelete import NoDeleteStore

CLIENT = "the backup client's passphrase"
NO_DELETE_EXIT = 26


def add_no_delete_key(repo: Path | str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEHOLD_NEW_PASSPHRASE", CLIENT)
    result = run_cli("key", "add", "--no-delete", "--repo", repo)
    assert result.code == 0, result.err
    assert "(no-delete)" in result.out


@pytest.fixture
def client_repo(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with an admin key (PASSPHRASE) and a no-delete key (CLIENT), two
    snapshots made with the no-delete key, and the environment set to the no-delete key."""
    add_no_delete_key(repo, monkeypatch)
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", CLIENT)
    source = tmp_path / "src"
    write_file(source / "a.txt", b"first\n")
    backup_json(repo, source)
    write_file(source / "b.txt", b"second\n" * 1000)
    backup_json(repo, source)
    return repo


def test_a_no_delete_key_backs_up_restores_and_checks(client_repo: Path, tmp_path: Path) -> None:
    assert run_cli("check", "--read-data", "--repo", client_repo).code == 0
    result = run_cli("restore", "latest", "--target", tmp_path / "out", "--repo", client_repo)
    assert result.code == 0, result.err
    assert (tmp_path / "out" / str(tmp_path / "src").lstrip("/") / "b.txt").exists()
    keys = run_cli("key", "list", "--json", "--repo", client_repo).json()
    assert sorted(key["no_delete"] for key in keys) == [False, True]
    assert "no-delete" in run_cli("key", "list", "--repo", client_repo).out


@pytest.mark.parametrize(
    "command",
    [
        ["forget", "--keep-last", "1"],
        ["forget", "--keep-last", "1", "--prune"],
        ["prune"],
        ["repair", "index"],
        ["repair", "snapshots"],
        ["unlock"],
        ["key", "passwd"],
        ["key", "remove", "0000"],
    ],
)
def test_deleting_commands_are_refused_with_one_line(
    client_repo: Path, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFEHOLD_NEW_PASSPHRASE", "whatever")
    before = {name for name in repo_state(client_repo) if not name.startswith("locks")}
    result = run_cli(*command, "--repo", client_repo)
    assert_one_line_error(result, NO_DELETE_EXIT, "no-delete mode", "refused")
    after = {name for name in repo_state(client_repo) if not name.startswith("locks")}
    assert after == before


def test_dry_runs_still_work(client_repo: Path) -> None:
    result = run_cli("forget", "--keep-last", "1", "--dry-run", "--repo", client_repo)
    assert result.code == 0, result.err
    assert run_cli("prune", "--dry-run", "--repo", client_repo).code == 0


def test_nothing_is_ever_deleted_or_overwritten(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_no_delete_key(repo, monkeypatch)
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", CLIENT)
    source = tmp_path / "src"
    seen: dict[str, bytes] = dict(repo_state(repo))
    for round_ in range(3):
        write_file(source / f"f{round_}", bytes([round_]) * 100_000)
        backup_json(repo, source)
        assert run_cli("check", "--repo", repo).code == 0
        state = repo_state(repo)
        for name, data in seen.items():
            assert state.get(name) == data, f"{name} was deleted or overwritten"
        seen = state
    # the locks are in their append-only form: several objects each, the last one released
    locks = list_locks(open_store(str(repo)).open(), time.time())
    assert locks and all(lock["stale"] for lock in locks)
    assert all(len(lock["names"]) >= 2 for lock in locks)


def test_a_key_added_with_a_no_delete_key_is_no_delete_too(
    client_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFEHOLD_NEW_PASSPHRASE", "third passphrase")
    result = run_cli("key", "add", "--repo", client_repo)
    assert result.code == 0 and "(no-delete)" in result.out
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", "third passphrase")
    result = run_cli("forget", "--keep-last", "1", "--repo", client_repo)
    assert_one_line_error(result, NO_DELETE_EXIT, "no-delete mode")


def test_the_flag_is_sealed_so_editing_the_key_file_does_not_remove_it(
    client_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in (client_repo / "keys").iterdir():
        document = json.loads(path.read_text())
        document.pop("no_delete", None)
        path.write_text(json.dumps(document))
    with open_repository(client_repo, CLIENT) as repository:
        assert repository.no_delete
        with pytest.raises(NoDeleteMode):
            repository.store.delete(repository.snapshot_names()[0])


def test_the_admin_key_turns_it_off_and_cleans_up_the_lock_objects(
    client_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(list((client_repo / "locks").iterdir())) > 0
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", PASSPHRASE)
    result = run_cli("forget", "--keep-last", "1", "--prune", "--repo", client_repo)
    assert result.code == 0, result.err
    assert len(run_cli("snapshots", "--json", "--repo", client_repo).json()) == 1
    assert list((client_repo / "locks").iterdir()) == []  # released ones removed, ours too
    assert run_cli("check", "--read-data", "--repo", client_repo).code == 0


def test_init_no_delete_makes_the_whole_repository_no_delete(tmp_path: Path) -> None:
    repo = tmp_path / "worm"
    result = run_cli("init", "--no-delete", "--repo", repo)
    assert result.code == 0, result.err
    write_file(tmp_path / "src" / "a", b"a")
    backup_json(repo, tmp_path / "src")
    result = run_cli("forget", "--keep-last", "1", "--repo", repo)
    assert_one_line_error(result, NO_DELETE_EXIT, "init --no-delete")


# ------------------------------------------------------------------ append-only locks


def test_append_only_locks_exclude_and_are_respected_by_exclusive_ones(repo: Path) -> None:
    store = open_store(str(repo)).open()
    guarded = NoDeleteStore(store, "test")
    shared = Lock(guarded, exclusive=False, append_only=True).acquire()
    with pytest.raises(Exception, match="locked"):
        Lock(store, exclusive=True).acquire()  # the admin's prune sees the live shared lock
    other_shared = Lock(guarded, exclusive=False, append_only=True).acquire()
    other_shared.release()
    shared.release()
    states = lock_states(store, time.time())
    assert len(states) == 2 and not any(state.live for state in states)
    with Lock(store, exclusive=True) as exclusive:
        exclusive.ensure_exclusive("prune")  # released append-only locks do not count
        with pytest.raises(Exception, match="exclusively"):
            Lock(guarded, exclusive=False, append_only=True).acquire()
    assert list(store.list("locks")) == []


def test_an_append_only_lock_waiting_for_an_exclusive_one_leaves_nothing(repo: Path) -> None:
    store = open_store(str(repo)).open()
    with Lock(store, exclusive=True):
        with pytest.raises(Exception, match="exclusively"):
            Lock(
                NoDeleteStore(store, "test"), exclusive=False, append_only=True, wait=0.3
            ).acquire()
        assert len(list(store.list("locks"))) == 1


def test_append_only_refresh_adds_objects_and_stale_is_seen_by_name(repo: Path) -> None:
    store = open_store(str(repo)).open()
    now = [1_000_000.0]
    lock = Lock(
        NoDeleteStore(store, "test"),
        exclusive=False,
        append_only=True,
        clock=lambda: now[0],
        refresh_interval=0.05,
    ).acquire()
    time.sleep(0.3)
    lock._stop.set()
    lock._thread.join()  # type: ignore[union-attr]
    names = sorted(name for name, _ in store.list("locks"))
    assert len(names) >= 3
    lock.verify()
    now[0] += 1000  # the holder "stopped" long ago: stale by the time in its name
    states = lock_states(store, now[0])
    assert len(states) == 1 and not states[0].live and states[0].document is None


# ------------------------------------------------------------------ append-only sftp server


@pytest.fixture(scope="module")
def append_only_sftp() -> Iterator[SftpServer]:
    """An sshd whose sftp refuses every remove and rmdir: an account that cannot delete."""
    yield from servers.serve(lambda: sftp_server_process("-P remove,rmdir"))


def test_no_delete_key_works_against_an_sftp_account_that_cannot_delete(
    append_only_sftp: SftpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from remote_conftest import FAST_RETRIES

    import safehold.store

    monkeypatch.setenv("HOME", str(append_only_sftp.home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setattr(safehold.store, "RETRY_POLICY", FAST_RETRIES)
    location = append_only_sftp.url(tmp_path / "repo")
    init_repository(location)  # type: ignore[arg-type]  # init deletes nothing
    add_no_delete_key(location, monkeypatch)
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", CLIENT)
    source = tmp_path / "src"
    for round_ in range(2):
        write_file(source / f"f{round_}", bytes([round_ + 1]) * 300_000)
        backup_json(location, source)  # type: ignore[arg-type]
    result = run_cli("check", "--read-data", "--repo", location)
    assert result.code == 0, result.err
    result = run_cli("restore", "latest", "--target", tmp_path / "out", "--repo", location)
    assert result.code == 0, result.err
    assert (tmp_path / "out" / str(source).lstrip("/") / "f1").read_bytes() == b"\x02" * 300_000
    # the server really refuses deletes: a key that may delete fails at its lock's release
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", PASSPHRASE)
    result = run_cli("check", "--repo", location)
    assert result.code == 15 and "permission denied" in result.err
