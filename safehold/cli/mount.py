"""The mount command: open the repository, build the view, serve it through FUSE.

Its options are declared in cli/history_args.py. The FUSE library (pyfuse3) is imported here,
on use, and by no other command."""

from __future__ import annotations

import argparse
import os
import sys

from safehold.cli.session import open_repository
from safehold.errors import MountUnavailable, UsageError


def mount_command(args: argparse.Namespace) -> int:
    """`safehold mount MOUNTPOINT`: serve until Ctrl-C, SIGTERM or fusermount3 -u."""
    from safehold.cli.prune import parse_size

    cache_size = parse_size(args.cache_size, "--cache-size")
    mountpoint = os.path.abspath(args.mountpoint)
    try:
        from safehold.ops import mount
    except ImportError as error:
        raise MountUnavailable(
            reason=f"the FUSE bindings are not installed ({error.name}): "
            "pip install 'safehold[mount]' (needs Debian's libfuse3-dev and pkg-config)"
        ) from None
    from safehold.ops.mountview import BlobCache, MountView

    if mount.release_dead_mount(mountpoint):
        print(
            f"safehold: released the mount a killed process left at {mountpoint} "
            "(fusermount3 -u -z)",
            file=sys.stderr,
        )
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mount point {mountpoint} is not a directory: create it first")
    with open_repository(args) as repository:
        repository.use_tree_cache = True  # trees from the local cache where it has them
        view = MountView(repository)
        view.snapshots()
        cache = BlobCache(repository, cache_size)

        def ready() -> None:
            if not args.quiet and not args.json:
                print(
                    f"mounted {repository.location} read-only at {mountpoint}; "
                    f"unmount with Ctrl-C or fusermount3 -u {mountpoint}",
                    flush=True,
                )

        mount.serve(
            view,
            cache,
            mountpoint,
            allow_other=args.allow_other,
            report=lambda line: print(line, file=sys.stderr, flush=True),
            ready=ready,
        )
    return 0
