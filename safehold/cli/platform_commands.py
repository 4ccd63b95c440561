"""Commands for whole platforms: backup/restore --config, config ..., discover."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

from safehold.cli import render
from safehold.cli.session import passphrase
from safehold.errors import EXIT_PARTIAL, UsageError
from safehold.ops import platform_jobs
from safehold.ops.platform_jobs import (
    BackupOptions,
    CriticalComponentFailed,
    RepositoryAccess,
    load_notified,
)
from safehold.platform.config import (
    ConfigError,
    UnsetVariable,
    load_platform,
    load_yaml,
    validation_errors,
)
from safehold.platform.discover import discover
from safehold.platform.discover import render as render_discovery
from safehold.platform.docs import config_reference
from safehold.platform.restore import PlatformRestore
from safehold.platform.schema import platform_schema
from safehold.repo.repository import Repository
from safehold.repo.snapshots import platform_snapshots, resolve

__all__ = ["CriticalComponentFailed", "access", "open_for_platform"]


def _log(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    quiet = args.quiet or args.json
    return (lambda text: None) if quiet else (lambda text: print(f"  {text}", file=sys.stderr))


def access(args: argparse.Namespace) -> RepositoryAccess:
    """The repository the options name (--repo, else the platform file's, else
    $SAFEHOLD_REPO) and its passphrase (--passphrase-file, $SAFEHOLD_PASSPHRASE, a prompt)."""
    secret_file = argparse.Namespace(passphrase_file=getattr(args, "passphrase_file", None))
    return RepositoryAccess(getattr(args, "repo", None), lambda: passphrase(secret_file))


def open_for_platform(args: argparse.Namespace, location: str | None) -> Repository:
    """Opens the repository of a platform command. Raises UsageError if none is named."""
    return access(args).open(location)


def backup_platform(args: argparse.Namespace) -> int:
    """`safehold backup --config FILE`: ops.platform_jobs.backup_platform, rendered."""
    platform = load_notified(args.config)
    result, copy_problems = platform_jobs.backup_platform(
        platform, access(args), BackupOptions(tags=list(args.tag or []), log=_log(args))
    )
    snapshot = result.snapshot
    if args.json:
        render.print_json(
            {
                "snapshot_id": result.snapshot_id,
                "status": result.status,
                "downtime": snapshot["downtime"],
                "components": snapshot["components"],
            }
        )
    elif not args.quiet:
        print(
            f"snapshot {result.snapshot_id[:8]} saved: platform {platform.name}, "
            f"strategy {platform.strategy}, status {result.status}"
        )
        rows = [
            [
                c.name,
                c.type,
                c.phase,
                c.status,
                render.size(c.bytes),
                f"{c.duration:.1f} s",
                c.error
                or (
                    f"{len(c.errors) + c.errors_more} unreadable"
                    if c.errors or c.errors_more
                    else ""
                ),
            ]
            for c in result.components
        ]
        print(
            render.table(["component", "type", "phase", "status", "size", "time", "problem"], rows)
        )
        if snapshot["downtime"]:
            print(
                f"downtime: {snapshot['downtime']['seconds']:.1f} s "
                f"({', '.join(snapshot['downtime']['stopped'])} stopped)"
            )
    return finish_backup(platform, result, copy_problems)


def finish_backup(platform, result, copy_problems: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Problems on stderr, the notification, and the exit code (or CriticalComponentFailed)."""
    return platform_jobs.finish_backup(
        platform, result, copy_problems, lambda line: print(line, file=sys.stderr)
    )


def _confirm(args: argparse.Namespace, steps: list[str]) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            "this restore replaces live data: review it with --dry-run, then run again with --yes"
        )
    print("This restore replaces live data:\n" + "\n".join(f"  - {s}" for s in steps))
    if input("Type 'yes' to go on: ").strip() != "yes":
        raise UsageError("restore cancelled: nothing was changed")


