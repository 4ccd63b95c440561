"""safehold against restic on the same generated data, in one run, alternating the tools.

Each round: fresh repositories; first backup, unchanged second backup, the 1 % change
(benchmarks/dataset.py), backup after it, full restore into an empty directory; the change is
then reverted so every round sees the same bytes. Within a phase the tools run one after the
other, and the order flips from round to round. The page cache is never dropped (warm cache),
but dirty pages are synced and the CPUs must be idle before every timed command. Peak RSS
comes from GNU time (``/usr/bin/time -f %M``) around each command, CPU time from os.wait4.

Usage::

    python benchmarks/run.py [--size-gb 2.0] [--rounds 3] [--workdir bench-data]
                             [--json-out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataset  # a sibling script, not a package: importable once its folder is on the path

DEFAULT_WORKDIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench-data"
)
PASSPHRASE = "benchmark-passphrase"
PHASES = ("first", "unchanged", "changed", "restore")
PHASE_TITLES = {
    "first": "first backup",
    "unchanged": "unchanged second backup",
    "changed": "backup after 1% change",
    "restore": "full restore",
}
# A restore's time until its files are on disk (the restore, then ``sync``): shown, no target.
ON_DISK = "on disk"
# Targets as minimum ratios restic / safehold (time, size and memory: bigger is better).
TIME_TARGETS = {"first": 2.0, "unchanged": 4.0, "changed": 3.0, "restore": 1.0}
SIZE_TARGET = 1.0
MEMORY_TARGET = 1 / 1.5
# A measurement counts as disturbed when other processes used more than this share of one core.
DISTURBED_SHARE = 0.10


# ---------------------------------------------------------------- running one command


def cpu_seconds() -> tuple[float, float]:
    """(user, busy) CPU seconds of all CPUs since boot, from /proc/stat.

    user: time in user mode (user + nice); busy: everything but idle and I/O wait, so it also
    counts kernel threads such as page-cache writeback.
    """
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (fields[0] + fields[1]) / ticks, (sum(fields[:8]) - fields[3] - fields[4]) / ticks


@dataclass
class QuietGuard:
    """Waits before each timed command until other processes leave the CPUs (nearly) idle."""

    threshold: float = 0.15  # busy share of all CPUs above which the machine counts as busy
    patience: float = 600.0  # give up waiting after this many seconds and measure anyway
    sample: float = 1.0

    def wait(self) -> tuple[float, bool]:
        """Return (seconds waited, True if the machine was quiet in the end)."""
        started = time.monotonic()
        cores = os.cpu_count() or 1
        while True:
            before = cpu_seconds()[1]
            time.sleep(self.sample)
            busy = (cpu_seconds()[1] - before) / (self.sample * cores)
            waited = time.monotonic() - started
            if busy <= self.threshold or self.threshold >= 1:
                return waited, True
            if waited >= self.patience:
                return waited, False


@dataclass
class Measurement:
    """One timed command: wall seconds, peak RSS of its process in bytes, exit code, its CPU
    seconds, and the user-mode CPU seconds that other processes used meanwhile."""

    seconds: float
    peak_rss: int
    exit_code: int
    cpu_seconds: float
    foreign_cpu_seconds: float
    waited: float
    quiet_before: bool


def _time_wrapper(rss_file: str) -> list[str]:
    """``/usr/bin/time -f %M -o FILE --``, or [] when GNU time is not installed.

    Why not ``os.wait4`` on the command itself: Linux folds the RSS high-water mark of the
    address space a child had before ``exec`` into its ``ru_maxrss``, and a child forked (or
    vforked) from this Python process starts with this process's pages, so every command would
    be reported at least as big as the benchmark driver. GNU time is a tiny parent to wait for.
    """
    program = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    return [program, "-f", "%M", "-o", rss_file, "--"] if program else []


def _read_rss(rss_file: str, fallback: int) -> int:
    """Peak RSS in bytes from GNU time's output file (its last line is %M, in KiB)."""
    try:
        with open(rss_file) as handle:
            return int(handle.read().split()[-1]) * 1024
    except (OSError, ValueError, IndexError):
        return fallback
    finally:
        if os.path.exists(rss_file):
            os.unlink(rss_file)


