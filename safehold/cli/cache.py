"""safehold cache: the local caches of repositories on this machine, and removing old ones.

Each repository a command used has a cache directory here (docs/format.md, "The local cache"):
`prune` keeps it to the trees the kept snapshots need, but the cache of a repository that is
gone (deleted, moved to a new id, or no longer backed up from this machine) stays until it is
removed. ``--cleanup`` removes the caches not used for ``--max-age`` days (30 by default, as
restic's ``--cleanup-cache``): only time is lost if one is needed again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from safehold.cli import render
from safehold.errors import UsageError
from safehold.repo.cache import DAY, cache_off, cache_root, repository_caches


def _size(directory: Path) -> int:
    """Bytes of the files below ``directory`` (one folder at a time: no list of them all)."""
    total, pending = 0, [directory]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    else:
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


def cache_command(args: argparse.Namespace) -> int:
    """List the repositories' caches (size, last use); with ``--cleanup`` remove the old ones."""
    if args.max_age < 0:
        raise UsageError(f"--max-age {args.max_age:g}: give a number of days, 0 or more")
    if cache_off():
        raise UsageError("SAFEHOLD_CACHE_DIR=off: there is no local cache to show")
    now = time.time()
    rows = []
    for directory, used in repository_caches():
        old = now - used > args.max_age * DAY
        row = {
            "repository_id": directory.name,
            "path": str(directory),
            "bytes": _size(directory),
            "last_used": render.timestamp(used),
            "old": old,
            "removed": False,
        }
        if old and args.cleanup:
            shutil.rmtree(directory, ignore_errors=True)
            row["removed"] = not directory.exists()
        rows.append(row)
    if args.json:
        render.print_json({"cache_dir": str(cache_root()), "caches": rows})
        return 0
    if args.quiet:
        return 0
    for row in rows:
        state = "removed" if row["removed"] else ("old" if row["old"] else "")
        print(
            f"{row['repository_id']}  {render.size(row['bytes']):>10}  "
            f"last used {row['last_used']}  {state}".rstrip()
        )
    old = [row for row in rows if row["old"]]
    removed = [row for row in old if row["removed"]]
    freed = render.size(sum(row["bytes"] for row in removed))
    if args.cleanup:
        print(
            f"removed {len(removed)} of {len(rows)} cache(s) in {cache_root()} not used for "
            f"{args.max_age:g} days ({freed})"
        )
    else:
        print(
            f"{len(rows)} cache(s) in {cache_root()}, {len(old)} not used for {args.max_age:g} "
            f"days ({render.size(sum(row['bytes'] for row in old))}): --cleanup removes those"
        )
    return 0
