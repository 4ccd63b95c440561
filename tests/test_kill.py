"""The kill test: SIGKILL a real ``safehold backup`` / ``safehold prune`` subprocess at a random
moment, then the repository checks clean (``check --read-data``; packs no index lists are
notes), every snapshot that existed before restores bit-identical, and the next backup / prune
succeeds.

Trials: ``SAFEHOLD_KILL_TRIALS`` (default 25, split 60/40 between backup and prune), seeded by
``SAFEHOLD_KILL_SEED``. Each test prints one summary line (run with ``-s`` to see it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    CliResult,
    MiB,
    backup_json,
    compare_trees,
    open_repository,
    run_cli,
    write_file,
)

pytestmark = pytest.mark.slow

KiB = 1024
TRIALS = int(os.environ.get("SAFEHOLD_KILL_TRIALS", "25"))
BACKUP_TRIALS = (TRIALS * 3 + 4) // 5  # 25 -> 15 + 10
PRUNE_TRIALS = TRIALS - BACKUP_TRIALS
SEED = int(os.environ.get("SAFEHOLD_KILL_SEED", "20250501"))
PACKS = {"pack_size": 256 * KiB}  # packs and index files are written all through a run


def build_source(root: Path, rnd: random.Random, small: int = 500, large: int = 3) -> Path:
    """Many small files in a few directories plus a couple of large ones, incompressible."""
    for number in range(small):
        write_file(
            root / f"d{number % 10}" / f"f{number:04}", rnd.randbytes(rnd.randint(1, 8) * KiB)
        )
    for number in range(large):
        write_file(root / f"large{number}.bin", rnd.randbytes(int(1.5 * MiB)))
    return root


def safehold(*args: object) -> list[str]:
    return [sys.executable, "-m", "safehold", *map(str, args)]


def timed_run(argv: list[str]) -> float:
    """An undisturbed run: it must succeed; returns its wall-clock duration."""
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    return duration


def kill_after(argv: list[str], delay: float) -> tuple[int, str]:
    """Start ``argv``, SIGKILL it after ``delay`` seconds; (pid, 'killed' or 'finished')."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    finished = process.poll() is not None
    if not finished:
        process.send_signal(signal.SIGKILL)
    code = process.wait()
    finished = finished or code == 0  # it exited between poll() and the signal
    if finished:
        assert code == 0, f"the undisturbed part of the run failed with exit {code}"
        return process.pid, "finished"
    assert code == -signal.SIGKILL
    return process.pid, "killed"


def left_locks(repo: Path, pid: int) -> int:
    """Locks the killed process left behind; they name its pid, which no longer exists.

    A kill between creating a lock's temporary file and renaming it over the lock's name
    leaves ``<random>.tmp`` (empty or partly written): no listing shows it (safehold, like
    borgstore, lists valid names only), so it is no lock; ``prune`` removes such leftovers."""
    locks = [
        json.loads(p.read_text())
        for p in (repo / "locks").iterdir()
        if p.is_file() and not p.name.endswith(".tmp")
    ]
    for lock in locks:
        assert lock["pid"] == pid, lock
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    return len(locks)


def check_read_data(repo: Path) -> list[str]:
    """``check --read-data --json`` passes; returns the unreferenced packs it notes."""
    result = run_cli("check", "--repo", repo, "--read-data", "--json")
    assert result.code == 0, result.out + result.err
    document = result.json()
    assert isinstance(document, dict) and document["errors"] == [], document
    stray = [note for note in document["notes"] if "not referenced by any index" in note]
    assert stray == document["notes"], document["notes"]  # nothing but leftover packs
    return stray


def restore_matches(repo: Path, snapshot_id: str, source: Path, target: Path) -> None:
    result = run_cli("restore", "--repo", repo, f"{snapshot_id}:{source}", "--target", target)
    assert result.code == 0, result.err
    assert compare_trees(source, target, include_root=False) == []
    shutil.rmtree(target)