def measure(
    command: list[str], env: dict[str, str], log_path: str, guard: QuietGuard
) -> Measurement:
    """Run ``command`` with output to ``log_path``; time it, take peak RSS and CPU time."""
    os.sync()
    waited, quiet = guard.wait()
    rss_file = log_path + ".rss"
    with open(log_path, "ab") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        user_before = cpu_seconds()[0]
        started = time.perf_counter()
        process = subprocess.Popen(
            [*_time_wrapper(rss_file), *command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        _pid, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        user = cpu_seconds()[0] - user_before
    process.returncode = os.waitstatus_to_exitcode(status)
    # rusage of the time process includes the command's, which time waited for.
    own = usage.ru_utime + usage.ru_stime
    foreign = max(0.0, user - usage.ru_utime)  # user mode only: kernel writeback is not noise
    peak = _read_rss(rss_file, usage.ru_maxrss * 1024)
    return Measurement(seconds, peak, process.returncode, own, foreign, waited, quiet)


def run_quietly(command: list[str], env: dict[str, str], log_path: str) -> None:
    """Run an untimed setup command; raise if it fails."""
    with open(log_path, "ab") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        subprocess.run(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            stdin=subprocess.DEVNULL,
        )


def tree_size(path: str) -> tuple[int, int]:
    """(regular files, apparent bytes) below ``path``, like ``du -sb``."""
    files = total = 0
    for directory, _dirs, names in os.walk(path):
        for name in names:
            info = os.lstat(os.path.join(directory, name))
            files += 1
            total += info.st_size
    return files, total


# ---------------------------------------------------------------- the tools


@dataclass
class Tool:
    """How to drive one backup program."""

    name: str
    command: list[str]
    env: dict[str, str]
    version_arguments = ("--version",)

    def init(self, repo: str) -> list[str]:
        """The command that creates the repository ``repo``."""
        raise NotImplementedError

    def backup(self, repo: str, source: str) -> list[str]:
        """The command that backs up ``source`` into ``repo``."""
        raise NotImplementedError

    def restore(self, repo: str, target: str) -> list[str]:
        """The command that restores the latest snapshot of ``repo`` into ``target``."""
        raise NotImplementedError

    def version(self) -> str:
        """The program's own version line."""
        result = subprocess.run(
            [*self.command, *self.version_arguments],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        return (result.stdout or result.stderr).strip()


class Safehold(Tool):
    """safehold with its default settings."""

    def init(self, repo: str) -> list[str]:
        return [*self.command, "init", "--repo", repo, "--quiet"]

    def backup(self, repo: str, source: str) -> list[str]:
        return [*self.command, "backup", "--repo", repo, "--json", source]

    def restore(self, repo: str, target: str) -> list[str]:
        return [*self.command, "restore", "--repo", repo, "--json", "latest", "--target", target]


class Restic(Tool):
    """restic with its defaults; repository format 2 (zstd 'auto') when the version has it."""

    version_arguments = ("version",)

    def init(self, repo: str) -> list[str]:
        help_text = subprocess.run(
            [*self.command, "init", "--help"],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        ).stdout
        version = ["--repository-version", "2"] if "--repository-version" in help_text else []
        return [*self.command, "init", "--repo", repo, "--quiet", *version]

    def backup(self, repo: str, source: str) -> list[str]:
        return [*self.command, "backup", "--repo", repo, "--quiet", source]

    def restore(self, repo: str, target: str) -> list[str]:
        return [*self.command, "restore", "--repo", repo, "--quiet", "latest", "--target", target]


def state_path(workdir: str, name: str) -> str:
    """Where the tools' repositories, restic's cache and the restores go: ``workdir/state``,
    not next to the data set, so that writing them never changes the directory above the
    backed-up data (an "unchanged" backup would then have new trees to write: before this,
    restic's cache appearing there cost the tool that ran second a rewrite of the trees above
    the data in every other round, safehold in all of them)."""
    os.makedirs(os.path.join(workdir, "state"), exist_ok=True)
    return os.path.join(workdir, "state", name)


def make_tools(args: argparse.Namespace, workdir: str) -> list[Tool]:
    """safehold and restic with their passphrases (and restic's cache) in the environment.

    Python may cache bytecode, as in any installation (pip compiles it): without that, every
    safehold start would compile its modules again. The cache goes to the work directory.
    """
    env = dict(
        os.environ,
        SAFEHOLD_PASSPHRASE=PASSPHRASE,
        RESTIC_PASSWORD=PASSPHRASE,
        RESTIC_CACHE_DIR=state_path(workdir, "restic-cache"),
        PYTHONPYCACHEPREFIX=os.path.join(workdir, "pycache"),
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return [
        Safehold("safehold", shlex.split(args.safehold), env),
        Restic("restic", shlex.split(args.restic), env),
    ]


# ---------------------------------------------------------------- one round


@dataclass
class RoundResult:
    """Everything measured for one tool in one round."""

    tool: str
    times: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    repo_bytes: dict[str, int] = field(default_factory=dict)
    measurements: dict[str, Measurement] = field(default_factory=dict)
    restore_ok: bool = True


def disturbed(measurement: Measurement) -> bool:
    """True if other processes used the CPUs noticeably before or during the measurement."""
    return (
        not measurement.quiet_before
        or measurement.foreign_cpu_seconds > DISTURBED_SHARE * measurement.seconds + 0.05
    )


def describe(measurement: Measurement) -> str:
    """One line of progress output for a measurement."""
    waited = f", waited {measurement.waited:.0f} s" if measurement.waited >= 2 else ""
    return (
        f"{measurement.seconds:7.2f} s {measurement.peak_rss / 1e6:6.0f} MB RSS, "
        f"cpu {measurement.cpu_seconds:6.2f} s, others {measurement.foreign_cpu_seconds:5.2f} s"
        f"{waited}{' DISTURBED' if disturbed(measurement) else ''}"
    )


def order(tools: list[Tool], number: int) -> list[Tool]:
    """The tools in the order of round ``number``: flipped every other round."""
    return tools if number % 2 == 0 else tools[::-1]


INODE_RATIO = 16 * 1024  # bytes per inode of mkfs.ext4's default


class FreshFilesystem:
    """A new ext4 file system for one restore: a sparse image file of ``size`` bytes beside
    ``base``, made with its inode tables written at once (no lazy initialisation running in
    the background during the restore), loop-mounted at ``base``; unmounted and deleted
    after. So every restore, of either tool, starts on a file system with no history, as a
    restore onto a replaced disk does (needs root, mkfs.ext4 and mount)."""

    def __init__(self, base: str, size: int) -> None:
        self.mountpoint, self.image, self.size = base, base + ".img", size

    def __enter__(self) -> str:
        with open(self.image, "wb") as image:
            image.truncate(self.size)
        lazy = "lazy_itable_init=0,lazy_journal_init=0"
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", lazy, self.image], check=True)
        os.makedirs(self.mountpoint, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", self.image, self.mountpoint], check=True)
        return self.mountpoint

    def __exit__(self, *_exc: object) -> None:
        subprocess.run(["umount", self.mountpoint], check=True)
        os.rmdir(self.mountpoint)
        os.unlink(self.image)


class Round:
    """One round: fresh repositories for all tools, the four phases, then cleanup."""

    def __init__(
        self,
        number: int,
        tools: list[Tool],
        workdir: str,
        source: str,
        seed: int,
        guard: QuietGuard,
        profile: str = "mixed",
        files: int | None = None,
        fresh_fs: bool = False,
    ) -> None:
        self.number = number
        self.profile, self.files = profile, files
        self.fresh_fs = fresh_fs
        self.guard = guard
        self.tools = order(tools, number)
        self.workdir = workdir
        self.source = source
        self.seed = seed
        self.results = {tool.name: RoundResult(tool.name) for tool in tools}
        self.log = os.path.join(workdir, "logs", f"round-{number + 1}.log")

    def repo(self, tool: Tool) -> str:
        return state_path(self.workdir, f"repo-{tool.name}")

    def _timed(self, tool: Tool, phase: str, command: list[str]) -> None:
        measurement = measure(command, tool.env, self.log, self.guard)
        if measurement.exit_code != 0:
            raise RuntimeError(
                f"{tool.name} {phase} failed with exit code {measurement.exit_code}: see {self.log}"
            )
        self.results[tool.name].times[phase] = measurement.seconds
        self.results[tool.name].peak_rss[phase] = measurement.peak_rss
        self.results[tool.name].cpu[phase] = measurement.cpu_seconds
        self.results[tool.name].measurements[phase] = measurement
        print(
            f"  round {self.number + 1} {tool.name:>8} {PHASE_TITLES[phase]:<24} "
            f"{describe(measurement)}",
            flush=True,
        )

    def _backups(self, phase: str) -> None:
        for tool in self.tools:
            self._timed(tool, phase, tool.backup(self.repo(tool), self.source))

    def _repo_sizes(self, label: str) -> None:
        for tool in self.tools:
            self.results[tool.name].repo_bytes[label] = tree_size(self.repo(tool))[1]

    def _restores(self, expected: tuple[int, int]) -> None:
        """Both restores are kept until both are done: a restore started right after the other
        tool's million files were deleted would pay for it (ext4 passes over inodes freed in
        the last minute or more when it allocates new ones: 20-40 % of a small-files restore's
        CPU time on the reference VM, measured with perf). With ``fresh_fs`` each restore goes
        into a file system of its own, made for it (``FreshFilesystem``)."""
        if self.fresh_fs:
            for tool in self.tools:
                size = 2 * expected[1] + expected[0] * INODE_RATIO + 2**30
                with FreshFilesystem(state_path(self.workdir, "restore-fs"), size) as mounted:
                    self._restore(tool, os.path.join(mounted, "restore"), expected)
            return
        targets = [state_path(self.workdir, f"restore-{tool.name}") for tool in self.tools]
        for target in targets:
            shutil.rmtree(target, ignore_errors=True)
        for tool, target in zip(self.tools, targets, strict=True):
            self._restore(tool, target, expected)
        for target in targets:
            shutil.rmtree(target)

    def _restore(self, tool: Tool, target: str, expected: tuple[int, int]) -> None:
        os.makedirs(target)
        self._timed(tool, "restore", tool.restore(self.repo(tool), target))
        self._on_disk(tool)
        restored = tree_size(target)
        if restored != expected:
            self.results[tool.name].restore_ok = False
            print(
                f"  WARNING: {tool.name} restored {restored} (files, bytes), expected {expected}",
                flush=True,
            )

    def _on_disk(self, tool: Tool) -> None:
        """``sync`` right after a restore: the time until what it wrote is on disk. The tools
        differ there: restic leaves every file it wrote in the page cache for the kernel to
        write back (the ``sync`` before the next command did it, untimed), safehold syncs a
        file of 1 MiB or more itself before it moves on (contentwriter.DURABLE_FILE), so its
        restore time already holds most of that write-out of a set of large files."""
        started = time.perf_counter()
        os.sync()
        flushed = time.perf_counter() - started
        result = self.results[tool.name]
        result.times[ON_DISK] = result.times["restore"] + flushed
        print(
            f"  round {self.number + 1} {tool.name:>8} {'then sync':<24} {flushed:7.2f} s: "
            f"on disk after {result.times[ON_DISK]:.2f} s",
            flush=True,
        )

    def run(self) -> dict[str, RoundResult]:
        """Run the round; the data set is back to its original bytes afterwards."""
        for tool in self.tools:
            shutil.rmtree(self.repo(tool), ignore_errors=True)
            run_quietly(tool.init(self.repo(tool)), tool.env, self.log)
        self._backups("first")
        self._repo_sizes("after first backup")
        self._backups("unchanged")
        marker = self.source + ".changed"
        open(marker, "w").close()
        change = dataset.apply_change(
            self.source, self.seed, profile=self.profile, files=self.files
        )
        try:
            self._backups("changed")
            self._repo_sizes("after three backups")
            self._restores(tree_size(self.source))
        finally:
            dataset.revert_change(change)
            os.unlink(marker)
        for tool in self.tools:
            shutil.rmtree(self.repo(tool))
        shutil.rmtree(state_path(self.workdir, "restic-cache"), ignore_errors=True)
        return self.results


# ---------------------------------------------------------------- data set and disk


def warm(source: str) -> None:
    """Read a reused data set once, untimed: otherwise the tool that backs it up first in round
    1 reads it from disk and the other from the page cache (a million small files: 92 s
    instead of ~50 s for safehold's first backup on the reference VM)."""
    started, stack, total = time.monotonic(), [source], 0
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    with open(entry.path, "rb", buffering=0) as handle:
                        while chunk := handle.read(1 << 20):
                            total += len(chunk)
    print(f"read the data set once ({total / 1e9:.2f} GB in {time.monotonic() - started:.0f} s)")


def prepare_data(
    workdir: str, size_gb: float, seed: int, profile: str = "mixed", files: int | None = None
) -> tuple[str, dict]:
    """Reuse the data set in ``workdir/data`` if it was made with the same knobs, else make it."""
    source = os.path.join(workdir, "data")
    manifest_path = os.path.join(workdir, "data.json")
    wanted = {"size_gb": size_gb, "seed": seed, "generator": 1}
    if profile != "mixed":
        wanted = {"profile": profile, "files": dataset.profile_files(profile, files), **wanted}
    reverted = not os.path.exists(source + ".changed")
    if reverted and os.path.exists(manifest_path) and os.path.isdir(source):
        with open(manifest_path) as handle:
            manifest = json.load(handle)
        if {key: manifest.get(key) for key in wanted} == wanted:
            warm(source)
            return source, manifest
    shutil.rmtree(source, ignore_errors=True)
    for stale in (manifest_path, source + ".changed"):
        if os.path.exists(stale):
            os.unlink(stale)
    what = f"{size_gb} GB" if profile == "mixed" else f"{wanted['files']:,}-file {profile}"
    print(f"generating {what} data set in {source} ...", flush=True)
    started = time.monotonic()
    summary = dataset.generate(source, size_gb, seed, profile, files)
    manifest = {
        **wanted,
        "files": summary.files,
        "bytes": summary.bytes,
        "by_kind": summary.by_kind,
    }
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)
    print(
        f"  {summary.files} files, {summary.bytes / 1e9:.2f} GB "
        f"in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return source, manifest


def start(
    args: argparse.Namespace, argv: list[str] | None, copies: int = 4
) -> tuple[str, str, str, dict]:
    """The common start of every benchmark: (command line, working folder, data set folder,
    manifest), with the free disk checked for ``copies`` copies of the data besides the data
    set itself (``check_disk``) and the data set made if it is not there yet."""
    command_line = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    have_data = os.path.isdir(os.path.join(workdir, "data"))
    profile, files = getattr(args, "profile", "mixed"), getattr(args, "files", None)
    size_gb = dataset.expected_bytes(profile, args.size_gb, files) / 1e9
    check_disk(workdir, size_gb, have_data, copies)
    source, manifest = prepare_data(workdir, args.size_gb, args.seed, profile, files)
    return command_line, workdir, source, manifest


def check_disk(workdir: str, size_gb: float, have_data: bool, copies: int = 4) -> None:
    """Exit unless there is room for the data set (unless made already) and ``copies`` more
    copies of it (default: two repositories and two restores), with a x1.25 margin."""
    free = shutil.disk_usage(workdir).free
    needed = int(size_gb * 1e9 * (copies if have_data else copies + 1) * 1.25)
    print(f"free disk in {workdir}: {free / 1e9:.1f} GB, needed about {needed / 1e9:.1f} GB")
    if free < needed:
        sys.exit(f"not enough free disk space in {workdir}")


# ---------------------------------------------------------------- summarising


def median_of(rounds: list[dict[str, RoundResult]], tool: str, kind: str, key: str) -> float:
    return statistics.median(getattr(result[tool], kind)[key] for result in rounds)


def summary_rows(rounds: list[dict[str, RoundResult]]) -> list[dict]:
    """Median rows: measure, unit, safehold, restic, ratio restic/safehold, target ratio."""
    rows = []
    for phase in PHASES:
        rows.append(_row(rounds, PHASE_TITLES[phase], "s", "times", phase, TIME_TARGETS[phase]))
    rows.append(_row(rounds, "full restore, then sync (on disk)", "s", "times", ON_DISK, None))
    for label in ("after first backup", "after three backups"):
        rows.append(
            _row(rounds, f"repository size {label}", "MB", "repo_bytes", label, SIZE_TARGET)
        )
    for phase in PHASES:
        target = MEMORY_TARGET if phase != "restore" else None
        rows.append(
            _row(rounds, f"peak RSS, {PHASE_TITLES[phase]}", "MB", "peak_rss", phase, target)
        )
    for phase in PHASES:
        rows.append(
            _row(rounds, f"CPU time (user + sys), {PHASE_TITLES[phase]}", "s", "cpu", phase, None)
        )
    return rows


def _row(
    rounds: list[dict[str, RoundResult]],
    title: str,
    unit: str,
    kind: str,
    key: str,
    target: float | None,
) -> dict:
    scale = 1e6 if unit == "MB" else 1.0
    ours = median_of(rounds, "safehold", kind, key) / scale
    theirs = median_of(rounds, "restic", kind, key) / scale
    ratio = theirs / ours if ours else float("inf")
    return {
        "measure": title,
        "unit": unit,
        "safehold": ours,
        "restic": theirs,
        "ratio": ratio,
        "target": target,
        "met": None if target is None else ratio >= target,
    }


def _target_text(row: dict) -> str:
    if row["target"] is None:
        return "-"
    if row["unit"] == "s":
        return f">= {row['target']:.0f}x faster" if row["target"] > 1 else "not slower"
    if "RSS" in row["measure"]:
        return "<= 1.5x restic's"
    return "<= restic's"


def markdown_table(rows: list[dict]) -> str:
    """The medians as a Markdown table (ratio = restic / safehold: > 1 favours safehold)."""
    lines = [
        "| measure (median) | safehold | restic | restic / safehold | target | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        digits = 2 if row["unit"] == "s" else 0
        met = "-" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(
            f"| {row['measure']} | {row['safehold']:.{digits}f} {row['unit']} | "
            f"{row['restic']:.{digits}f} {row['unit']} | {row['ratio']:.2f} | "
            f"{_target_text(row)} | {met} |"
        )
    return "\n".join(lines)


def per_round_table(rounds: list[dict[str, RoundResult]]) -> str:
    """Every round's times, to judge the noise behind the medians."""
    lines = [
        "| round | tool | " + " | ".join(PHASE_TITLES[p] for p in PHASES) + " |",
        "|---|---|" + "---:|" * len(PHASES),
    ]
    for number, result in enumerate(rounds, 1):
        for tool in ("safehold", "restic"):
            cells = " | ".join(
                f"{result[tool].times[p]:.2f} s"
                f"{' (!)' if disturbed(result[tool].measurements[p]) else ''}"
                for p in PHASES
            )
            lines.append(f"| {number} | {tool} | {cells} |")
    if any("(!)" in line for line in lines):
        lines.append(
            f"\n(!): disturbed: other processes used more than {DISTURBED_SHARE:.0%} "
            "of a core (in user mode) during the command, or the machine was still "
            "busy when the wait for quiet gave up."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def common_arguments(description: str, size_gb: float, workdir: str) -> argparse.ArgumentParser:
    """The options every benchmark here shares: scale, rounds, seed, places, quiet waiting."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--size-gb", type=float, default=size_gb, help=f"data set scale (default {size_gb})"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="data set seed (default 1)")
    parser.add_argument("--workdir", default=workdir, help=f"working folder (default {workdir})")
    parser.add_argument("--json-out", default=None, help="also write the results as JSON here")
    parser.add_argument(
        "--safehold",
        default=f"{shlex.quote(sys.executable)} -m safehold",
        help="command that runs safehold (default: this Python -m safehold)",
    )
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.15,
        help="before each timed command wait until other processes use at most "
        "this share of all CPUs (default 0.15; 1 disables the wait)",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=600.0,
        help="stop waiting for a quiet machine after this many seconds",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = common_arguments(__doc__.split("\n\n")[0], 2.0, DEFAULT_WORKDIR)
    parser.add_argument(
        "--restic", default=shutil.which("restic") or "restic", help="command that runs restic"
    )
    parser.add_argument(
        "--profile",
        choices=sorted(dataset.PROFILES),
        default="mixed",
        help="mixed (2 GB of everything, --size-gb), or an imaging archive: small (300,000 "
        "files of 1-64 KiB), tiny (1,000,000 files of 1-8 KiB) or dicom (6,000 files of "
        "100-600 KiB); see dataset.py",
    )
    parser.add_argument(
        "--files", type=int, default=None, help="files of an archive profile (e.g. 1000000)"
    )
    parser.add_argument(
        "--fresh-fs",
        action="store_true",
        help="restore each time into a new ext4 file system (a loop-mounted sparse image in "
        "the work folder; needs root): no restore pays for the other's deleted files",
    )
    return parser.parse_args(argv)


def git_state() -> str:
    """The commit of the safehold work tree, with '-dirty' if files under safehold/ changed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    head = subprocess.run(
        ["git", "-C", root, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    changes = subprocess.run(
        ["git", "-C", root, "status", "--porcelain", "--", "safehold"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (head or "unknown") + ("-dirty" if changes else "")


def environment(tools: list[Tool], manifest: dict) -> dict:
    """The facts a reader needs to interpret the figures."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "kernel": platform.release(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "versions": {tool.name: tool.version() for tool in tools},
        "safehold_tree": git_state(),
        "data": manifest,
    }


def print_header(title: str, command_line: str, env: dict) -> None:
    """The heading lines every comparison report starts with: what ran, when, which versions."""
    print(f"\n## {title}\n")
    print(f"Command: `{command_line}`  ")
    print(f"Date: {env['date']}; machine: {env['machine']}; kernel {env['kernel']}  ")
    print(
        f"Versions: {env['versions']['safehold']} (tree {env['safehold_tree']}), "
        f"{env['versions']['restic']}; Python {env['python']}  "
    )


def write_json(path: str | None, document: dict) -> None:
    """Write the results document to ``path`` (if one was asked for)."""
    if path:
        with open(path, "w") as handle:
            json.dump(document, handle, indent=2)
        print(f"\nJSON written to {path}")


def report(
    args: argparse.Namespace, command_line: str, env: dict, rounds: list[dict[str, RoundResult]]
) -> dict:
    """Print the results and return them as a JSON-able document."""
    rows = summary_rows(rounds)
    data = env["data"]
    print_header(
        f"safehold vs restic, medians of {len(rounds)} alternating rounds", command_line, env
    )
    print(
        f"Data: {data['files']} files, {data['bytes'] / 1e9:.2f} GB "
        f"(scale {args.size_gb} GB, seed {args.seed}): "
        + ", ".join(
            f"{kind} {files} files / {size / 1e9:.2f} GB"
            for kind, (files, size) in data["by_kind"].items()
        )
    )
    print(
        "Warm page cache: nothing is dropped from the page cache; `sync`, then a wait for "
        f"idle CPUs (at most {args.quiet_threshold:.0%} busy) before each timed command; "
        + (
            "each restore into a new ext4 file system of its own (--fresh-fs). "
            if args.fresh_fs
            else "both restores are deleted only after both are done. "
        )
        + "Restic with its defaults, repository format 2 (zstd auto).\n"
    )
    print(markdown_table(rows))
    print("\nratio = restic / safehold: above 1 means safehold is faster, smaller or leaner.\n")
    print(per_round_table(rounds))
    noisy = sum(
        disturbed(one.measurements[phase])
        for result in rounds
        for one in result.values()
        for phase in PHASES
    )
    if noisy:
        print(f"\nWARNING: {noisy} measurement(s) were disturbed by other processes")
    failed = [name for result in rounds for name, one in result.items() if not one.restore_ok]
    if failed:
        print(f"\nWARNING: restore size mismatch for {sorted(set(failed))}")
    return {
        "command": command_line,
        "environment": env,
        "summary": rows,
        "rounds": [{name: asdict(one) for name, one in result.items()} for result in rounds],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    args = parse_args(argv)
    command_line, workdir, source, manifest = start(args, argv)
    tools = make_tools(args, workdir)
    guard = QuietGuard(args.quiet_threshold, args.max_wait)
    env = environment(tools, manifest)
    rounds = []
    for number in range(args.rounds):
        print(
            f"round {number + 1} of {args.rounds}: order "
            f"{', '.join(tool.name for tool in order(tools, number))}",
            flush=True,
        )
        rounds.append(
            Round(
                number,
                tools,
                workdir,
                source,
                args.seed,
                guard,
                args.profile,
                args.files,
                args.fresh_fs,
            ).run()
        )
    write_json(args.json_out, report(args, command_line, env, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
