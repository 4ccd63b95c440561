"""safehold metrics (Prometheus text format) and safehold report: the state of platforms.

The numbers come from safehold/ops/status.py; docs/operations.md "Monitoring and reports".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from safehold.cli import render
from safehold.cli.platform_commands import access
from safehold.errors import EXIT_PARTIAL, UsageError
from safehold.localfile import write_atomically
from safehold.ops.platform_jobs import collect_status
from safehold.ops.status import (
    Policy,
    human_duration,
    metrics_text,
    parse_interval,
)
from safehold.platform.config import Platform, load_platform

clock = time.time  # tests move it


def _interval(text: str, option: str) -> float:
    try:
        return parse_interval(text)
    except ValueError as error:
        raise UsageError(f"{option}: {error}") from None


def collect(args: argparse.Namespace, policy: Policy, now: float) -> tuple[list[dict], dict]:
    """(the status of each platform asked for, the repository totals)."""
    platform = load_platform(args.config) if args.config else None
    state_dir = getattr(args, "state_dir", None)
    return collect_status(
        platform, access(args), Path(state_dir) if state_dir else None, policy, now
    )


def policy_for(
    platform: Platform | None,
    expect_every: str | None,
    drill_every: str | None,
    failures: int,
    now: float,
) -> Policy:
    """The report's expectations: the options when given, else the platform's schedule
    (the longest gap between its next runs), else a backup a day and a drill a week."""
    from safehold.ops.schedule import Schedule

    schedule = Schedule.from_section(platform.schedule if platform else None)
    expect = (
        _interval(expect_every, "--expect-every")
        if expect_every
        else schedule.interval("backup", now) or Policy.expect_every
    )
    drill = (
        _interval(drill_every, "--drill-every")
        if drill_every
        else schedule.interval("drill", now) or Policy.drill_every
    )
    return Policy(expect, drill, failures, schedule.interval("check", now))


def metrics_command(args: argparse.Namespace) -> int:
    now = clock()
    platform = load_platform(args.config) if args.config else None
    statuses, totals = collect(args, policy_for(platform, None, None, 3, now), now)
    text = metrics_text(statuses, totals)
    if not args.output:
        sys.stdout.write(text)
        return 0
    write_atomically(Path(args.output), text, mode=0o644, sync=True)
    return 0


def report_command(args: argparse.Namespace) -> int:
    if args.failures < 1:
        raise UsageError("--failures: give a number of backups, at least 1")
    now = clock()
    platform = load_platform(args.config) if args.config else None
    policy = policy_for(platform, args.expect_every, args.drill_every, args.failures, now)
    statuses, totals = collect(args, policy, now)
    warnings = [w for status in statuses for w in status["warnings"]]
    if args.json:
        render.print_json({"time": now, "platforms": statuses, "repository": totals})
    elif not args.quiet:
        for status in statuses:
            _print_platform(status)
        ratio = totals["dedup_ratio"]
        print(
            f"repository: {totals['snapshots']} snapshot(s), "
            f"{render.size(totals['logical_bytes'])} backed up, "
            f"{render.size(totals['stored_bytes'])} stored"
            + (f", dedup ratio {ratio:.2f}" if ratio else "")
        )
        print(f"{len(warnings)} warning(s)" if warnings else "no warnings")
    for warning in warnings:
        print(f"safehold: warning: {warning['message']}", file=sys.stderr)
    return EXIT_PARTIAL if warnings else 0


def _age(view: dict | None) -> str:
    if view is None:
        return "never"
    return f"{render.timestamp(view['time'])} ({human_duration(max(view['age_seconds'], 0))} ago)"


def _growth(growth: dict | None) -> str:
    if growth is None:
        return ""
    sign = "+" if growth["bytes"] >= 0 else "-"
    text = f"{sign}{render.size(abs(growth['bytes']))}"
    return text + (f" ({growth['percent']:+.1f}%)" if growth["percent"] is not None else "")


def _print_platform(status: dict) -> None:
    print(f"platform {status['platform']}: {status['snapshots']} snapshot(s)")
    last = status["last_backup"]
    if last:
        print(f"  last backup: {_age(last)}, status {last['status']}")
        downtime = f"{last['downtime_seconds']:.1f} s" if last["stopped"] else "none"
        print(f"  downtime of the last backup: {downtime}")
    good = status["last_good"]
    if good:
        print(
            f"  last good backup: {_age(good)}, "
            f"{render.size(good['bytes'])} {_growth(good['growth'])}".rstrip()
        )
    drill = status["drill"]
    if drill:
        print(
            f"  last drill: {_age(drill)}, {drill['status']}, "
            f"estimated restore time (RTO) {human_duration(drill['rto_seconds'])}"
        )
    else:
        print("  last drill: never")
    checked = status.get("check")
    if checked:
        subset = (
            f", read-data subset {checked['read_data_subset']}"
            if checked["read_data_subset"]
            else ""
        )
        print(
            f"  last check (recorded here): {_age(checked)}, {checked['status']}"
            + (f", {checked['errors']} problem(s)" if checked["errors"] else "")
            + subset
        )
    rows = [
        [
            c["name"],
            c["type"],
            c["last_backup"]["status"] or "",
            _age(c["last_good"]),
            render.size(c["last_good"]["bytes"]) if c["last_good"] else "",
            _growth(c["last_good"]["growth"]) if c["last_good"] else "",
            c["drill"]["status"] if c["drill"] else "",
            human_duration(c["drill"]["restore_seconds"]) if c["drill"] else "",
        ]
        for c in status["components"]
    ]
    if rows:
        print(
            render.table(
                ["component", "type", "last", "last good", "size", "growth", "drill", "restore"],
                rows,
            )
        )
