"""The repair commands: `repair index` and `repair snapshots`. Options are declared in main.py."""

from __future__ import annotations

import argparse
import sys

from safehold.cli import render
from safehold.cli.session import open_repository
from safehold.errors import IntegrityError
from safehold.ops.repair import repair_index, repair_snapshots


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet and not args.json:
        print(text)


def repair_index_command(args: argparse.Namespace) -> int:
    """`safehold repair index`: rebuild the index files from the pack headers."""
    with open_repository(args) as repository:
        result = repair_index(repository, dry_run=args.dry_run, wait=args.lock_wait)
    if args.json:
        render.print_json(result.as_dict())
    for pack, reason in result.damaged:
        print(f"error: pack {pack} is damaged, left out and kept: {reason}", file=sys.stderr)
    if result.dry_run:
        _say(
            args,
            f"dry run: read {result.packs_read} pack(s) holding {result.blobs} blob(s); "
            f"would write new index files replacing {result.index_files_old}; "
            "nothing was changed",
        )
    else:
        _say(
            args,
            f"read {result.packs_read} pack(s) holding {result.blobs} blob(s); wrote "
            f"{result.index_files_written} index file(s) replacing {result.index_files_deleted}",
        )
    if result.damaged:
        raise IntegrityError(
            f"{len(result.damaged)} damaged pack(s) were left out of the index (listed above); "
            "run 'safehold repair snapshots' to drop what needed them from the snapshots"
        )
    return 0


def repair_snapshots_command(args: argparse.Namespace) -> int:
    """`safehold repair snapshots`: replace damaged snapshots by copies without the damage."""
    with open_repository(args) as repository:
        result = repair_snapshots(repository, dry_run=args.dry_run, wait=args.lock_wait)
    if args.json:
        render.print_json(result.as_dict())
    for item in result.repaired:
        target = "would be replaced" if item.new_id is None else f"replaced by {item.new_id[:8]}"
        _say(args, f"snapshot {item.old_id[:8]} {target}; dropped {len(item.dropped)} path(s):")
        for path in item.dropped:
            _say(args, "  " + path.decode("utf-8", "backslashreplace"))
    for snapshot_id in result.from_cache:
        done = "would be written" if result.dry_run else "written"
        _say(args, f"snapshot {snapshot_id[:8]} cannot be read: {done} again from the local cache")
    for snapshot_id in result.removed:
        done = "would be removed" if result.dry_run else "removed"
        _say(
            args,
            f"snapshot {snapshot_id[:8]} cannot be read and no intact copy exists here: {done} "
            "(nothing in it could be recovered)",
        )
    verb = "would be replaced" if result.dry_run else "replaced"
    _say(
        args,
        f"{result.snapshots} snapshot(s) read, {len(result.repaired)} {verb}"
        + ("; dry run: nothing was changed" if result.dry_run else ""),
    )
    return 0
