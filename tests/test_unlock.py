"""safehold unlock removes locks whose holder is gone and never a live one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

from safehold.store.locks import machine_identity
from tests.conftest import open_repository, run_cli


def _write_lock(repo, name: str, **document: object) -> None:
    repository = open_repository(repo)
    repository.store.save(f"locks/{name}", json.dumps(document).encode())
    repository.close()


def _locks(repo) -> list[str]:
    return sorted(path.name for path in (repo / "locks").iterdir())


def test_stale_and_dead_locks_are_removed(repo) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_lock(repo, "a" * 32, host="elsewhere", pid=1, exclusive=True, time=time.time() - 3600)
    _write_lock(  # this very machine (boot, PID namespace): the dead pid proves it gone
        repo,
        "b" * 32,
        host=socket.gethostname(),
        machine=machine_identity(),
        pid=dead.pid,
        exclusive=False,
        time=time.time(),
    )
    result = run_cli("unlock", "--repo", repo)
    assert result.code == 0, result.err
    assert result.out.count("removed stale") == 2
    assert _locks(repo) == []


def test_a_live_lock_is_kept_and_named(repo) -> None:
    _write_lock(
        repo, "c" * 32, host=socket.gethostname(), pid=os.getpid(), exclusive=True, time=time.time()
    )
    _write_lock(repo, "d" * 32, host="other-host", pid=7, exclusive=False, time=time.time() - 10)
    result = run_cli("unlock", "--repo", repo)
    assert result.code == 14
    assert "kept live exclusive lock" in result.out and "other-host" in result.out
    assert _locks(repo) == ["c" * 32, "d" * 32]
    backup_blocked = run_cli("backup", "--repo", repo, str(repo / "meta"))
    assert backup_blocked.code == 14  # the exclusive lock is honoured
