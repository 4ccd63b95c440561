"""The prune command: options, the plan in words or JSON. Options are declared in main.py."""

from __future__ import annotations

import argparse
import re

from safehold.cli import render
from safehold.cli.session import open_repository
from safehold.errors import UsageError
from safehold.ops.prune import PrunePlan, parse_keep_young, prune
from safehold.repo.repository import Repository

UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, option: str) -> int:
    """'500M', '2G', '1048576', '1.5g' (binary units, optional 'B'/'iB') -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise UsageError(f"{option} takes a size like 500M or 2G, not {text!r}")
    return int(float(match[1]) * UNITS[match[2]])


def parse_max_unused(text: str) -> float | int:
    """'5%' -> 0.05 (share of the data), 'unlimited' -> 1.0, a size -> bytes."""
    if text.strip().lower() == "unlimited":
        return 1.0
    if text.strip().endswith("%"):
        try:
            percent = float(text.strip()[:-1])
        except ValueError:
            percent = -1.0
        if not 0 <= percent <= 100:
            raise UsageError(f"--max-unused takes 0% to 100%, a size or 'unlimited', not {text!r}")
        return percent / 100
    return parse_size(text, "--max-unused")


def prune_repository(repository: Repository, args: argparse.Namespace, *, show: bool) -> PrunePlan:
    """Run prune with the command line's options; prints the plan before changing anything."""
    max_repack = args.max_repack_size
    return prune(
        repository,
        max_unused=parse_max_unused(args.max_unused),
        max_repack_size=parse_size(max_repack, "--max-repack-size") if max_repack else None,
        dry_run=args.dry_run,
        wait=args.lock_wait,
        keep_young=parse_keep_young(args.keep_young),
        before_changes=(lambda plan: print(describe_plan(plan))) if show else None,
    )


def prune_command(args: argparse.Namespace) -> int:
    """`safehold prune`: free what no snapshot needs; --dry-run only shows it."""
    parse_max_unused(args.max_unused)  # usage errors before the passphrase
    parse_keep_young(args.keep_young)
    if args.max_repack_size:
        parse_size(args.max_repack_size, "--max-repack-size")
    show = not args.json and not args.quiet
    with open_repository(args) as repository:
        plan = prune_repository(repository, args, show=show)
    if args.json:
        render.print_json(plan.as_dict())
    elif show:
        if plan.dry_run:
            print(describe_plan(plan))
        print(summary(plan))
    return 0


def describe_plan(plan: PrunePlan) -> str:
    """What prune found and will do, in a few lines."""
    size = render.size
    return "\n".join(
        [
            f"{plan.snapshots} snapshot(s) use {plan.blobs_used} blob(s), "
            f"{size(plan.bytes_used)} of {size(plan.bytes_total)} in {plan.packs_total} pack(s)",
            f"unused: {size(plan.bytes_unused)}",
            f"to delete: {len(plan.delete)} unused pack(s) and {len(plan.unindexed)} pack(s) "
            f"no index lists, {size(plan.bytes_delete)}",
            f"to repack: {len(plan.repack)} pack(s), {size(plan.bytes_repack)}, "
            f"keeping {size(plan.bytes_repack_used)} of them",
            f"unused afterwards: {size(plan.bytes_unused_after)}",
            *(
                [
                    f"kept: {len(plan.young)} pack(s) written less than "
                    f"{plan.keep_young / 3600:g}h ago, {size(plan.bytes_young)} (--keep-young)"
                ]
                if plan.young
                else []
            ),
            *(
                [
                    f"temp files of interrupted writes: {len(plan.temporaries)}, "
                    f"{size(plan.bytes_temporaries)}"
                ]
                if plan.temporaries
                else []
            ),
        ]
    )


def summary(plan: PrunePlan) -> str:
    """The last line: what was done, or that a dry run changed nothing."""
    size = render.size
    if plan.dry_run:
        freed = plan.bytes_delete + plan.bytes_repack - plan.bytes_repack_used
        return f"dry run: about {size(freed)} would be freed; nothing was changed"
    done = plan.done
    trimmed = (
        f"; removed {done['cached_trees_removed']} tree(s) no snapshot needs "
        f"({size(done['cached_tree_bytes_removed'])}) from the local cache"
        if done.get("cached_trees_removed")
        else ""
    )
    if not plan.changes:
        return "nothing to prune; nothing was changed in the repository" + trimmed
    freed = done["bytes_deleted"] - done["bytes_written"]
    return (
        f"deleted {done['packs_deleted']} pack(s), wrote {done['packs_written']} "
        f"({done['blobs_repacked']} blob(s) repacked) and {done['index_files_written']} "
        f"index file(s) replacing {done['index_files_deleted']}; freed {size(freed)}, "
        f"{size(plan.bytes_unused_after)} still unused"
        + (
            f"; removed {done['temporaries_deleted']} temp file(s) of interrupted writes"
            if done.get("temporaries_deleted")
            else ""
        )
        + trimmed
    )