def restore_platform(args: argparse.Namespace) -> int:
    platform = load_platform(args.config)
    with open_for_platform(args, platform.repository) as repository, repository.lock():
        repository.use_tree_cache = True  # verified cached trees are the snapshot's trees
        snapshots = platform_snapshots(repository, platform.name)
        spec = args.source or "latest"
        if spec == "latest":
            if not snapshots:
                raise UsageError(f"no snapshot of platform {platform.name} in this repository")
            snapshot = snapshots[-1]
        else:
            snapshot = resolve(repository, spec)
            if snapshot.get("platform") != platform.name:
                raise UsageError(
                    f"snapshot {snapshot['id'][:8]} is not of platform {platform.name}: "
                    "give a snapshot of this platform (safehold snapshots --json)"
                )
        restore = PlatformRestore(
            repository,
            platform,
            snapshot,
            component=args.component,
            to_database=args.to_database,
            database=args.database,
            target=args.target,
            kind_options={
                "to_bucket": args.to_bucket,
                "to_endpoint": args.to_endpoint,
                "delete_extra": args.delete_extra,
            },
            log=_log(args),
        )
        steps = restore.plan()
        if args.dry_run:
            print(f"restore of snapshot {snapshot['id'][:8]} would:")
            print("\n".join(f"  {number}. {step}" for number, step in enumerate(steps, 1)))
            return 0
        if restore.live:
            _confirm(args, steps)
        outcome = restore.run()
    for original, aside in outcome.moved_aside:
        print(f"safehold: the previous {original} is kept at {aside}", file=sys.stderr)
    for problem in outcome.problems + outcome.row_mismatches:
        print(f"safehold: {problem}", file=sys.stderr)
    for note in outcome.notes:
        print(f"safehold: note: {note}", file=sys.stderr)
    if args.json:
        render.print_json(
            {
                "snapshot_id": snapshot["id"],
                "restored": outcome.restored,
                "moved_aside": outcome.moved_aside,
                "problems": outcome.problems,
                "row_mismatches": outcome.row_mismatches,
            }
        )
    elif not args.quiet:
        print(f"restored {', '.join(outcome.restored)} from snapshot {snapshot['id'][:8]}")
    return EXIT_PARTIAL if outcome.problems or outcome.row_mismatches else 0


def config_validate(args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read it: {error.strerror}", file=args.file) from None
    problems = validation_errors(load_yaml(text, args.file))
    unset = None
    if not problems:
        try:
            load_platform(args.file)  # resolves ${VAR} and password files too
        except UnsetVariable as error:
            unset = error.fields["message"]
    for problem in problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    if problems:
        raise ConfigError(f"{len(problems)} problem(s), listed above", file=args.file)
    print(f"{args.file}: valid")
    if unset:
        print(f"note: {unset}: set it (or env_file) before backing up", file=sys.stderr)
    return 0


def config_schema(args: argparse.Namespace) -> int:
    json.dump(platform_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def config_docs(args: argparse.Namespace) -> int:
    sys.stdout.write(config_reference())
    return 0


def config_new(args: argparse.Namespace) -> int:
    text = resources.files("safehold.platform").joinpath(f"presets/{args.preset}.yaml").read_text()
    _write_or_print(text, args.output)
    return 0


def discover_command(args: argparse.Namespace) -> int:
    """`safehold discover COMPOSE_FILE` or `safehold discover --kubernetes`."""
    if args.kubernetes == bool(args.compose_file):
        raise UsageError("give a compose file, or --kubernetes (not both)")
    if args.kubernetes:
        from safehold.platform import discover_kubernetes

        files = [name for group in args.from_json for name in group]
        found = discover_kubernetes.discover_cluster(files, args.namespace, args.kubectl)
        text = render_discovery(found, "--kubernetes")
    else:
        found = discover(args.compose_file)
        text = render_discovery(found, args.compose_file)
    _write_or_print(text, args.output)
    for note in found.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _write_or_print(text: str, output: str | None) -> None:
    if not output:
        sys.stdout.write(text)
        return
    path = Path(output)
    if path.exists():
        raise UsageError(f"{output} exists: refusing to overwrite it; choose another -o")
    path.write_text(text, encoding="utf-8")
    print(f"wrote {output}", file=sys.stderr)
