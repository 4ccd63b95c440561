"""Between the platform model and the sources: targets, dumps into trees, service runners.

A database component's snapshot directory holds one file per dump: ``<database>.sql`` for
PostgreSQL and MySQL (plus ``_globals.sql`` for PostgreSQL roles), the database file's name
for SQLite, and ``filename`` (default ``dump``) for a command component.
"""

from __future__ import annotations

import os
import subprocess

from safehold.archive.archiver import Archiver
from safehold.platform.config import Component
from safehold.platform.services import ServiceError
from safehold.secrecy import child_env
from safehold.sources import source_module
from safehold.sources.counting import PostgresCopyCounter
from safehold.sources.targets import LocalTarget, Target, target_from_via

GLOBALS_FILE = "_globals.sql"


def target_for(component: Component, services: dict | None = None) -> Target:
    """The execution target of a component; compose targets inherit services.project_dir."""
    via = component.get("via")
    if isinstance(via, dict) and via.get("exec") == "compose" and services:
        via = {**via}
        via.setdefault("project_dir", services.get("project_dir"))
        if services.get("file"):
            via.setdefault("file", services["file"])
        via = {key: value for key, value in via.items() if value is not None}
    return target_from_via(via)


def source_settings(component: Component) -> dict:
    """The dict the source modules take: the component's settings plus the resolved password."""
    return {**component.settings, "password": component.password}


def configured_dump_names(component: Component) -> list[str] | None:
    """The dumps the platform file names for a database/command component, as a restore may
    write them: its databases (None for ``all``: every database of its server but the
    system schemas), its SQLite files, or its one command dump. The platform file, never a
    snapshot, decides what a live restore replaces."""
    if component.type in ("postgres", "mysql"):
        names = [str(name) for name in component.get("databases") or []]
        return None if names == ["all"] else names
    return list(source_module(component.type).dump_names(source_settings(component), LocalTarget()))


SYSTEM_DATABASES = {"mysql": ("information_schema", "performance_schema", "mysql", "sys")}


def dump_refusal(component: Component, name: object, record: object) -> str | None:
    """None if a live restore may replace dump ``name`` of ``component`` as the snapshot
    records it (``record``), else why not, in words."""
    if not isinstance(name, str) or not name or len(name) > 255 or any(c in name for c in "\0\n"):
        return f"an invalid database name {name!r}"
    allowed = configured_dump_names(component)
    if allowed is not None and name not in allowed:
        return f"database {name!r}, which the platform file does not name for this component"
    if allowed is None and name in SYSTEM_DATABASES.get(component.type, ()):
        return f"the system database {name!r}"
    if not isinstance(record, dict) or record.get("file") != dump_filename(component, name):
        return f"database {name!r} in a file other than {dump_filename(component, name)!r}"
    return None


def dump_filename(component: Component, name: str) -> str:
    """The file name a dump is stored under in the component's snapshot directory."""
    if component.type in ("postgres", "mysql"):
        return f"{name}.sql"
    if component.type == "command":
        return component.get("filename") or "dump"
    return os.path.basename(name) or "database"


def archive_dumps(
    archiver: Archiver, component: Component, result, services: dict | None = None
) -> dict:  # type: ignore[no-untyped-def]
    """Stream every dump of a database/command component into the archive.

    Fills ``result`` (databases: name -> file, bytes, rows; server_version) and returns the
    component's directory entry. Raises SourceError when a dump fails.
    """
    module = source_module(component.type)
    target = target_for(component, services)
    settings = source_settings(component)
    entries = []
    if hasattr(module, "server_version"):
        result.server_version = module.server_version(settings, target)
    dump_globals = getattr(module, "dump_globals", None)
    if dump_globals is not None:
        with dump_globals(settings, target) as stream:
            entries.append(archiver.archive_stream(GLOBALS_FILE, stream))
    for name in module.dump_names(settings, target):
        filename = dump_filename(component, name)
        with module.dump(settings, target, name) as stream:
            counter = PostgresCopyCounter(stream) if component.type == "postgres" else None
            entry = archiver.archive_stream(filename, counter or stream)
        entries.append(entry)
        record: dict = {"file": filename, "bytes": entry["size"]}
        if counter is not None:
            record["rows"], record["rows_exact"] = counter.counts, True
        elif hasattr(module, "row_counts"):
            # Counted after the dump: writes in between make these differ from the dump.
            record["rows"], record["rows_exact"] = module.row_counts(settings, target, name), False
        result.databases[name] = record
    # Component folders carry a fixed time, so an unchanged component diffs as unchanged.
    return archiver.store_directory(component.name, entries, mtime_ns=0)


class ServiceRunner:
    """Runs service-control commands on a target (local, or ssh to the compose/k8s host)."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def run(self, argv: list[str], timeout: float | None = None) -> str:
        command = self.target.command(argv)
        try:
            completed = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
                env=child_env(),
            )
        except FileNotFoundError:
            raise ServiceError(f"{command[0]} is not installed: cannot run {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise ServiceError(
                f"{' '.join(argv[:3])} did not finish within {timeout:.0f} s"
            ) from None
        if completed.returncode != 0:
            lines = (completed.stderr or completed.stdout).strip().splitlines()
            raise ServiceError(
                f"{' '.join(argv[:4])} failed (exit status {completed.returncode})"
                + (f": {lines[-1]}" if lines else "")
            )
        return completed.stdout


def service_runner(services: dict) -> ServiceRunner:
    via = services.get("via")
    return ServiceRunner(target_from_via(via) if via else LocalTarget())
