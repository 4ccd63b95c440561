"""The copy command: snapshots from the repository to another one (docs/backends.md).

Its options are declared in main.py (the parser must not import this module).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from safehold.cli import render
from safehold.cli.session import open_repository
from safehold.errors import PassphraseMissing, UsageError, WrongPassphrase
from safehold.ops.copy import CopiedSnapshot, copy_snapshots
from safehold.repo.repository import Repository


class WrongTargetPassphrase(WrongPassphrase):
    """wrong passphrase for the target repository: it opens none of its {count} key(s); check SAFEHOLD_TO_PASSPHRASE or --to-passphrase-file"""  # noqa: E501


class TargetPassphraseMissing(PassphraseMissing):
    """no passphrase given for the target repository: set SAFEHOLD_TO_PASSPHRASE, pass --to-passphrase-file FILE, or run on a terminal to be asked"""  # noqa: E501


def target_passphrase(args: argparse.Namespace) -> bytes:
    """The target's passphrase from --to-passphrase-file, $SAFEHOLD_TO_PASSPHRASE or a prompt."""
    if args.to_passphrase_file:
        try:
            with open(args.to_passphrase_file, "rb") as handle:
                return handle.read().rstrip(b"\r\n")
        except OSError as error:
            raise UsageError(
                f"cannot read target passphrase file {args.to_passphrase_file}: {error.strerror}"
            ) from error
    if "SAFEHOLD_TO_PASSPHRASE" in os.environ:
        return os.environ["SAFEHOLD_TO_PASSPHRASE"].encode()
    if not sys.stdin.isatty():
        raise TargetPassphraseMissing()
    secret = getpass.getpass("target repository passphrase: ")
    if not secret:
        raise UsageError("an empty passphrase is not allowed")
    return secret.encode()


def open_target(args: argparse.Namespace) -> Repository:
    """Open the --to repository (only reads: nothing is written before both are open)."""
    try:
        return Repository.open(args.to, lambda: target_passphrase(args))
    except WrongPassphrase as error:
        raise WrongTargetPassphrase(count=error.fields.get("count", 0)) from None


def _describe(item: CopiedSnapshot) -> str:
    if item.skipped:
        return f"snapshot {item.source[:8]} is already in the target as {item.target[:8]}"
    return (
        f"snapshot {item.source[:8]} copied as {item.target[:8]}: {item.blobs} chunk(s), "
        f"{item.blobs_new} new blob(s), {render.size(item.bytes_added_raw)} new "
        f"({render.size(item.bytes_added_stored)} stored)"
    )


def _as_json(item: CopiedSnapshot) -> dict:
    return {
        "source": item.source,
        "target": item.target,
        "skipped": item.skipped,
        "blobs": item.blobs,
        "blobs_new": item.blobs_new,
        "bytes_read": item.bytes_read,
        "bytes_added_raw": item.bytes_added_raw,
        "bytes_added_stored": item.bytes_added_stored,
    }


def copy_command(args: argparse.Namespace) -> int:
    """`safehold copy --to LOCATION [SNAPSHOT ...]`: copy snapshots not yet in the target."""
    show = not args.json and not args.quiet
    with open_repository(args) as source, open_target(args) as target:
        result = copy_snapshots(
            source,
            target,
            args.snapshots,
            report=(lambda item: print(_describe(item), flush=True)) if show else None,
        )
        location = target.store.location  # never holds credentials
    copied = result.copied
    if args.json:
        render.print_json(
            {
                "target": location,
                "copied": len(copied),
                "skipped": len(result.skipped),
                "bytes_added_raw": sum(item.bytes_added_raw for item in copied),
                "bytes_added_stored": sum(item.bytes_added_stored for item in copied),
                "snapshots": [_as_json(item) for item in result.snapshots],
            }
        )
    elif show:
        print(
            f"{len(copied)} snapshot(s) copied to {location}, {len(result.skipped)} already "
            f"there; {render.size(sum(i.bytes_added_stored for i in copied))} stored"
        )
    return 0
