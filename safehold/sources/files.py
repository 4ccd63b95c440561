"""Files: trees of local paths, copied with owners, modes, times, links and holes.

Component keys: ``paths`` (absolute paths), optional ``exclude`` (patterns) and
``one_file_system``. The component's snapshot directory mirrors '/' below it
(``/storage/opt/k-link/...``). Under ``hot+cold`` the paths are copied while the platform
runs and again, with the first copy as parent, while it is stopped. A live restore moves each
path aside (``<path>.safehold-<time>``) before restoring it (``safehold.platform.restore``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from safehold.archive.excludes import Excludes
from safehold.sources import DRILL_SCRATCH_FILES, Kind, SourceError, kind_of

PROPERTIES = {
    "paths": {
        "type": "array",
        "items": {"type": "string"},
        "minItems": 1,
        "description": "files: absolute paths to back up",
    },
    "exclude": {
        "type": "array",
        "items": {"type": "string"},
        "description": "files: exclude patterns",
    },
    "one_file_system": {"type": "boolean", "description": "files: stay on one file system"},
    "exclude_database_data": {
        "type": "array",
        "items": {"type": "string"},
        "description": "files: kinds (`postgres`, `mysql`) whose live data directories below "
        "the paths are kept empty, recognised by their files (PG_VERSION and global/pg_control; "
        "ibdata1 and mysql/); set for every files component by `exclude_dumped_data: true`",
    },
}


def archive(archiver: Any, component: Mapping[str, Any], target: Any, parent: Any, result: Any):  # type: ignore[no-untyped-def]
    """Archives the component's paths (``parent``: the previous snapshot's tree of this
    component, or None); records the absolute paths in ``result.paths``; returns the
    component's directory entry."""
    markers = [
        kind_of(name).data_markers
        for name in component.get("exclude_database_data") or []
        if kind_of(name).data_markers
    ]
    archiver.excludes = Excludes(component.get("exclude", []), data_markers=markers)
    archiver.one_file_system = bool(component.get("one_file_system", False))
    result.paths = [os.path.abspath(path) for path in component["paths"]]
    tree_id = archiver.archive(component["paths"], parent)
    return archiver.directory_entry(component["name"], tree_id, mtime_ns=0)


def validate(component: Mapping[str, Any], where: str) -> list[str]:
    """Returns a problem for every path that is not absolute and every kind in
    exclude_database_data without data directories to recognise."""
    problems = [
        f"{where}.paths: {path!r} is not an absolute path"
        for path in component.get("paths", [])
        if not path.startswith("/")
    ]
    for name in component.get("exclude_database_data") or []:
        try:
            known = bool(kind_of(name).data_markers)
        except SourceError:
            known = False
        if not known:
            problems.append(
                f"{where}.exclude_database_data: {name!r} has no data directory safehold "
                "recognises (postgres, mysql)"
            )
    return problems


KIND = Kind(
    name="files",
    description="file trees on this host",
    properties=PROPERTIES,
    required=("paths",),
    rank=3,
    files=True,
    drill=DRILL_SCRATCH_FILES,
    archive=archive,
    validate=validate,
)
