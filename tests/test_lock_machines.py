"""Locks across machines that share a hostname: a prune from another machine (here: another
PID namespace, as containers and re-created pods are) must never take a running backup's
lock for stale, and a holder whose lock vanished must not commit."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import IS_ROOT, PASSPHRASE, open_repository, run_cli, write_file

from safehold.errors import RepositoryLocked
from safehold.platform.backup import PlatformBackup
from safehold.platform.config import load_platform
from safehold.repo import repository as repository_module
from safehold.store import open_store
from safehold.store.locks import Lock, is_stale, machine_identity

KiB = 1024

# Burns pids inside the new PID namespace until the next one is a pid no process outside
# uses, then runs the command there: so the holder's pid is absent outside, which is what
# made the old hostname + pid rule take the lock for stale.
_LAUNCH = textwrap.dedent(
    """
    import os, sys
    outside = set(map(int, sys.argv[1].split(",")))
    while True:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        if pid + 1 not in outside:
            break
    child = os.fork()
    if child == 0:
        os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
    _, status = os.waitpid(child, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def _outside_pids() -> str:
    return ",".join(name for name in os.listdir("/proc") if name.isdigit())


def _platform(tmp_path: Path, repo: Path, marker: Path) -> Path:
    """A hot platform: a file tree written into small packs, then a command dump that waits
    (holding the lock) until the test removes ``marker``."""
    source = tmp_path / "source"
    for number in range(12):
        write_file(source / f"f{number}.bin", os.urandom(96 * KiB))
    config = {
        "repository": str(repo),
        "platform": "p",
        "strategy": "hot",
        "components": [
            {"name": "files", "type": "files", "paths": [str(source)]},
            {
                "name": "slow",
                "type": "command",
                "backup": f"echo dump; while [ -e {marker} ]; do sleep 0.1; done",
                "restore": "cat >/dev/null",
            },
        ],
    }
    path = tmp_path / "platform.yaml"
    path.write_text(json.dumps(config))
    return path


def _wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.skipif(not IS_ROOT or not shutil.which("unshare"), reason="needs root and unshare")
def test_prune_from_a_same_named_machine_never_deletes_a_running_backups_data(
    make_repo, tmp_path: Path
) -> None:
    repo = make_repo(pack_size=64 * KiB)
    marker = tmp_path / "hold"
    marker.touch()
    platform = _platform(tmp_path, repo, marker)
    env = {**os.environ, "SAFEHOLD_PASSPHRASE": PASSPHRASE}
    backup = subprocess.Popen(
        ["unshare", "-pf", "--mount-proc", sys.executable, "-c", _LAUNCH, _outside_pids()]
        + ["-m", "safehold", "backup", "--config", str(platform), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        store = open_store(str(repo)).open()
        # The lock is taken and the files' packs are stored (the command dump waits).
        _wait_for(lambda: any(store.list("locks")) and len(list(store.list("data"))) >= 8)
        (name, _), *_ = store.list("locks")
        holder = json.loads(store.load(name))
        assert holder["host"] == os.uname().nodename
        assert not os.path.exists(f"/proc/{holder['pid']}")  # no such pid out here
        packs_before = {name for name, _ in store.list("data")}

        prune = run_cli("prune", "--repo", repo, "--keep-young", "0")

        assert prune.code == 14, prune.err
        assert "locked" in prune.err
        assert packs_before <= {name for name, _ in store.list("data")}  # none deleted
        assert any(store.list("locks"))  # the holder's lock is still there
        store.close()
    finally:
        marker.unlink(missing_ok=True)
        _out, err = backup.communicate(timeout=60)
    assert backup.returncode == 0, err
    check = run_cli("check", "--repo", repo, "--read-data")
    assert check.code == 0, check.err
    assert run_cli("restore", "--repo", repo, "latest", "--target", tmp_path / "r").code == 0


def test_a_lock_of_another_machine_with_the_same_hostname_is_stale_by_time_only() -> None:
    now = time.time()
    dead_pid = _dead_pid()
    ours = {"host": os.uname().nodename, "machine": machine_identity(), "pid": dead_pid}
    assert is_stale({**ours, "time": now}, now)  # our own machine: the pid proves it gone
    other = {**ours, "machine": "0" * 32, "time": now}
    assert not is_stale(other, now)  # another machine: its pid says nothing here
    assert is_stale({**other, "time": now - 301}, now)
    legacy = {"host": os.uname().nodename, "pid": dead_pid, "time": now}  # names no machine
    assert not is_stale(legacy, now)


def test_the_machine_identity_differs_in_another_pid_namespace() -> None:
    if not IS_ROOT or not shutil.which("unshare"):
        pytest.skip("needs root and unshare")
    code = "from safehold.store.locks import machine_identity; print(machine_identity())"
    inside = subprocess.run(
        ["unshare", "-pf", "--mount-proc", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert inside and machine_identity() and inside != machine_identity()


def test_a_holder_whose_lock_was_removed_never_writes_it_again_and_cannot_commit(
    repo: Path,
) -> None:
    store = open_store(str(repo)).open()
    lock = Lock(store, exclusive=False, refresh_interval=0.05).acquire()
    try:
        store.delete(lock.name)  # another process took it for stale
        time.sleep(0.4)  # several refresh intervals
        assert not any(store.list("locks"))  # the refresh did not re-create it
        with pytest.raises(RepositoryLocked, match="removed by another process"):
            lock.verify()
    finally:
        lock.release()
        store.close()


def test_a_backup_whose_lock_was_removed_writes_no_snapshot(
    tmp_path: Path, make_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo()
    marker = tmp_path / "hold"
    marker.touch()
    platform = load_platform(str(_platform(tmp_path, repo, marker)))
    # Refreshes at 0.3 s, 0.6 s, ...; the lock is deleted well before the first, so the test
    # does not fall into the (documented) window between a refresh's look and its write.
    monkeypatch.setattr(repository_module, "Lock", functools.partial(Lock, refresh_interval=0.3))
    outcome: dict = {}

    def run() -> None:
        with open_repository(repo) as repository:
            try:
                PlatformBackup(repository, platform).run()
            except RepositoryLocked as error:
                outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    store = open_store(str(repo)).open()
    try:
        _wait_for(lambda: any(store.list("locks")))
        for name, _ in list(store.list("locks")):
            store.delete(name)  # as a process that took it for stale would
        time.sleep(0.8)
    finally:
        marker.unlink()
        thread.join(60)
    assert "removed by another process" in str(outcome.get("error"))
    assert not any(store.list("snapshots"))
    assert not any(store.list("locks"))
    store.close()


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_writer_confirms_the_packs_it_relied_on_before_anything_is_committed(
    repo: Path, tmp_path: Path
) -> None:
    """Defence in depth: whatever the locks say, a flush (before every snapshot) fails when a
    pack this writer deduplicated against, or wrote, was deleted meanwhile."""
    from conftest import backup_json, pack_file

    from safehold.errors import ConcurrentChange
    from safehold.repo.format import BLOB_DATA
    from safehold.repo.writer import BlobWriter

    data = os.urandom(200 * KiB)
    write_file(tmp_path / "src" / "a.bin", data)
    backup_json(repo, tmp_path / "src")
    with open_repository(repo) as repository:
        blob_id = repository.cipher.blob_id(data)
        location = repository.index.lookup(blob_id)
        assert location is not None
        with BlobWriter(repository) as writer:
            assert writer.known(blob_id)  # deduplicated: the snapshot would point into the pack
            pack_file(repo, location.pack_id).unlink()  # a prune that ignored the lock
            with pytest.raises(ConcurrentChange, match="was deleted while it ran"):
                writer.flush()
        with BlobWriter(repository) as writer:  # its own packs are confirmed too
            writer.add(BLOB_DATA, b"\x01" * 32, b"new data")
            writer.flush()
            (own,) = [p for p in repository.index.packs if p != location.pack_id]
            writer.add(BLOB_DATA, b"\x02" * 32, b"more data")
            pack_file(repo, own).unlink()
            assert writer.known(b"\x01" * 32)
            with pytest.raises(ConcurrentChange):
                writer.flush()
    # The index still lists the lost pack: the next backup deduplicates against it, notices,
    # and says what to do; after that, everything is stored again.
    result = run_cli("backup", "--repo", repo, tmp_path / "src", "--force")
    assert result.code == 14 and "repair index" in result.err, result.err
    assert run_cli("repair", "index", "--repo", repo).code == 0
    assert run_cli("backup", "--repo", repo, tmp_path / "src", "--force").code == 0
    assert run_cli("restore", "--repo", repo, "latest", "--target", tmp_path / "r").code == 0
    assert (tmp_path / "r" / (tmp_path / "src" / "a.bin").relative_to("/")).read_bytes() == data
