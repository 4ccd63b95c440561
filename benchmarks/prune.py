"""safehold prune against restic prune, on repositories with the same content.

Setup (untimed), for each tool: a fresh repository and four backups of the data set
(benchmarks/dataset.py): the original; the 1 % change made with seed+1 (then reverted); the
change made with seed+2 (reverted); the change made with seed+3 with every tenth small file
and every tenth large file the change did not touch moved out of the tree. Then
``forget --keep-last 1``: the chunks of the earlier changes, of the original regions and of the
moved files (about 30 % of the repository at 0.5 GB) are left unused.
The repository (and restic's cache) is kept as the prepared state.

Each round, for each tool (the order flipped every other round): copy the prepared repository
with ``cp -a`` (and restic's cache), then time ``prune`` with the defaults of both tools (at
most 5 % unused data left), measure the repository size afterwards. As in run.py the page cache
is never dropped, but dirty pages are synced and the CPUs must be idle before every prune; peak
RSS comes from GNU time, CPU time from os.wait4. The first round also runs ``check`` on the
pruned copies (untimed).

Usage::

    python benchmarks/prune.py [--size-gb 0.5] [--rounds 3] [--workdir bench-data/prune]
                               [--json-out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataset  # siblings, not a package: importable once their folder is on the path
import run

DEFAULT_WORKDIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench-data", "prune"
)
REMOVED_SHARE = 10  # every tenth large and small file is missing from the last snapshot


@dataclass
class Prune:
    """One timed prune of one tool."""

    measurement: run.Measurement
    repo_bytes_before: int
    repo_bytes_after: int

    @property
    def disturbed(self) -> bool:
        return run.disturbed(self.measurement)


# ---------------------------------------------------------------- commands


def prune_command(tool: run.Tool, repo: str) -> list[str]:
    if tool.name == "restic":
        return [*tool.command, "prune", "--repo", repo]
    return [*tool.command, "prune", "--repo", repo, "--json", "--keep-young", "0"]


def forget_command(tool: run.Tool, repo: str) -> list[str]:
    return [*tool.command, "forget", "--repo", repo, "--keep-last", "1"]


def check_command(tool: run.Tool, repo: str) -> list[str]:
    return [*tool.command, "check", "--repo", repo]


def snapshots_command(tool: run.Tool, repo: str) -> list[str]:
    return [*tool.command, "snapshots", "--repo", repo, "--json"]


# ---------------------------------------------------------------- preparing the repositories


@contextmanager
def changed(source: str, seed: int, workdir: str, remove: bool) -> Iterator[None]:
    """Apply the 1 % change made with ``seed`` (and move files aside if ``remove``); undo after.

    The marker file makes run.prepare_data regenerate the data set if the run is killed while
    the tree is changed.
    """
    marker = source + ".changed"
    open(marker, "w").close()
    change = dataset.apply_change(source, seed)
    moved: list[tuple[str, str]] = []
    try:
        if remove:
            aside = os.path.join(workdir, "aside")
            shutil.rmtree(aside, ignore_errors=True)
            os.makedirs(aside)
            targets = {path for path, _offset, _old in change.regions}
            large = [p for p in dataset._files_under(source, "dicom", ".dcm") if p not in targets]
            small = dataset._files_under(source, "small", "")
            small = [p for p in small if p not in change.added]
            for number, path in enumerate(large[5::REMOVED_SHARE] + small[5::REMOVED_SHARE]):
                target = os.path.join(aside, str(number))
                os.rename(path, target)
                moved.append((path, target))
        yield
    finally:
        for path, target in moved:
            os.rename(target, path)
        dataset.revert_change(change)
        os.unlink(marker)


def prepared_repo(workdir: str, tool: run.Tool) -> str:
    return os.path.join(workdir, f"prepared-{tool.name}")


def prepare(tools: list[run.Tool], workdir: str, source: str, seed: int, log: str) -> dict:
    """Build the prepared repositories: four snapshots, forget all but the last."""
    for tool in tools:
        shutil.rmtree(prepared_repo(workdir, tool), ignore_errors=True)
        run.run_quietly(tool.init(prepared_repo(workdir, tool)), tool.env, log)
    shutil.rmtree(run.state_path(workdir, "restic-cache"), ignore_errors=True)

    def backups() -> None:
        for tool in tools:
            run.run_quietly(tool.backup(prepared_repo(workdir, tool), source), tool.env, log)

    print("preparing: backup 1 of 4 (original)", flush=True)
    backups()
    for number in (1, 2, 3):
        print(f"preparing: backup {number + 1} of 4 (change seed {seed + number})", flush=True)
        with changed(source, seed + number, workdir, remove=number == 3):
            backups()
    facts: dict = {}
    for tool in tools:
        repo = prepared_repo(workdir, tool)
        before = run.tree_size(repo)[1]
        run.run_quietly(forget_command(tool, repo), tool.env, log)
        listing = subprocess.run(
            snapshots_command(tool, repo), env=tool.env, capture_output=True, text=True, check=True
        ).stdout
        facts[tool.name] = {
            "bytes_before_forget": before,
            "bytes_after_forget": run.tree_size(repo)[1],
            "snapshots_after_forget": len(json.loads(listing) or []),
        }
    cache = run.state_path(workdir, "restic-cache")
    shutil.rmtree(cache + ".prepared", ignore_errors=True)
    if os.path.isdir(cache):
        os.rename(cache, cache + ".prepared")
    return facts


# ---------------------------------------------------------------- one round


def copy_tree(source: str, target: str) -> None:
    shutil.rmtree(target, ignore_errors=True)
    if os.path.isdir(source):
        subprocess.run(["cp", "-a", source, target], check=True)


def run_round(
    tools: list[run.Tool], workdir: str, number: int, guard: run.QuietGuard, check: bool
) -> dict[str, Prune]:
    log = os.path.join(workdir, "logs", f"round-{number + 1}.log")
    results = {}
    for tool in run.order(tools, number):
        repo = run.state_path(workdir, f"repo-{tool.name}")
        cache = run.state_path(workdir, "restic-cache")
        copy_tree(prepared_repo(workdir, tool), repo)
        copy_tree(cache + ".prepared", cache)
        before = run.tree_size(repo)[1]
        measurement = run.measure(prune_command(tool, repo), tool.env, log, guard)
        if measurement.exit_code != 0:
            raise RuntimeError(
                f"{tool.name} prune failed with exit code {measurement.exit_code}: see {log}"
            )
        results[tool.name] = Prune(measurement, before, run.tree_size(repo)[1])
        print(
            f"  round {number + 1} {tool.name:>8} prune {run.describe(measurement)}, "
            f"repository {before / 1e6:.0f} -> {results[tool.name].repo_bytes_after / 1e6:.0f} MB",
            flush=True,
        )
        if check:
            run.run_quietly(check_command(tool, repo), tool.env, log)
            print(f"  round {number + 1} {tool.name:>8} check after prune: ok", flush=True)
        shutil.rmtree(repo)
    shutil.rmtree(run.state_path(workdir, "restic-cache"), ignore_errors=True)
    return results


# ---------------------------------------------------------------- summarising


ROWS = (
    ("prune wall time", "s", lambda p: p.measurement.seconds),
    ("prune CPU time (user + sys)", "s", lambda p: p.measurement.cpu_seconds),
    ("prune peak RSS", "MB", lambda p: p.measurement.peak_rss / 1e6),
    ("repository size after prune", "MB", lambda p: p.repo_bytes_after / 1e6),
)


def summary_rows(rounds: list[dict[str, Prune]]) -> list[dict]:
    rows = []
    for title, unit, value in ROWS:
        ours = statistics.median(value(result["safehold"]) for result in rounds)
        theirs = statistics.median(value(result["restic"]) for result in rounds)
        rows.append(
            {
                "measure": title,
                "unit": unit,
                "safehold": ours,
                "restic": theirs,
                "ratio": theirs / ours if ours else float("inf"),
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| measure (median) | safehold | restic | restic / safehold |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        digits = 2 if row["unit"] == "s" else 0
        lines.append(
            f"| {row['measure']} | {row['safehold']:.{digits}f} {row['unit']} | "
            f"{row['restic']:.{digits}f} {row['unit']} | {row['ratio']:.2f} |"
        )
    return "\n".join(lines)


def per_round_table(rounds: list[dict[str, Prune]]) -> str:
    lines = [
        "| round | tool | wall | CPU | peak RSS | size after |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for number, result in enumerate(rounds, 1):
        for tool in ("safehold", "restic"):
            one = result[tool]
            lines.append(
                f"| {number} | {tool} | {one.measurement.seconds:.2f} s"
                f"{' (!)' if one.disturbed else ''} | {one.measurement.cpu_seconds:.2f} s | "
                f"{one.measurement.peak_rss / 1e6:.0f} MB | {one.repo_bytes_after / 1e6:.0f} MB |"
            )
    return "\n".join(lines)


def report(
    args: argparse.Namespace,
    command_line: str,
    env: dict,
    facts: dict,
    rounds: list[dict[str, Prune]],
) -> dict:
    rows = summary_rows(rounds)
    data = env["data"]
    title = f"prune: safehold vs restic, medians of {len(rounds)} alternating rounds"
    run.print_header(title, command_line, env)
    print(
        f"Data: {data['files']} files, {data['bytes'] / 1e9:.2f} GB "
        f"(scale {args.size_gb} GB, seed {args.seed}); 4 backups (original, three different "
        f"1 % changes, the last without every {REMOVED_SHARE}th small file), "
        "`forget --keep-last 1`, then `prune` with each tool's defaults (max unused 5 %), "
        "from a `cp -a` copy of the same prepared repository every round. Warm page cache.  "
    )
    for name in ("safehold", "restic"):
        one = facts[name]
        print(
            f"{name}: repository {one['bytes_before_forget'] / 1e6:.0f} MB before forget, "
            f"{one['snapshots_after_forget']} snapshot(s) after it  "
        )
    print()
    print(markdown_table(rows))
    print("\nratio = restic / safehold: above 1 means safehold is faster, smaller or leaner.\n")
    print(per_round_table(rounds))
    noisy = sum(one.disturbed for result in rounds for one in result.values())
    if noisy:
        print(f"\nWARNING: {noisy} measurement(s) were disturbed by other processes")
    return {
        "command": command_line,
        "environment": env,
        "prepared": facts,
        "summary": rows,
        "rounds": [{name: asdict(one) for name, one in result.items()} for result in rounds],
    }


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = run.common_arguments(__doc__.split("\n\n")[0], 0.5, DEFAULT_WORKDIR)
    parser.add_argument(
        "--restic", default=shutil.which("restic") or "restic", help="command that runs restic"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # data, two prepared repositories, two working copies: like run.py's estimate.
    command_line, workdir, source, manifest = run.start(args, argv)
    tools = run.make_tools(args, workdir)
    guard = run.QuietGuard(args.quiet_threshold, args.max_wait)
    env = run.environment(tools, manifest)
    facts = prepare(tools, workdir, source, args.seed, os.path.join(workdir, "logs", "prepare.log"))
    rounds = []
    for number in range(args.rounds):
        print(
            f"round {number + 1} of {args.rounds}: order "
            f"{', '.join(tool.name for tool in run.order(tools, number))}",
            flush=True,
        )
        rounds.append(run_round(tools, workdir, number, guard, check=number == 0))
    run.write_json(args.json_out, report(args, command_line, env, facts, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
