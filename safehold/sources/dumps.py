"""Backing up a dumps kind: every dump of a component streamed into the archive.

A dumps component's snapshot directory holds one file per dump, named by its kind's
``dump_file`` (``<database>.sql`` for PostgreSQL and MySQL, plus ``_globals.sql`` for
PostgreSQL roles; the database file's name for SQLite; ``filename`` for a command).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from safehold.sources.targets import Target

if TYPE_CHECKING:
    from safehold.archive.archiver import Archiver
    from safehold.sources import Kind

GLOBALS_FILE = "_globals.sql"


def archive_dumps(
    archiver: Archiver, kind: Kind, component: Mapping[str, Any], target: Target, result: Any
) -> dict:
    """Stream every dump of a component of a dumps ``kind`` into the archive.

    Fills ``result`` (``databases``: name -> file, bytes, rows; ``server_version``) and returns
    the component's directory entry. Raises SourceError when a dump fails.
    """
    module = kind.module
    assert module is not None and kind.dump_file is not None
    entries = []
    if hasattr(module, "server_version"):
        result.server_version = module.server_version(component, target)
    dump_globals = getattr(module, "dump_globals", None)
    if dump_globals is not None:
        with dump_globals(component, target) as stream:
            entries.append(archiver.archive_stream(GLOBALS_FILE, stream))
    for name in module.dump_names(component, target):
        filename = kind.dump_file(component, name)
        with module.dump(component, target, name) as stream:
            counter = kind.counter(stream) if kind.counter is not None else None
            entry = archiver.archive_stream(filename, counter or stream)
        entries.append(entry)
        record: dict = {"file": filename, "bytes": entry["size"]}
        if counter is not None:
            record["rows"], record["rows_exact"] = counter.counts, True
        elif hasattr(module, "row_counts"):
            # Counted after the dump: writes in between make these differ from the dump.
            record["rows"], record["rows_exact"] = module.row_counts(component, target, name), False
        result.databases[name] = record
    # Component folders carry a fixed time, so an unchanged component diffs as unchanged.
    return archiver.store_directory(component["name"], entries, mtime_ns=0)
