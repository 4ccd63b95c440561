"""The options of the commands that look into the history: find, dump, stats, tag, mount.

Declared here so main.py stays small; the commands themselves live in cli/history.py and
cli/mount.py and are imported on use (docs/operations.md, "Finding things in the history").
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_history_commands(
    sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add find, dump, stats, tag and mount to the subcommands ``sub``."""
    command = sub.add_parser("find", help="which snapshots hold paths matching PATTERN")
    common(command)
    command.add_argument("patterns", nargs="+", metavar="PATTERN", help="'*.dcm', '/etc/*.yaml'")
    command.add_argument(
        "--snapshot", "-s", action="append", default=[], metavar="ID|latest", help="repeatable"
    )
    command.add_argument("--host", default=None, help="only this host's snapshots")
    command.add_argument("--tag", action="append", default=[], help="only snapshots with this tag")
    command.add_argument("--newer", default=None, metavar="DATE", help="mtime at or after DATE")
    command.add_argument("--older", default=None, metavar="DATE", help="mtime before DATE")
    command.set_defaults(run="history:find_command")

    command = sub.add_parser("dump", help="one file to stdout, or a directory as a tar stream")
    common(command)
    command.add_argument("target", metavar="SNAPSHOT:PATH")
    command.add_argument(
        "--output", "-o", default=None, metavar="FILE", help="write FILE (must not exist)"
    )
    command.set_defaults(run="history:dump_command")

    command = sub.add_parser("stats", help="sizes: total, unique, per component, growth per day")
    common(command)
    command.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="default: all")
    command.set_defaults(run="history:stats_command")

    command = sub.add_parser("tag", help="add, remove or set the tags of snapshots")
    common(command)
    command.add_argument("snapshots", nargs="+", metavar="SNAPSHOT")
    command.add_argument("--add", action="append", default=[], metavar="TAG[,TAG]")
    command.add_argument("--remove", action="append", default=[], metavar="TAG[,TAG]")
    command.add_argument("--set", action="append", default=None, metavar="TAG[,TAG]")
    command.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS")
    command.set_defaults(run="history:tag_command")

    command = sub.add_parser("mount", help="browse the repository as a read-only file system")
    common(command)
    command.add_argument("mountpoint", metavar="MOUNTPOINT")
    command.add_argument("--cache-size", default="64MiB", metavar="SIZE", help="blob cache (64MiB)")
    command.add_argument(
        "--allow-other", action="store_true", help="let other users see it (FUSE allow_other)"
    )
    command.set_defaults(run="mount:mount_command")
