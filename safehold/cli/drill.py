"""The drill command: restore a platform snapshot into scratch space, check it, time it.

Its options are declared in main.py (the parser must not import this module).
"""

from __future__ import annotations

import argparse
import sys

from safehold.cli import render
from safehold.cli.platform_commands import access
from safehold.ops.drill import DrillResult
from safehold.ops.platform_jobs import DrillOptions, drill_platform, finish_drill
from safehold.platform.config import load_platform
from safehold.sources import DRILL_READ_BACK, kinds


def _log(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    if args.quiet or args.json:
        return lambda text: None
    return lambda text: print(f"  {text}", file=sys.stderr)


def drill_command(args: argparse.Namespace) -> int:
    """`safehold drill --config FILE [SNAPSHOT|--random-older]`: exit 0 if everything restored
    and checked out, DrillFailed (25) otherwise; the result is stored in the repository."""
    platform = load_platform(args.config)
    options = DrillOptions(args.snapshot, args.random_older, args.scratch, log=_log(args))
    run = drill_platform(platform, access(args), options)
    _report_problems(run.result)
    if args.json:
        render.print_json({**run.record, "notes": run.result.notes, "stored_as": run.stored})
    elif not args.quiet:
        _print_summary(run.result, run.record, run.stored)
    finish_drill(platform, run)  # notifies; DrillFailed if it failed
    return 0


def _report_problems(result: DrillResult) -> None:
    for component in result.components:
        for failure in component.failures:
            print(f"safehold: drill: {component.name}: {failure}", file=sys.stderr)
        for warning in component.warnings:
            print(f"safehold: warning: {component.name}: {warning}", file=sys.stderr)
        for note in component.notes:
            print(f"safehold: note: {component.name}: {note}", file=sys.stderr)
    for check in result.checks:
        if check["status"] == "failed":
            print(
                f"safehold: drill: check {check['name']!r} ({check['component']}): "
                f"{check['message']}",
                file=sys.stderr,
            )
    for note in result.notes:
        print(f"safehold: note: {note}", file=sys.stderr)


def _details(component) -> str:  # type: ignore[no-untyped-def]
    kind = kinds().get(component.type)
    if kind is None or kind.module is None:  # files, objects
        return f"{component.files} files, {render.size(component.bytes)} read back"
    if kind.drill == DRILL_READ_BACK:
        return f"dump of {render.size(component.bytes)} read back"
    tables = sum(d["tables"] for d in component.databases.values())
    rows = sum(d["rows"] for d in component.databases.values())
    return f"{len(component.databases)} database(s), {tables} tables, {rows} rows"


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"


def _print_summary(result: DrillResult, record: dict, stored: str | None) -> None:
    verdict = "FAILED" if result.failed else "PASSED"
    print(
        f"drill of snapshot {result.snapshot[:8]} (platform {result.platform}, backed up "
        f"{render.timestamp(result.snapshot_time)}): {verdict}"
    )
    rows = [
        [
            c.name,
            c.type,
            c.status,
            _seconds(c.restore_seconds),
            _seconds(c.verify_seconds),
            c.restored_into,
            _details(c),
        ]
        for c in result.components
    ]
    headers = ["component", "type", "result", "restore", "verify", "restored into", "details"]
    print(render.table(headers, rows))
    if result.checks:
        checks = [
            [c["name"], c["component"], c["status"], c["value"] or "", c["expected"] or ""]
            for c in result.checks
        ]
        print(render.table(["check", "component", "result", "value", "expected"], checks))
    print(
        f"estimated restore time (RTO): {_seconds(record['rto_seconds'])} "
        f"(the drill took {_seconds(result.duration)})"
    )
    if stored:
        print(f"drill result stored as {stored[:15]}")