def snapshot_ids(repo: Path) -> list[str]:
    result: CliResult = run_cli("snapshots", "--repo", repo, "--json")
    assert result.code == 0, result.err
    return [snapshot["id"] for snapshot in result.json()]  # type: ignore[union-attr]


def summarise(kind: str, records: list[dict]) -> str:
    killed = [r for r in records if r["outcome"] == "killed"]
    line = (
        f"kill test {kind}: seed {SEED}, {len(records)} trials, {len(killed)} killed "
        f"({len(records) - len(killed)} finished first), delay "
        f"{min(r['delay'] for r in records):.3f}-{max(r['delay'] for r in records):.3f} s "
        f"of {records[0]['duration']:.3f} s, unreferenced packs left: "
        f"{sum(r['stray'] for r in records)} total, max {max(r['stray'] for r in records)}, "
        f"trials with a lock left: {sum(1 for r in records if r['locks'])}"
    )
    for number, r in enumerate(records):
        print(
            f"  {kind} trial {number}: delay {r['delay']:.3f} s, {r['outcome']}, "
            f"unreferenced packs {r['stray']}, locks left {r['locks']}"
        )
    print(line)
    return line


@pytest.mark.skipif(BACKUP_TRIALS == 0, reason="SAFEHOLD_KILL_TRIALS gives no backup trials")
def test_kill_backup(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    template = make_repo("template", **PACKS)
    earlier_source = build_source(tmp_path / "earlier", rnd)
    earlier = backup_json(template, earlier_source)["snapshot_id"]
    source = build_source(tmp_path / "source", rnd)  # new data: the killed backup writes it all
    measure = tmp_path / "measure"
    shutil.copytree(template, measure)
    duration = timed_run(safehold("backup", "--repo", measure, source))
    records = []
    for trial in range(BACKUP_TRIALS):
        repo = tmp_path / f"repo-{trial}"
        shutil.copytree(template, repo)
        delay = rnd.uniform(0, duration)
        pid, outcome = kill_after(safehold("backup", "--repo", repo, source), delay)
        locks = left_locks(repo, pid)
        stray = check_read_data(repo)  # a shared lock: proceeds past the dead one
        restore_matches(repo, earlier, earlier_source, tmp_path / f"earlier-{trial}")
        for snapshot_id in snapshot_ids(repo):  # a backup that completed is complete
            if snapshot_id != earlier:
                restore_matches(repo, snapshot_id, source, tmp_path / f"killed-{trial}")
        after = backup_json(repo, source)["snapshot_id"]
        restore_matches(repo, after, source, tmp_path / f"next-{trial}")
        records.append(
            {"delay": delay, "duration": duration, "outcome": outcome, "stray": len(stray),
             "locks": locks}
        )  # fmt: skip
        shutil.rmtree(repo)
    summarise("backup", records)


@pytest.mark.skipif(PRUNE_TRIALS == 0, reason="SAFEHOLD_KILL_TRIALS gives no prune trials")
def test_kill_prune(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    rnd = random.Random(SEED + 1)
    template = make_repo("template", **PACKS)
    shared = {f"shared{n:03}": rnd.randbytes(rnd.randint(2, 12) * KiB) for n in range(120)}
    sources, snapshots = [], []
    for version in range(4):  # each version shares most files with the others
        root = tmp_path / f"v{version}"
        for name, data in shared.items():
            if (int(name[6:]) + version) % 3:  # interleaved: packs end up partly used
                write_file(root / name, data)
        build_source(root / "own", rnd, small=100, large=2)
        sources.append(root)
        snapshots.append(backup_json(template, root)["snapshot_id"])
    with open_repository(template) as repository:  # forget the first two
        for snapshot_id in snapshots[:2]:
            repository.store.delete("snapshots/" + snapshot_id)
    kept = list(zip(snapshots[2:], sources[2:], strict=True))
    assert sorted(snapshot_ids(template)) == sorted(s for s, _ in kept)
    prune_args = ("--max-unused", "0%", "--keep-young", "0")  # repacks the partly used packs too
    measure = tmp_path / "measure"
    shutil.copytree(template, measure)
    duration = timed_run(safehold("prune", "--repo", measure, *prune_args))
    records = []
    for trial in range(PRUNE_TRIALS):
        repo = tmp_path / f"repo-{trial}"
        shutil.copytree(template, repo)
        delay = rnd.uniform(0, duration)
        pid, outcome = kill_after(safehold("prune", "--repo", repo, *prune_args), delay)
        locks = left_locks(repo, pid)
        stray = check_read_data(repo)
        for number, (snapshot_id, root) in enumerate(kept):
            restore_matches(repo, snapshot_id, root, tmp_path / f"restored-{trial}-{number}")
        # An exclusive lock: the killed prune's lock is stale at once (its pid is gone).
        again = run_cli("prune", "--repo", repo, *prune_args)
        assert again.code == 0, again.err
        assert check_read_data(repo) == []  # the second prune finished the job
        for number, (snapshot_id, root) in enumerate(kept):
            restore_matches(repo, snapshot_id, root, tmp_path / f"again-{trial}-{number}")
        # No lock is left; a temp file of the killed prune's lock write may be (another
        # process may be writing its lock: only those older than the stale time go), but no
        # temp file of an interrupted write is left anywhere else.
        assert [p for p in (repo / "locks").iterdir() if p.suffix != ".tmp"] == []
        assert [p for p in repo.rglob("*.tmp") if p.parent.name != "locks"] == []
        records.append(
            {"delay": delay, "duration": duration, "outcome": outcome, "stray": len(stray),
             "locks": locks}
        )  # fmt: skip
        shutil.rmtree(repo)
    summarise("prune", records)


KILL_IN_A_FILE = """
import os, signal, sys
from safehold.archive import contentwriter
from safehold.cli.main import main
write = contentwriter.ContentWriter._write_locked
def write_then_die(self, job, offset, data):
    write(self, job, offset, data)
    if job.remaining > 1 and job.entry["size"] > 1024 * 1024:  # a large file half written
        os.kill(os.getpid(), signal.SIGKILL)
contentwriter.ContentWriter._write_locked = write_then_die
sys.argv[0] = "safehold"
sys.exit(main())
"""


def test_a_restore_killed_in_the_middle_of_a_file_is_finished_by_running_it_again(
    repo: Path, tmp_path: Path
) -> None:
    """A restore killed with files half written: the rerun (same command, no --overwrite)
    replaces what was left incomplete, keeps what was finished, and the target is then the
    snapshot bit for bit with owners, modes, times and xattrs (directories too: they got their
    metadata only at the end of the killed run)."""
    source = build_source(tmp_path / "source", random.Random(SEED + 2), small=200, large=2)
    # Larger than twice the chunker's largest chunk: several blobs whatever the repository's
    # chunker key, so there is a file to kill the restore in the middle of.
    write_file(source / "several-chunks.bin", random.Random(SEED + 3).randbytes(9 * MiB))
    os.setxattr(source / "large0.bin", "user.note", b"kept")
    os.chmod(source / "d3", 0o750)
    backup_json(repo, source)
    target = tmp_path / "target"
    command = ["restore", "--repo", repo, f"latest:{source}", "--target", target]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_IN_A_FILE, *map(str, command)], capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert compare_trees(source, target, include_root=False) != []  # something is unfinished

    again = run_cli(*command)

    assert again.code == 0, again.err
    assert "left incomplete by an interrupted restore: written again" in again.out
    assert compare_trees(source, target, include_root=False) == []
    once_more = run_cli(*command, "--json")  # a finished restore run again writes nothing
    assert once_more.code == 0 and once_more.json()["files"] == 0
    assert once_more.json()["present"] == 200 + 2 + 1
