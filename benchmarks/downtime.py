"""Downtime of a platform backup: strategy cold against hot+cold, on the generated data set.

A platform file with one files component (the data set of benchmarks/dataset.py) and a
``command`` service control whose stop and start commands only append the moment they ran to a
log file: no real service is needed, the downtime safehold measures and records in the snapshot
(``downtime.seconds`` of ``safehold backup --config FILE --json``) is what counts.

Each round, for each strategy (cold then hot+cold, the order flipped every other round): a fresh
repository, a first backup, the 1 % change, a second backup (timed: its downtime and wall time
are recorded), then the change is reverted so every round sees the same bytes. As in run.py the
page cache is never dropped, but dirty pages are synced and the CPUs must be idle before every
timed backup.

Usage::

    python benchmarks/downtime.py [--size-gb 1.0] [--rounds 3] [--workdir bench-data/downtime]
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataset  # siblings, not a package: importable once their folder is on the path
import run

DEFAULT_WORKDIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench-data", "downtime"
)
PASSPHRASE = "benchmark-passphrase"
STRATEGIES = ("cold", "hot+cold")
PLATFORM_NAME = "downtime-bench"


@dataclass
class Bench:
    """The settings every backup of the run shares."""

    safehold: list[str]
    env: dict[str, str]
    workdir: str
    source: str
    seed: int
    guard: run.QuietGuard


@dataclass
class Backup:
    """One platform backup: what safehold recorded and what was measured around it."""

    downtime: float  # downtime.seconds from the snapshot
    wall: float  # wall time of the whole `safehold backup` process
    cpu: float  # user + sys CPU seconds of the process
    marks: float | None  # start mark minus stop mark, from the commands' own logs
    foreign_cpu: float  # user-mode CPU seconds other processes used meanwhile
    quiet_before: bool

    @property
    def disturbed(self) -> bool:
        """True if other processes used the CPUs noticeably before or during the backup."""
        limit = run.DISTURBED_SHARE * self.wall + 0.05
        return not self.quiet_before or self.foreign_cpu > limit


# ---------------------------------------------------------------- the platform file


def marks_dir(workdir: str) -> str:
    """Where the stop and start commands append their time stamps."""
    return os.path.join(workdir, "marks")


def write_platform_file(bench: Bench, strategy: str, repo: str) -> str:
    """Write the platform file for ``strategy`` backing up the data set into ``repo``."""
    marks = marks_dir(bench.workdir)
    config = {
        "repository": repo,
        "platform": PLATFORM_NAME,
        "strategy": strategy,
        "services": {
            "control": "command",
            "stop_command": "date +%s.%N >> " + shlex.quote(os.path.join(marks, "stopped.log")),
            "start_command": "date +%s.%N >> " + shlex.quote(os.path.join(marks, "started.log")),
            "timeout": 30,
        },
        "components": [{"name": "data", "type": "files", "paths": [bench.source]}],
    }
    path = os.path.join(bench.workdir, f"platform-{strategy.replace('+', '-')}.yaml")
    with open(path, "w") as handle:
        json.dump(config, handle, indent=2)  # JSON is YAML
    return path


def reset_marks(workdir: str) -> None:
    """Empty the marks directory before a backup."""
    shutil.rmtree(marks_dir(workdir), ignore_errors=True)
    os.makedirs(marks_dir(workdir))


def marks_interval(workdir: str) -> float | None:
    """Seconds from the stop command's mark to the start command's, or None if one is missing."""
    stamps = []
    for name in ("stopped.log", "started.log"):
        try:
            with open(os.path.join(marks_dir(workdir), name)) as handle:
                stamps.append(float(handle.read().split()[-1]))
        except (OSError, ValueError, IndexError):
            return None
    return stamps[1] - stamps[0]


# ---------------------------------------------------------------- one backup


def timed_run(command: list[str], bench: Bench, log_path: str) -> tuple[str, dict]:
    """Run ``command`` after a sync and a wait for idle CPUs; return its stdout and figures."""
    os.sync()
    _waited, quiet = bench.guard.wait()
    with open(log_path, "ab") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        user_before = run.cpu_seconds()[0]
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=bench.env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
        )
        out = process.stdout.read().decode() if process.stdout else ""
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        user = run.cpu_seconds()[0] - user_before
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {process.returncode}: see {log_path}")
    figures = {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "foreign_cpu": max(0.0, user - usage.ru_utime),
        "quiet_before": quiet,
    }
    return out, figures


def backup(bench: Bench, config: str, log_path: str) -> Backup:
    """Back up the platform of ``config``; fail unless every component succeeded."""
    reset_marks(bench.workdir)
    command = [*bench.safehold, "backup", "--config", config, "--json"]
    out, figures = timed_run(command, bench, log_path)
    report = json.loads(out)
    if report["status"] != "ok" or not report.get("downtime"):
        raise RuntimeError(f"backup of {config} ended {report['status']}: {out}")
    return Backup(
        downtime=report["downtime"]["seconds"],
        marks=marks_interval(bench.workdir),
        **figures,
    )


@contextmanager
def changed(source: str, seed: int) -> Iterator[dataset.Change]:
    """Apply the 1 % change, and revert it afterwards whatever happens.

    The marker file makes run.prepare_data regenerate the data set if the run is killed while
    the change is applied.
    """
    marker = source + ".changed"
    open(marker, "w").close()
    change = dataset.apply_change(source, seed)
    try:
        yield change
    finally:
        dataset.revert_change(change)
        os.unlink(marker)


# ---------------------------------------------------------------- rounds


def strategy_round(bench: Bench, strategy: str, number: int) -> dict[str, Backup]:
    """Fresh repository, first backup, 1 % change, second backup; returns both backups."""
    log_path = os.path.join(bench.workdir, "logs", f"round-{number + 1}.log")
    repo = os.path.join(bench.workdir, "repo")
    shutil.rmtree(repo, ignore_errors=True)
    run.run_quietly([*bench.safehold, "init", "--repo", repo, "--quiet"], bench.env, log_path)
    config = write_platform_file(bench, strategy, repo)
    result = {"first": backup(bench, config, log_path)}
    with changed(bench.source, bench.seed):
        result["changed"] = backup(bench, config, log_path)
    shutil.rmtree(repo)
    return result


def describe(number: int, strategy: str, which: str, one: Backup) -> str:
    """One line of progress output."""
    return (
        f"  round {number + 1} {strategy:>8} {which:<15} downtime {one.downtime:6.2f} s, "
        f"total {one.wall:6.2f} s, cpu {one.cpu:6.2f} s, others {one.foreign_cpu:5.2f} s"
        f"{' DISTURBED' if one.disturbed else ''}"
    )


def run_round(bench: Bench, number: int) -> dict[str, dict[str, Backup]]:
    """Both strategies, cold first in odd rounds (1, 3, ...) and hot+cold first in even ones."""
    strategies = STRATEGIES if number % 2 == 0 else STRATEGIES[::-1]
    print(f"round {number + 1}: order {', '.join(strategies)}", flush=True)
    results = {}
    for strategy in strategies:
        results[strategy] = strategy_round(bench, strategy, number)
        for which, title in (("first", "first backup"), ("changed", "after 1% change")):
            print(describe(number, strategy, title, results[strategy][which]), flush=True)
    return results


# ---------------------------------------------------------------- summarising


def summary_rows(rounds: list[dict[str, dict[str, Backup]]]) -> list[dict]:
    """Per strategy the medians of the backup after the 1 % change, and downtime / cold's."""
    rows = []
    for strategy in STRATEGIES:
        backups = [result[strategy]["changed"] for result in rounds]
        rows.append(
            {
                "strategy": strategy,
                "downtime": statistics.median(one.downtime for one in backups),
                "wall": statistics.median(one.wall for one in backups),
            }
        )
    cold = rows[0]["downtime"]
    for row in rows:
        row["fraction_of_cold"] = row["downtime"] / cold if cold else None
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The medians as a Markdown table."""
    lines = [
        "| strategy | downtime, backup after 1% change (median) | total time (median) "
        "| downtime / cold's |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        fraction = "-" if row["fraction_of_cold"] is None else f"{row['fraction_of_cold']:.2f}"
        lines.append(
            f"| {row['strategy']} | {row['downtime']:.2f} s | {row['wall']:.2f} s | {fraction} |"
        )
    return "\n".join(lines)


def per_round_table(rounds: list[dict[str, dict[str, Backup]]]) -> str:
    """Every round's backup after the change, to judge the noise behind the medians."""
    lines = [
        "| round | strategy | downtime | stop-to-start marks | total time | CPU |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for number, result in enumerate(rounds, 1):
        for strategy in STRATEGIES:
            one = result[strategy]["changed"]
            marks = "-" if one.marks is None else f"{one.marks:.2f} s"
            lines.append(
                f"| {number} | {strategy} | {one.downtime:.2f} s | {marks} | "
                f"{one.wall:.2f} s{' (!)' if one.disturbed else ''} | {one.cpu:.2f} s |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line options (shared with run.py)."""
    parser = run.common_arguments(__doc__.split("\n\n")[0], 1.0, DEFAULT_WORKDIR)
    return parser.parse_args(argv)


def make_bench(args: argparse.Namespace, workdir: str, source: str) -> Bench:
    """The shared settings; the passphrase comes from SAFEHOLD_PASSPHRASE in the environment.

    Python may cache bytecode (in the work directory), as in any installation.
    """
    env = dict(
        os.environ,
        SAFEHOLD_PASSPHRASE=PASSPHRASE,
        PYTHONPYCACHEPREFIX=os.path.join(workdir, "pycache"),
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    guard = run.QuietGuard(args.quiet_threshold, args.max_wait)
    return Bench(shlex.split(args.safehold), env, workdir, source, args.seed, guard)


def environment(bench: Bench, manifest: dict) -> dict:
    """The facts a reader needs to interpret the figures."""
    version = subprocess.run(
        [*bench.safehold, "--version"], env=bench.env, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, kernel {platform.release()}",
        "safehold": f"{version} (tree {run.git_state()})",
        "python": f"{platform.python_version()} ({sys.executable})",
        "data": manifest,
    }


def report(command_line: str, env: dict, rounds: list[dict[str, dict[str, Backup]]]) -> dict:
    """Print the results and return them as a JSON-able document."""
    rows = summary_rows(rounds)
    data = env["data"]
    print(f"\n## Platform backup downtime, medians of {len(rounds)} alternating rounds\n")
    print(f"Command: `{command_line}`  ")
    print(f"Date: {env['date']}; machine: {env['machine']}  ")
    print(f"Versions: {env['safehold']}; Python {env['python']}  ")
    print(
        f"Data: {data['files']} files, {data['bytes'] / 1e9:.2f} GB "
        f"(scale {data['size_gb']} GB, seed {data['seed']}), one files component; "
        "services: `control: command`, stop/start commands only log the time.\n"
    )
    print(markdown_table(rows))
    print(
        "\nDowntime as safehold records it in the snapshot (first stop to last start); total "
        "time is the wall time of the whole `safehold backup` process.\n"
    )
    print(per_round_table(rounds))
    noisy = sum(one["changed"].disturbed for result in rounds for one in result.values())
    if noisy:
        print(f"\nWARNING: {noisy} measurement(s) (!) were disturbed by other processes")
    return {
        "command": command_line,
        "environment": env,
        "summary": rows,
        "rounds": [
            {s: {k: asdict(b) for k, b in one.items()} for s, one in result.items()}
            for result in rounds
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    args = parse_args(argv)
    command_line, workdir, source, manifest = run.start(args, argv, copies=1)  # one repository
    bench = make_bench(args, workdir, source)
    env = environment(bench, manifest)
    rounds = [run_round(bench, number) for number in range(args.rounds)]
    run.write_json(args.json_out, report(command_line, env, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
