"""One backup run of file paths: lock, archive, flush, write the snapshot."""

from __future__ import annotations

import getpass
import os
import socket
import time
from dataclasses import dataclass

from safehold import __version__
from safehold.archive.archiver import Archiver, ArchiveStats, Progress
from safehold.archive.excludes import Excludes
from safehold.repo.repository import Repository
from safehold.repo.snapshots import list_snapshots
from safehold.repo.writer import BlobWriter, WriteStats


@dataclass
class BackupResult:
    snapshot_id: str
    snapshot: dict
    archive: ArchiveStats
    written: WriteStats


def find_parent(repository: Repository, hostname: str, paths: list[str]) -> dict | None:
    """The latest snapshot of the same host and paths, whose files are compared by stat."""
    candidates = list_snapshots(repository, host=hostname, paths=paths)
    return candidates[-1] if candidates else None


def backup_paths(
    repository: Repository,
    paths: list[str],
    *,
    tags: list[str] | None = None,
    hostname: str | None = None,
    excludes: Excludes | None = None,
    one_file_system: bool = False,
    parent: dict | None = None,
    force: bool = False,
    progress: Progress | None = None,
    clock=time.time,
) -> BackupResult:  # type: ignore[no-untyped-def]
    """Back up ``paths`` into a new snapshot and return what happened.

    Unreadable files are listed in the result (the backup goes on); storage errors raise.
    """
    hostname = hostname or socket.gethostname()
    absolute = [os.path.abspath(path) for path in paths]
    started = clock()
    with repository.lock():
        if parent is None and not force:
            parent = find_parent(repository, hostname, absolute)
        with BlobWriter(repository) as writer:
            with Archiver(
                repository,
                writer,
                excludes=excludes,
                one_file_system=one_file_system,
                progress=progress,
                known_dirs=repository.load_dir_table(parent) if parent else None,
            ) as archiver:
                root = archiver.archive(absolute, parent["tree"] if parent else None)
            writer.flush()
        finished = clock()
        stats = archiver.stats
        snapshot = {
            "version": 1,
            "time": started,
            "hostname": hostname,
            "username": _username(),
            "paths": absolute,
            "tags": sorted(set(tags or [])),
            "tree": root,
            "parent": parent["id"] if parent else None,
            "program": f"safehold {__version__}",
            "excludes": excludes.patterns if excludes else [],
            "summary": {
                "duration": finished - started,
                "files_new": stats.files_new,
                "files_changed": stats.files_changed,
                "files_unchanged": stats.files_unchanged,
                "dirs": stats.dirs,
                "bytes_total": stats.bytes_total,
                "bytes_read": stats.bytes_read,
                "blobs_new": writer.stats.blobs_new,
                "bytes_added_raw": writer.stats.bytes_new_raw,
                "bytes_added_stored": writer.stats.bytes_new_stored,
                "errors": list(stats.errors),  # the first 1,000; then only counted
                "errors_more": stats.errors.more,
                "warnings": list(stats.warnings),
                "warnings_more": stats.warnings.more,
            },
        }
        snapshot_id = repository.save_snapshot(snapshot)  # verifies the lock first
        repository.save_dir_table(
            snapshot_id, root, archiver.new_dirs, superseded=parent["id"] if parent else None
        )
    return BackupResult(snapshot_id, dict(snapshot, id=snapshot_id), stats, writer.stats)


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
