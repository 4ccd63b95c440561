"""safehold unlock: remove locks whose holder is gone; never a live one."""

from __future__ import annotations

import argparse
import sys
import time

from safehold.cli import render
from safehold.cli.session import open_repository
from safehold.errors import RepositoryLocked
from safehold.store import ObjectMissing
from safehold.store.locks import STALE_AFTER, list_locks


def unlock_command(args: argparse.Namespace) -> int:
    """Remove stale locks; report live ones (exit 14 if any remains)."""
    with open_repository(args) as repository:
        repository.require_delete("unlock")
        locks = list_locks(repository.store, time.time())
        for lock in locks:
            if lock["stale"]:
                for name in lock["names"]:  # one object, or several for an append-only lock
                    try:
                        repository.store.delete(name)
                    except ObjectMissing:
                        pass
    live = [lock for lock in locks if not lock["stale"]]
    if args.json:
        render.print_json(
            [
                {k: v for k, v in lock.items() if k not in ("name", "names")}
                | {"removed": lock["stale"]}
                for lock in locks
            ]
        )
    elif not args.quiet:
        for lock in locks:
            what = "removed stale" if lock["stale"] else "kept live"
            kind = "exclusive" if lock.get("exclusive") else "shared"
            print(
                f"{what} {kind} lock of {lock.get('host')} pid {lock.get('pid')}, "
                f"refreshed {lock['age']:.0f} s ago"
            )
        if not locks:
            print("no locks")
    if live:
        print(
            f"safehold: {len(live)} live lock(s) kept: their holders refresh them; a lock expires "
            f"{STALE_AFTER:.0f} s after its last refresh if its holder is gone",
            file=sys.stderr,
        )
        raise RepositoryLocked("by a running command (see above)")
    return 0
