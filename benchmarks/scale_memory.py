"""Peak memory (RSS) of the commands that walk whole snapshots, as the file count grows.

For each file count: a tree of tiny files (0-100 bytes, 100 a directory, 10 directories a
parent), a first snapshot, then every file's mtime changed and a second snapshot (so that
diff reports every file). Then, each as its own process (``python -m safehold``), with its
peak RSS (VmHWM, reported by the child as it exits), CPU and wall time:

    check, check --read-data, ls -R, diff, find '*', stats, copy --to (a second repository),
    restore of one directory of 100 files (SNAPSHOT:PATH, and --include PATH),
    forget the first snapshot + prune.

Output goes to /dev/null: what is measured is what the command holds, not the terminal. The
repositories use a cheap KDF (Argon2id with 1 MiB) so that the key derivation's own memory
does not hide the walk's. A flat command's peak stays about the same from one count to the
next; one that holds something per file grows with it.

Usage::

    python benchmarks/scale_memory.py [--files 100000 300000] [--workdir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PASSPHRASE = "scale memory benchmark"
FAST_KDF = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}
FILES_PER_DIR = 100
DIRS_PER_PARENT = 10


def file_path(root: Path, number: int) -> Path:
    """Where file ``number`` lives: root/pNNNN/dN/fNNNNNNN (100 a directory)."""
    directory = number // FILES_PER_DIR
    return (
        root
        / f"p{directory // DIRS_PER_PARENT:04}"
        / f"d{directory % DIRS_PER_PARENT}"
        / f"f{number:07}"
    )


def leaf_directory(number: int) -> str:
    """The path (below the tree's root) of the ``number``-th directory of 100 files."""
    return f"p{number // DIRS_PER_PARENT:04}/d{number % DIRS_PER_PARENT}"


def make_tree(root: Path, files: int, distinct: int | None = None) -> None:
    """``files`` files of 0-100 bytes, almost all different (so about one blob each), or
    with ``distinct``, of that many different contents (the blobs do not grow with files)."""
    made: set[Path] = set()
    for number in range(files):
        path = file_path(root, number)
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            content = number if distinct is None else number % distinct
            os.write(fd, (b"%d," % content * 40)[: content % 101])
        finally:
            os.close(fd)


def touch_all(root: Path, files: int) -> None:
    """A new mtime for every file: the next snapshot differs from the first in every file."""
    moment = time.time_ns() - 3600 * 10**9
    for number in range(files):
        os.utime(file_path(root, number), ns=(moment, moment))


def environment(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SAFEHOLD_PASSPHRASE=PASSPHRASE,
        SAFEHOLD_TO_PASSPHRASE=PASSPHRASE,
        XDG_CACHE_HOME=str(cache),
    )
    # The children run the safehold this process imports (a work tree's, not the installed one).
    import safehold

    source = str(Path(safehold.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    env.pop("SAFEHOLD_REPO", None)
    env.pop("SAFEHOLD_CACHE_DIR", None)
    return env


def init_repository(path: Path, **config: object) -> None:
    from safehold.repo.repository import Repository

    Repository.init(str(path), PASSPHRASE.encode(), kdf=FAST_KDF, config=config or None).close()


@dataclass
class Measure:
    peak: int  # bytes (the child's VmHWM)
    cpu: float  # user + system seconds
    wall: float
    code: int


# The child reports its own peak (VmHWM of its process image) when it exits. The rusage of a
# child (ru_maxrss) will not do: it keeps the high-water mark of the image it replaced at exec,
# a fork of this process, which in pytest is larger than most commands.
LAUNCH = """
import atexit, os, runpy, sys

def report():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["SCALE_MEMORY_PEAK"], "w") as out:
        out.write(peak)

atexit.register(report)
sys.argv[0] = "safehold"
runpy.run_module("safehold", run_name="__main__", alter_sys=True)
"""


def run(args: list[str], env: dict[str, str], *, check: bool = True) -> Measure:
    """``python -m safehold ARGS`` as a child process: its peak RSS, CPU and wall time."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as errors, tempfile.NamedTemporaryFile("r") as peak:
        child = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, *args],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env=dict(env, SCALE_MEMORY_PEAK=peak.name),
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        if check and child.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"safehold {' '.join(args)}: {errors.read().decode()[-2000:]}")
        peak_kib = int(peak.read() or 0)
    return Measure(peak_kib * 1024, usage.ru_utime + usage.ru_stime, wall, child.returncode)


def snapshot_ids(repo: Path, env: dict[str, str]) -> list[str]:
    import json

    out = subprocess.run(
        [sys.executable, "-m", "safehold", "snapshots", "--repo", str(repo), "--json"],
        env=env,
        check=True,
        capture_output=True,
    ).stdout
    return [snapshot["id"] for snapshot in json.loads(out)]


COMMANDS = (
    "check",
    "check --read-data",
    "ls -R",
    "diff",
    "find '*'",
    "stats",
    "copy",
    "restore dir (PATH)",
    "restore dir (--include)",
    "forget + prune",
)


@dataclass
class Setup:
    """A tree of ``files`` files under ``work``, in ``repo`` as snapshots ``first`` and
    ``second`` (every file's mtime changed in between)."""

    work: Path
    files: int
    env: dict[str, str]
    repo: Path
    source: Path
    first: str
    second: str
    config: dict

    @property
    def directory(self) -> str:
        """A directory of 100 files in the middle of the tree, as an absolute path."""
        return f"{self.source}/{leaf_directory(self.files // FILES_PER_DIR // 2)}"


def prepare(
    work: Path, files: int, distinct: int | None = None, **config: object
) -> tuple[Setup, dict[str, Measure]]:
    """Make the tree and the repository (``config``: e.g. pack_size); returns the setup and
    the measures of the two backups."""
    source, repo = work / "src", work / "repo"
    env = environment(work / "cache")
    make_tree(source, files, distinct)
    init_repository(repo, **config)
    backup = ["backup", "--repo", str(repo), "--quiet", str(source)]
    backups = {"backup": run(backup, env)}
    touch_all(source, files)
    backups["backup (all mtimes changed)"] = run(backup, env)
    first, second = snapshot_ids(repo, env)
    return Setup(work, files, env, repo, source, first, second, dict(config)), backups


def command_line(setup: Setup, name: str) -> list[str]:
    """The arguments of command ``name`` (one of COMMANDS) on ``setup``; makes what it needs
    first (a new target repository for copy; for prune, a copy of the repository in which
    the first snapshot is forgotten), so that each may run again."""
    base = ["--repo", str(setup.repo)]
    fresh = setup.work / f"{name.split()[0]}-{time.monotonic_ns()}"
    if name == "copy":
        init_repository(fresh, **setup.config)
        return ["copy", *base, "--to", str(fresh)]
    if name == "forget + prune":
        shutil.copytree(setup.repo, fresh)
        run(["forget", "--repo", str(fresh), "--keep-last", "1"], setup.env)
        return ["prune", "--repo", str(fresh), "--keep-young", "0"]
    return {
        "check": ["check", *base],
        "check --read-data": ["check", *base, "--read-data"],
        "ls -R": ["ls", *base, "-R", setup.second],
        "diff": ["diff", *base, setup.first, setup.second],
        "find '*'": ["find", *base, "*", "--snapshot", setup.second],
        "stats": ["stats", *base],
        "restore dir (PATH)": ["restore", *base, f"{setup.second}:{setup.directory}"]
        + ["-t", str(fresh)],
        "restore dir (--include)": ["restore", *base, setup.second, "-i", setup.directory]
        + ["-t", str(fresh)],
    }[name]


def measure_all(  # type: ignore[no-untyped-def]
    work: Path, files: int, distinct: int | None = None, report=print
) -> dict[str, Measure]:
    """Build the tree and repository for ``files`` files under ``work``; measure each
    command of COMMANDS (and the two backups)."""
    setup, found = prepare(work, files, distinct)
    for name in COMMANDS:
        found[name] = run(command_line(setup, name), setup.env)
        report(f"  {files:>8} files  {name:<26} {_line(found[name])}")
    restored = [path for path in work.glob("restore-*/**/*") if path.is_file()]
    assert len(restored) == 2 * FILES_PER_DIR, len(restored)
    return found


def _line(measure: Measure) -> str:
    return (
        f"peak {measure.peak / 2**20:7.1f} MiB  cpu {measure.cpu:6.1f} s  "
        f"wall {measure.wall:6.1f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument(
        "--distinct", type=int, default=None, help="that many different contents (default: all)"
    )
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    parser.add_argument("--out", default=None, help="also write the table to FILE")
    args = parser.parse_args()
    results: dict[int, dict[str, Measure]] = {}
    for files in args.files:
        work = Path(args.workdir or tempfile.mkdtemp(prefix="scale-memory-")) / str(files)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            results[files] = measure_all(work, files, args.distinct)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    names = list(next(iter(results.values())))
    lines = [
        "peak RSS (MiB) / CPU seconds / wall seconds per command, by number of files",
        f"{'command':<28}" + "".join(f"{files:>26,}" for files in results),
    ]
    for name in names:
        cells = "".join(
            f"{results[files][name].peak / 2**20:>10.1f} / {results[files][name].cpu:>5.1f}"
            f" / {results[files][name].wall:>5.1f}"
            for files in results
        )
        lines.append(f"{name:<28}{cells}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
