"""The commands that work on snapshots: init, backup, snapshots, ls, restore, diff, check."""

from __future__ import annotations

import argparse
import itertools
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator

from safehold.archive import tree
from safehold.archive.backup import backup_paths
from safehold.archive.entries import DIR, display_name
from safehold.archive.excludes import Excludes
from safehold.cli import render
from safehold.cli.session import open_repository, passphrase, repository_location
from safehold.errors import EXIT_PARTIAL, IntegrityError, UsageError
from safehold.repo.repository import Repository
from safehold.repo.snapshots import list_snapshots, resolve, split_spec


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet and not args.json:
        print(text)


def init(args: argparse.Namespace) -> int:
    location = repository_location(args)
    repository = Repository.init(
        location, passphrase(args, confirm=True), no_delete=bool(getattr(args, "no_delete", False))
    )
    repository.close()
    if args.json:
        render.print_json({"location": location, "id": repository.config["id"]})
    _say(
        args,
        f"created repository {repository.config['id'][:8]} at {location}\n"
        "keep the passphrase safe: without it the data cannot be read",
    )
    return 0


def _scan_total(paths: list[str], bar: render.ProgressBar) -> None:
    total = 0
    for path in paths:
        for root, _dirs, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
    bar.set_total(total)


def backup(args: argparse.Namespace) -> int:
    if args.config:
        if args.paths:
            raise UsageError("give either PATHs or --config, not both")
        from safehold.cli import platform_commands

        return platform_commands.backup_platform(args)
    if not args.paths:
        raise UsageError("nothing to back up: give PATHs, or --config PLATFORM_FILE")
    patterns = list(args.exclude)
    for path in args.exclude_file:
        patterns += Excludes.from_file(path)
    excludes = Excludes(patterns, caches=args.exclude_caches)
    bar = render.ProgressBar("backup", render.interactive() and not args.quiet and not args.json)
    with open_repository(args) as repository, bar.running():
        if bar.enabled:
            threading.Thread(target=_scan_total, args=(args.paths, bar), daemon=True).start()
        result = backup_paths(
            repository,
            args.paths,
            tags=args.tag,
            hostname=args.host,
            excludes=excludes,
            one_file_system=args.one_file_system,
            force=args.force,
            progress=bar.advance,
        )
    summary = result.snapshot["summary"]
    for error in summary["errors"]:
        path = render.printable(error["path"])
        print(f"safehold: could not read {path}: {error['message']}", file=sys.stderr)
    if summary.get("errors_more"):
        print(f"safehold: ... and {summary['errors_more']} more not read", file=sys.stderr)
    for warning in summary["warnings"]:
        path = render.printable(warning["path"])
        print(f"safehold: warning: {path} {warning['message']}", file=sys.stderr)
    if summary.get("warnings_more"):
        print(f"safehold: ... and {summary['warnings_more']} more warnings", file=sys.stderr)
    if args.json:
        render.print_json({"snapshot_id": result.snapshot_id, **summary})
    else:
        _say(
            args,
            (
                f"snapshot {result.snapshot_id[:8]} saved\n"
                f"files: {summary['files_new']} new, {summary['files_changed']} changed, "
                f"{summary['files_unchanged']} unchanged; {summary['dirs']} directories\n"
                f"data: {render.size(summary['bytes_total'])} in the snapshot, "
                f"{render.size(summary['bytes_read'])} read, "
                f"{render.size(summary['bytes_added_raw'])} new "
                f"({render.size(summary['bytes_added_stored'])} stored)\n"
                f"took {summary['duration']:.1f} s"
            ),
        )
    if summary["errors"]:
        print(
            f"safehold: backup saved, but {len(summary['errors']) + summary.get('errors_more', 0)}"
            " file(s) could not be read "
            "(listed above)",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return 0


def _snapshot_row(snapshot: dict) -> list[str]:
    """One line of `safehold snapshots`: a platform snapshot shows its platform, status and
    downtime; a file snapshot its paths."""
    downtime = snapshot.get("downtime")
    return [
        snapshot["id"][:8],
        render.timestamp(snapshot["time"]),
        snapshot["hostname"],
        f"platform {snapshot['platform']}"
        if snapshot.get("platform")
        else ", ".join(snapshot["paths"]),
        snapshot.get("status", "ok" if not snapshot["summary"]["errors"] else "partial"),
        render.size(snapshot["summary"]["bytes_total"]),
        f"{downtime['seconds']:.1f} s" if downtime else "-",
        ",".join(t for t in snapshot.get("tags", []) if not t.startswith("component:")),
    ]


def snapshots(args: argparse.Namespace) -> int:
    with open_repository(args) as repository:
        found = list_snapshots(repository, host=args.host, tags=args.tag or None)
    if args.json:
        render.print_json(
            [
                {key: value for key, value in snapshot.items() if key != "tree"}
                | {"time_iso": render.iso(snapshot["time"])}
                for snapshot in found
            ]
        )
        return 0
    rows = [_snapshot_row(snapshot) for snapshot in found]
    print(render.table(["id", "time", "host", "what", "status", "size", "downtime", "tags"], rows))
    print(f"{len(found)} snapshot(s)")
    return 0


def _mode_string(entry: dict) -> str:
    kinds = {
        "dir": stat.S_IFDIR,
        "file": stat.S_IFREG,
        "symlink": stat.S_IFLNK,
        "fifo": stat.S_IFIFO,
        "chardev": stat.S_IFCHR,
        "blockdev": stat.S_IFBLK,
    }
    return stat.filemode(kinds.get(entry["type"], 0) | entry.get("mode", 0))


def ls(args: argparse.Namespace) -> int:
    """`safehold ls SNAPSHOT[:PATH] [-R]`: printed as the trees are walked, never held whole."""
    spec, path = split_spec(args.target)
    with open_repository(args) as repository:
        repository.use_tree_cache = True  # trees from the local cache where it has them
        snapshot = resolve(repository, spec)
        start = tree.find(repository, snapshot, path)
        base = os.fsencode(path.rstrip("/"))
        listing: Iterator[tuple[bytes, dict]]
        if args.recursive:
            listing = itertools.islice(tree.walk(repository, start, base), 1, None)
        elif start["type"] == DIR:
            listing = (
                (base + b"/" + child["name"], child)
                for child in tree.load_tree(repository, start["subtree"])
            )
        else:
            listing = iter([(base, start)])
        if args.json:
            render.print_json_array(_ls_record(p, e) for p, e in listing)
            return 0
        for entry_path, entry in listing:
            print(_ls_line(entry_path, entry))
    return 0


def _ls_record(path: bytes, entry: dict) -> dict:
    return {
        "path": display_name(path),
        **{k: v for k, v in entry.items() if k not in ("content", "name", "target")},
        **({"target": display_name(entry["target"])} if entry.get("target") else {}),
    }


def _ls_line(path: bytes, entry: dict) -> str:
    owner = f"{entry.get('user') or entry['uid']}/{entry.get('group') or entry['gid']}"
    target = render.printable(os.fsdecode(entry["target"])) if entry.get("target") else ""
    suffix = f" -> {target}" if target else ""
    return (
        f"{_mode_string(entry)} {render.printable(str(owner)):>16} {entry.get('size', 0):>12} "
        f"{render.timestamp(entry['mtime'] / 1e9)} "
        f"{render.printable(os.fsdecode(path))}{suffix}"
    )


def restore(args: argparse.Namespace) -> int:
    from safehold.archive.restorer import Restorer  # not imported by the other commands

    if args.config:
        from safehold.cli import platform_commands

        return platform_commands.restore_platform(args)
    for option in ("component", "database", "to_database", "to_bucket", "to_endpoint"):
        if getattr(args, option):
            raise UsageError(f"--{option.replace('_', '-')} needs --config")
    if not args.source or not args.target:
        raise UsageError("restore needs SNAPSHOT[:PATH] and --target DIR (or --config)")
    spec, path = split_spec(args.source)
    started = time.monotonic()
    bar = render.ProgressBar("restore", render.interactive() and not args.quiet and not args.json)
    with open_repository(args) as repository, repository.lock():
        repository.use_tree_cache = True  # verified cached trees are the snapshot's trees
        snapshot = resolve(repository, spec)
        start = tree.find(repository, snapshot, path)
        restorer = Restorer(
            repository,
            args.target,
            overwrite=args.overwrite,
            includes=args.include,
            excludes=args.exclude,
            progress=bar.advance,
            no_special=args.no_special,
        )
        if bar.enabled and start.get("type") == DIR:
            bar.set_total(snapshot["summary"]["bytes_total"] if path in ("", "/") else 0)
        with bar.running():
            stats = restorer.restore(start, path)
    for damaged in stats.damaged:
        print(
            f"safehold: NOT restored, damaged in the repository: "
            f"{render.printable(damaged['path'])}: {render.printable(damaged['message'])}",
            file=sys.stderr,
        )
    if stats.damaged.more:
        print(
            f"safehold: ... and {stats.damaged.more} more files damaged in the repository",
            file=sys.stderr,
        )
    for error in stats.errors:
        shown = render.printable(error["path"])
        print(f"safehold: could not restore {shown}: {error['message']}", file=sys.stderr)
    if stats.errors.more:
        print(
            f"safehold: ... and {stats.errors.more} more that could not be restored",
            file=sys.stderr,
        )
    if stats.special_skipped:
        print(
            f"safehold: note: {stats.special_skipped} device node(s) not created (--no-special)",
            file=sys.stderr,
        )
    for skipped in stats.skipped_paths:
        print(f"safehold: exists, not overwritten: {render.printable(skipped)}", file=sys.stderr)
    if stats.skipped_unnamed:
        print(
            f"safehold: ... and {stats.skipped_unnamed} more existing paths not overwritten",
            file=sys.stderr,
        )
    if args.json:
        render.print_json(
            {
                "snapshot_id": snapshot["id"],
                "files": stats.files,
                "dirs": stats.dirs,
                "bytes": stats.bytes_written,
                "skipped": stats.skipped,  # how many; the first few:
                "skipped_paths": stats.skipped_paths,
                "present": stats.present,
                "resumed": stats.resumed,
                "processes_lost": stats.processes_lost,
                "errors": stats.errors,  # the first 1,000; then only counted:
                "errors_more": stats.errors.more,
                "damaged": stats.damaged,
                "damaged_more": stats.damaged.more,
            }
        )
    _say(
        args,
        f"restored snapshot {snapshot['id'][:8]}{'' if path in ('', '/') else ':' + path} "
        f"to {args.target}: {stats.files} files, {stats.dirs} directories, "
        f"{render.size(stats.bytes_written)} in {render.elapsed_since(started)}",
    )
    rerun = [
        f"{stats.present} already there as in the snapshot (same size and time): left as they were"
    ] * bool(stats.present)
    if stats.resumed:
        rerun.append(f"{stats.resumed} left incomplete by an interrupted restore: written again")
    if rerun:
        _say(args, "; ".join(rerun))
    if stats.processes_lost:
        print(
            f"safehold: warning: {stats.processes_lost} writer process(es) ended early "
            "(killed, out of memory?); this process wrote their files instead",
            file=sys.stderr,
        )
    if stats.damaged:
        raise IntegrityError(
            f"{stats.damaged.total} file(s) were damaged in the repository and "
            "were not restored (listed above)"
        )
    if stats.errors or stats.skipped:
        print(
            "safehold: restore incomplete: see the paths listed above"
            + (
                f" ({stats.skipped} existing path(s) left as they were: use --overwrite to "
                "replace existing files)"
                if stats.skipped
                else ""
            ),
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return 0


def diff(args: argparse.Namespace) -> int:
    """`safehold diff SNAPSHOT1 SNAPSHOT2`: each change printed as it is found (only counts
    are kept, for the summary)."""
    from safehold.archive.diff import diff_entries

    counts = dict.fromkeys("+-MTU", 0)
    with open_repository(args) as repository:
        repository.use_tree_cache = True  # trees from the local cache where it has them
        first, second = resolve(repository, args.first), resolve(repository, args.second)
        changes = diff_entries(
            repository, tree.root_entry(first["tree"]), tree.root_entry(second["tree"]), b""
        )
        if args.json:
            render.print_json_array(
                {"change": change, "path": display_name(path), "type": entry["type"]}
                for change, path, entry in changes
            )
            return 0
        for change, path, entry in changes:
            counts[change] += 1
            name = render.printable(os.fsdecode(path))
            print(f"{change}  {name}{'/' if entry['type'] == DIR else ''}")
    _say(
        args,
        f"{counts['+']} added, {counts['-']} removed, {counts['M']} modified, "
        f"{counts['T']} changed type, {counts['U']} metadata only",
    )
    return 0


def check_repository(args: argparse.Namespace) -> int:
    from safehold.ops.check import check, parse_max_duration  # numpy: not for every command

    limit = getattr(args, "max_duration", None)
    max_duration = None if limit is None else parse_max_duration(limit)
    with open_repository(args) as repository, repository.lock():
        result = check(
            repository,
            read_data=args.read_data,
            subset=args.read_data_subset,
            max_duration=max_duration,
        )
    if args.json:
        render.print_json(
            {
                "ok": result.ok,
                "errors": result.errors,
                "notes": result.notes,
                "snapshots": result.snapshots,
                "trees": result.trees,
                "packs": result.packs,
                "packs_read": result.packs_read,
                "bytes_read": result.bytes_read,
                "complete": result.complete,
                "packs_selected": result.packs_selected,
                "packs_done": result.packs_done,
            }
        )
    else:
        for note in result.notes:
            _say(args, f"note: {note}")
        for error in result.errors:
            print(f"error: {error}", file=sys.stderr)
        _say(
            args,
            f"checked {result.snapshots} snapshots, {result.trees} trees, "
            f"{result.packs} packs"
            + (
                f", read {result.packs_read} packs ({render.size(result.bytes_read)})"
                if result.packs_read
                else ""
            ),
        )
        if not result.complete:
            _say(
                args,
                f"incomplete: --max-duration spent after reading {result.packs_read} packs "
                f"({result.packs_done} of {result.packs_selected} done in this round); "
                "the next run with --max-duration resumes after the last pack read",
            )
    if not result.ok:
        raise IntegrityError(f"check found {len(result.errors)} problem(s), listed above")
    _say(args, "no errors found" if result.complete else "no errors found so far (incomplete)")
    return 0
