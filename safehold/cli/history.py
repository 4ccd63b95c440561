"""The commands that look into the history: find, dump, stats, tag (thin: ops/ does the work).

Their options are declared in cli/history_args.py (the parser must not import this module).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import BinaryIO

from safehold.archive import tree
from safehold.archive.entries import DIR, display_name
from safehold.cli import render
from safehold.cli.session import open_repository
from safehold.errors import IntegrityError, UsageError
from safehold.repo.snapshots import list_snapshots, resolve, split_spec


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet and not args.json:
        print(text)


# ------------------------------------------------------------------------------ find


def find_command(args: argparse.Namespace) -> int:
    """`safehold find PATTERN...`: one line per match (or a JSON array, written as found)."""
    from safehold.ops.find import Pattern, find, parse_date

    patterns = [Pattern(text) for text in args.patterns]
    newer = parse_date(args.newer) if args.newer else None
    older = parse_date(args.older) if args.older else None
    damaged: list[str] = []

    def on_error(snapshot: dict, path: bytes, error: IntegrityError) -> None:
        damaged.append(f"{snapshot['id'][:8]}:{display_name(path)}")
        print(f"safehold: skipped damaged {damaged[-1]}: {error}", file=sys.stderr)

    with open_repository(args) as repository:
        repository.use_tree_cache = True  # trees from the local cache where it has them
        if args.snapshot:
            chosen = [resolve(repository, spec) for spec in args.snapshot]
        else:
            chosen = list_snapshots(repository, host=args.host, tags=args.tag or None)
        matches = find(repository, chosen, patterns, newer=newer, older=older, on_error=on_error)
        count = _print_matches(args, matches)
    _say(args, f"{count} match(es) in {len(chosen)} snapshot(s)")
    if damaged:
        raise IntegrityError(f"{len(damaged)} damaged tree(s) were skipped (listed above)")
    return 0


def _print_matches(args: argparse.Namespace, matches: Iterator) -> int:
    """Print each match as it comes; JSON as an array written element by element."""
    if args.json:
        return render.print_json_array(_match_record(match) for match in matches)
    count = 0
    for match in matches:
        entry = match.entry
        suffix = "/" if entry["type"] == DIR else ""
        print(
            f"{match.snapshot['id'][:8]}  {render.timestamp(match.snapshot['time'])}  "
            f"{entry.get('size', 0):>12}  {render.timestamp(entry['mtime'] / 1e9)}  "
            f"{display_name(match.path)}{suffix}"
        )
        count += 1
    return count


def _match_record(match) -> dict:  # type: ignore[no-untyped-def]
    entry = match.entry
    return {
        "snapshot_id": match.snapshot["id"],
        "snapshot_time": render.iso(match.snapshot["time"]),
        "path": display_name(match.path),
        "type": entry["type"],
        "size": entry.get("size", 0),
        "mtime": render.iso(entry["mtime"] / 1e9),
        "mtime_ns": entry["mtime"],
        "mode": entry.get("mode", 0),
        "uid": entry.get("uid"),
        "gid": entry.get("gid"),
    }


# ------------------------------------------------------------------------------ dump


@contextlib.contextmanager
def _output(args: argparse.Namespace) -> Iterator[BinaryIO]:
    """-o FILE (created, never replaced) or stdout, which must not be a terminal."""
    from safehold.ops.dump import is_binary_terminal

    if args.output:
        try:
            handle = open(args.output, "xb")  # noqa: SIM115
        except FileExistsError:
            raise UsageError(f"{args.output} exists: dump never replaces a file") from None
        except OSError as error:
            raise UsageError(f"cannot write {args.output}: {error.strerror}") from None
        with handle:
            yield handle
        return
    stdout = sys.stdout.buffer
    if is_binary_terminal(stdout):
        raise UsageError(
            "refusing to write a dump to a terminal: redirect stdout (> FILE, | tar -x) "
            "or pass -o FILE"
        )
    sys.stdout.flush()
    yield stdout
    stdout.flush()


def dump_command(args: argparse.Namespace) -> int:
    """`safehold dump SNAPSHOT:PATH`: a file's bytes, or a tar of a directory."""
    from safehold.ops.dump import dump

    spec, path = split_spec(args.target)
    with open_repository(args) as repository:
        repository.use_tree_cache = True
        snapshot = resolve(repository, spec)
        entry = tree.find(repository, snapshot, path)
        with _output(args) as output:
            try:
                kind = dump(repository, entry, output)
            except BrokenPipeError:  # | head: the reader has what it wanted
                with contextlib.suppress(OSError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
    if args.output:
        _say(args, f"wrote {'a tar of ' if kind == 'tar' else ''}{path} to {args.output}")
    return 0


# ------------------------------------------------------------------------------ tag


def tag_command(args: argparse.Namespace) -> int:
    """`safehold tag --add|--remove|--set TAG SNAPSHOT...`: old id -> new id per snapshot."""
    from safehold.ops.tag import retag, split_tags

    add, remove = split_tags(args.add) or [], split_tags(args.remove) or []
    replace = split_tags(args.set)
    with open_repository(args) as repository:
        results = retag(
            repository, args.snapshots, add=add, remove=remove, replace=replace, wait=args.lock_wait
        )
    if args.json:
        render.print_json(
            [
                {"old_id": r.old_id, "new_id": r.new_id, "tags": r.tags, "changed": r.changed}
                for r in results
            ]
        )
        return 0
    for result in results:
        shown = ",".join(result.tags) or "(none)"
        if result.changed:
            _say(args, f"snapshot {result.old_id[:8]} is now {result.new_id[:8]}, tags {shown}")
        else:
            _say(args, f"snapshot {result.old_id[:8]} unchanged, tags {shown}")
    return 0


# ------------------------------------------------------------------------------ stats


def stats_command(args: argparse.Namespace) -> int:
    """`safehold stats [SNAPSHOT...]`: per snapshot, per component, per day, and in total."""
    from safehold.ops.stats import compute_stats

    with open_repository(args) as repository:
        repository.use_tree_cache = True  # trees from the local cache where it has them
        chosen = {resolve(repository, spec)["id"] for spec in args.snapshots}
        stats = compute_stats(repository)
    rows = [s for s in stats.snapshots if not chosen or s.snapshot["id"] in chosen]
    if args.json:
        render.print_json(
            {
                "snapshots": [
                    {
                        "id": s.snapshot["id"],
                        "time": render.iso(s.snapshot["time"]),
                        "hostname": s.snapshot.get("hostname"),
                        "platform": s.snapshot.get("platform"),
                        "size": s.size,
                        "unique": s.unique,
                        "added": s.added,
                    }
                    for s in rows
                ],
                "groups": [
                    {
                        "platform": g.platform,
                        "name": g.name,
                        "snapshots": g.snapshots,
                        "size": g.size,
                        "stored": g.stored,
                        "unique": g.unique,
                    }
                    for g in stats.groups
                ],
                "growth_per_day": [
                    {"day": day, "added": added, "snapshots": count}
                    for day, added, count in stats.growth
                ],
                "stored": stats.stored,
                "unreferenced": stats.unreferenced,
                "blobs": stats.blobs,
                "packs": stats.packs,
                "pack_bytes": stats.pack_bytes,
            }
        )
        return 0
    if args.quiet:
        return 0
    size = render.size
    print(
        render.table(
            ["id", "time", "host", "what", "size", "unique", "added"],
            [
                [
                    s.snapshot["id"][:8],
                    render.timestamp(s.snapshot["time"]),
                    s.snapshot.get("hostname") or "-",
                    f"platform {s.snapshot['platform']}"
                    if s.snapshot.get("platform")
                    else ", ".join(s.snapshot.get("paths") or []),
                    size(s.size),
                    size(s.unique),
                    size(s.added),
                ]
                for s in rows
            ],
        )
    )
    print()
    print(
        render.table(
            ["platform", "component / files", "snapshots", "size (newest)", "stored", "unique"],
            [
                [g.platform or "-", g.name, str(g.snapshots), size(g.size), size(g.stored)]
                + [size(g.unique)]
                for g in stats.groups
            ],
        )
    )
    print()
    print(
        render.table(
            ["day", "added", "snapshots"],
            [[day, size(added), str(count)] for day, added, count in stats.growth],
        )
    )
    print(
        f"\nstored: {size(stats.stored)} in {stats.blobs} blobs needed by "
        f"{len(stats.snapshots)} snapshot(s); {size(stats.unreferenced)} no snapshot needs "
        f"(prune frees it); packs: {stats.packs}, {size(stats.pack_bytes)}"
    )
    return 0
