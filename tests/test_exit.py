"""How the command line leaves: without the interpreter's teardown once nothing is left to do,
but with every byte of output written, the exit code kept, atexit handlers run, and running
threads waited for (safehold.cli.main.leave)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import PASSPHRASE, write_file


def environment(**extra: str) -> dict[str, str]:
    """Output buffered, as in a cron job's pipe (the test runner's may be unbuffered)."""
    env = {**os.environ, "SAFEHOLD_PASSPHRASE": PASSPHRASE, **extra}
    env.pop("PYTHONUNBUFFERED", None)
    return env


def run_safehold(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "safehold", *map(str, args)],
        env=environment(**(env or {})),
        capture_output=True,
        check=False,
    )


def test_long_output_through_a_pipe_is_complete(repo: Path, tmp_path: Path) -> None:
    source = tmp_path / "many"
    for number in range(3000):
        write_file(source / f"file-with-a-long-name-{number:05d}.txt", b"x")
    assert run_safehold("backup", "--repo", repo, "--quiet", source).returncode == 0
    listing = run_safehold("ls", "--repo", repo, f"latest:{source}")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.decode().splitlines()
    assert len([line for line in lines if "file-with-a-long-name-" in line]) == 3000
    assert len(listing.stdout) > 128 * 1024  # more than a pipe holds at once


def test_exit_codes_and_errors_survive(repo: Path) -> None:
    wrong = run_safehold("snapshots", "--repo", repo, env={"SAFEHOLD_PASSPHRASE": "wrong"})
    assert wrong.returncode == 12
    assert b"wrong passphrase" in wrong.stderr
    missing = run_safehold("snapshots", "--repo", repo.parent / "nothing-here")
    assert missing.returncode != 0 and missing.stderr.count(b"\n") == 1


def leave_after(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = "import atexit, threading, time\nfrom safehold.cli.main import leave\n" + body
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        check=False,
    )


def test_atexit_handlers_run_and_the_code_is_kept(tmp_path: Path) -> None:
    done = leave_after(
        tmp_path,
        "atexit.register(lambda: open('atexit-ran', 'w').close())\n"
        "print('written before leaving', end='')\n"
        "leave(7)\n",
    )
    assert done.returncode == 7
    assert done.stdout == b"written before leaving"
    assert (tmp_path / "atexit-ran").exists()


def test_a_running_thread_is_waited_for(tmp_path: Path) -> None:
    done = leave_after(
        tmp_path,
        "def work():\n"
        "    time.sleep(0.3)\n"
        "    open('thread-finished', 'w').close()\n"
        "threading.Thread(target=work).start()\n"
        "leave(3)\n",
    )
    assert done.returncode == 3
    assert (tmp_path / "thread-finished").exists()
