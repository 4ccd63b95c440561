"""Where a drill restores a database component's dumps, and the checks run on them.

A :class:`Place` says how to reach the server (or directory) a dump is restored into:

- a throwaway server started here (``scratch_servers``), when the server binaries are
  installed and ``drill.throwaway_servers`` is not false: databases keep their names, and
  PostgreSQL's roles (``_globals.sql``) are applied first, as on a new server after a disaster;
- else the configured server, through the component's own target: each dump goes into a
  scratch database ``<name>_safehold_drill`` that is dropped again afterwards (live databases
  are never touched: restore always drops and recreates exactly the scratch name);
- SQLite: a scratch file in the drill's directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from safehold.archive import tree
from safehold.errors import SafeholdError
from safehold.ops import scratch_servers
from safehold.ops.drill_verify import compare_rows, evaluate, scratch_database_name
from safehold.platform import sources_bridge
from safehold.platform.config import Component, Platform
from safehold.repo.repository import Repository
from safehold.sources import DRILL_SCRATCH_FILES, source_module
from safehold.sources.targets import LocalTarget, Target

Log = Callable[[str], None]


@dataclass
class Place:
    """Where the dumps of one component are restored during a drill."""

    description: str
    settings: dict = field(repr=False)
    target: Target
    configured: bool = False  # the configured server: scratch names, dropped afterwards
    directory: str | None = None  # sqlite: where the scratch files go
    server: scratch_servers.ScratchServer | None = None

    def into(self, name: str) -> str:
        """Returns what the dump of database ``name`` is restored into."""
        if self.directory is not None:
            digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
            return os.path.join(self.directory, f"{digest}-{os.path.basename(name) or 'db'}")
        return scratch_database_name(name) if self.configured else name


@dataclass
class DatabaseOutcome:
    """What the restore of one dump gave: counts, timings, problems."""

    into: str
    tables: int = 0
    rows: int = 0
    restore_seconds: float = 0.0
    verify_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def private_directory(root: str, *parts: str) -> str:
    """Creates root/parts... (each level mode 0700, existing ones kept); returns the path."""
    path = root
    for part in parts:
        path = os.path.join(path, part)
        if not os.path.isdir(path):
            os.mkdir(path, 0o700)
    return path


def _major(version: str | None) -> int | None:
    match = re.match(r"\s*(\d+)", version or "")
    return int(match.group(1)) if match else None


@contextmanager
def place_for(
    component: Component,
    platform: Platform,
    scratch: str,
    record: dict,
    notes: list[str],
    log: Log,
) -> Iterator[Place]:
    """Yields the place to restore component's dumps into (see the module docstring); a
    throwaway server is stopped and removed on leaving. Adds to notes why a configured server
    is used. Raises ScratchServerError if a throwaway server cannot start."""
    kind = sources_bridge.kind(component)
    if kind.drill == DRILL_SCRATCH_FILES:
        directory = private_directory(scratch, kind.name, component.name)
        yield Place("scratch files", {}, LocalTarget(), directory=directory)
        return
    wanted = platform.drill.get("throwaway_servers", True)
    throwaway, why = None, ""
    factory = THROWAWAY_SERVERS.get(kind.drill_server or "")
    if wanted and factory is not None:
        throwaway, why = factory(component, scratch, record)
    if throwaway is None:
        target = sources_bridge.target_for(component, platform.services)
        if why:
            notes.append(f"{why}: restored into scratch databases on the configured server")
        yield Place(
            f"scratch databases on the configured server ({target.describe()})",
            sources_bridge.source_settings(component),
            target,
            configured=True,
        )
        return
    with throwaway() as server:
        log(f"{component.name}: started {server.describe()} (pid {server.pid}, {server.directory})")
        notes += _version_notes(server, record.get("server_version") or "")
        yield Place(server.describe(), server.settings, LocalTarget(), server=server)
    log(f"{component.name}: stopped and removed the throwaway server")


def _postgres(component: Component, scratch: str, record: dict) -> tuple[Callable | None, str]:
    local = component.get("bin_dir") if component.get("via") in (None, "local") else None
    bin_dir = scratch_servers.choose_postgres(
        _major(record.get("server_version")), [local] if local else []
    )
    throwaway = partial(scratch_servers.throwaway_postgres, scratch, bin_dir) if bin_dir else None
    return throwaway, "the PostgreSQL server programs (initdb, pg_ctl) are not installed here"


def _mariadb(component: Component, scratch: str, record: dict) -> tuple[Callable | None, str]:
    programs = scratch_servers.mariadb_programs()
    throwaway = partial(scratch_servers.throwaway_mariadb, scratch, programs) if programs else None
    return (
        throwaway,
        "the MariaDB server programs (mariadb-install-db, mariadbd) are not installed here",
    )


# A kind's ``drill_server`` names one of these: (component, scratch directory, what the backup
# recorded) -> (a context manager factory yielding a ScratchServer, or None; why not).
THROWAWAY_SERVERS: dict[str, Callable[[Component, str, dict], tuple[Callable | None, str]]] = {
    "postgresql": _postgres,
    "mariadb": _mariadb,
}


def _version_notes(server: scratch_servers.ScratchServer, backed_up: str) -> list[str]:
    """Says when the throwaway server differs from the backed-up one in a way that matters."""
    if server.kind == "mysql" and backed_up and "mariadb" not in backed_up.lower():
        return [
            f"the dump comes from MySQL {backed_up} and is restored into MariaDB "
            f"{server.version}: if MySQL-only features make it fail, set "
            "drill.throwaway_servers: false"
        ]
    recorded, got = _major(backed_up), _major(server.version)
    if server.kind == "postgres" and recorded and got and got < recorded:
        return [
            f"the throwaway server ({server.version}) is older than the backed-up one "
            f"({backed_up}): install PostgreSQL {recorded} here if the restore fails"
        ]
    return []


def restore_dump(
    repository: Repository,
    component: Component,
    place: Place,
    name: str,
    entry: dict,
    record: dict,
) -> DatabaseOutcome:
    """Restores the dump ``entry`` of database ``name`` into its place, then compares the row
    counts with ``record`` (what the backup recorded). Returns the outcome; raises
    SafeholdError if the restore fails."""
    module = source_module(component.type)
    outcome = DatabaseOutcome(place.into(name))
    began = time.monotonic()
    with tree.EntryReader(repository, entry) as stream:
        module.restore(place.settings, place.target, name, stream, into=outcome.into)
    outcome.restore_seconds = time.monotonic() - began
    began = time.monotonic()
    counts = module.row_counts(place.settings, place.target, outcome.into)
    outcome.tables, outcome.rows = len(counts), sum(counts.values())
    if record.get("rows") is not None:
        failures, warnings = compare_rows(record["rows"], counts, bool(record.get("rows_exact")))
        outcome.failures += failures
        outcome.warnings += warnings
    outcome.verify_seconds = time.monotonic() - began
    return outcome


def restore_globals(repository: Repository, place: Place, entry: dict, module: Any) -> float:
    """Applies PostgreSQL roles (``_globals.sql``) on a throwaway server; returns the seconds
    it took. Raises SourceError on failure."""
    began = time.monotonic()
    with tree.EntryReader(repository, entry) as stream:
        module.restore_globals(place.settings, place.target, stream)
    return time.monotonic() - began


def drop_scratch(component: Component, place: Place, name: str) -> str | None:
    """Drops a scratch database on a configured server (or removes a scratch file). Returns a
    warning if that failed, else None."""
    try:
        if place.directory is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                if os.path.exists(name + suffix):
                    os.unlink(name + suffix)
        elif place.configured:
            source_module(component.type).drop_database(place.settings, place.target, name)
    except (SafeholdError, OSError) as error:
        return f"could not remove the scratch database {name} ({error}): remove it by hand"
    return None


def run_query(component: Component, place: Place, into: str, sql: str) -> list[list[str]]:
    """Runs a user's SQL check on the restored copy ``into``; returns rows of strings.
    Raises SourceError if the query fails."""
    module = source_module(component.type)
    return module.query(place.settings, place.target, sql, into)


def run_check(
    check: dict[str, Any], component: Component, place: Place, into: str
) -> dict[str, Any]:
    """Runs one ``drill.checks`` entry on the restored copy; returns its result record."""
    result = {
        "name": check.get("name") or check["sql"],
        "component": component.name,
        "database": check["database"],
        "expected": None,
        "value": None,
        "status": "failed",
        "message": "",
    }
    try:
        rows = run_query(component, place, into, check["sql"])
    except SafeholdError as error:
        result["message"] = f"the query failed: {error}"
        return result
    passed, value, wanted = evaluate(check.get("expect"), rows)
    result.update(expected=wanted, value=value, status="passed" if passed else "failed")
    if not passed:
        result["message"] = f"expected {wanted}, got {value!r}"
    return result
