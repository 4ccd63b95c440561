"""The forget command: policy from --keep-* options and/or a platform file, tables or JSON.

Its options are declared in main.py (the parser must not import this module).
"""

from __future__ import annotations

import argparse
import time

from safehold.cli import render
from safehold.cli.session import open_repository
from safehold.ops.forget import forget
from safehold.ops.retention import COUNT_KEYS, Decision, Group, parse_group_by, require_policy


def forget_command(args: argparse.Namespace) -> int:
    """`safehold forget`: decide, show, and (without --dry-run) delete snapshot objects."""
    if args.prune:  # usage errors before anything is deleted
        from safehold.cli.prune import parse_keep_young, parse_max_unused, parse_size

        parse_max_unused(args.max_unused)
        parse_keep_young(args.keep_young)
        if args.max_repack_size:
            parse_size(args.max_repack_size, "--max-repack-size")
    platform = None
    if args.config:  # imported on use, like the other platform commands (YAML, JSON Schema)
        from safehold.platform.config import load_platform

        platform = load_platform(args.config)
    settings = dict(platform.retention) if platform else {}
    group_by = settings.pop("group_by", None)
    for key in COUNT_KEYS + ("keep_within",):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.keep_tag is not None:
        settings["keep_tags"] = args.keep_tag
    if args.group_by is not None:
        group_by = args.group_by
    policy = require_policy(settings)
    fields = parse_group_by(group_by)
    if platform:
        from safehold.cli.platform_commands import open_for_platform

        repository = open_for_platform(args, platform.repository)
    else:
        repository = open_repository(args)
    show = not args.json and not args.quiet
    with repository:
        result = forget(
            repository,
            policy,
            now=time.time(),
            group_by=fields,
            host=args.host,
            tags=args.tag,
            platform=platform.name if platform else None,
            dry_run=args.dry_run,
            wait=args.lock_wait,
            before_delete=(lambda decision: _print_decision(decision, policy.describe()))
            if show
            else None,
        )
        pruned = None
        if args.prune and not args.dry_run:  # a second lock: prune decides afresh
            from safehold.cli.prune import prune_repository

            pruned = prune_repository(repository, args, show=False)
    decision = result.decision
    if args.json:
        render.print_json(
            {
                "dry_run": result.dry_run,
                "policy": policy.as_dict(),
                "group_by": list(fields),
                "groups": [_group_json(group) for group in decision.groups],
                "removed": result.removed,
            }
            | ({"prune": pruned.as_dict()} if pruned else {})
        )
    elif show:
        if result.dry_run:
            _print_decision(decision, policy.describe())
            print(
                f"dry run: {len(decision.remove)} snapshot(s) would be removed, "
                f"{len(decision.keep)} kept; nothing was changed"
            )
        else:
            print(
                f"removed {len(result.removed)} snapshot(s), kept {len(decision.keep)}; "
                + ("pruned" if pruned else "their data stays in the repository until prune")
            )
        if pruned:
            from safehold.cli.prune import describe_plan, summary

            print(describe_plan(pruned))
            print(summary(pruned))
    return 0


def _print_decision(decision: Decision, policy: str) -> None:
    print(f"policy: {policy}")
    for group in decision.groups:
        print(f"\n{group.describe()}:")
        rows = [_row(s) + [", ".join(group.reasons[s["id"]])] for s in group.keep]
        print(f"keep {len(group.keep)} snapshot(s):")
        print(render.table(["id", "time", "host", "tags", "paths", "reasons"], rows))
        if group.remove:
            print(f"remove {len(group.remove)} snapshot(s):")
            print(render.table(["id", "time", "host", "tags", "paths"], _rows(group.remove)))
    print()


def _row(snapshot: dict) -> list[str]:
    return [
        snapshot["id"][:8],
        render.timestamp(snapshot["time"]),
        snapshot.get("hostname") or "",
        ",".join(snapshot.get("tags") or []),
        ", ".join(snapshot.get("paths") or []),
    ]


def _rows(snapshots: list[dict]) -> list[list[str]]:
    return [_row(snapshot) for snapshot in snapshots]


def _snapshot_json(snapshot: dict, reasons: list[str] | None) -> dict:
    item = {
        "id": snapshot["id"],
        "time": snapshot["time"],
        "time_iso": render.iso(snapshot["time"]),
        "hostname": snapshot.get("hostname"),
        "tags": snapshot.get("tags") or [],
        "paths": snapshot.get("paths") or [],
        "platform": snapshot.get("platform"),
    }
    return item | ({"reasons": reasons} if reasons is not None else {})


def _group_json(group: Group) -> dict:
    return {
        "group": group.key,
        "keep": [_snapshot_json(s, group.reasons[s["id"]]) for s in group.keep],
        "remove": [_snapshot_json(s, None) for s in group.remove],
    }
