"""Restore drills: prove that a platform snapshot restores, in scratch space, and time it.

``Drill(...).run()`` restores every component of one platform snapshot without touching
anything live:

- files components into a scratch directory, then every restored file is read back and its
  chunk ids compared with the snapshot's (``drill_verify``); each component's copy is removed
  as soon as it is checked, so the scratch space needs room for the largest one;
- database dumps into a throwaway server started here, or scratch databases on the configured
  server, or scratch SQLite files (``drill_databases``); per-table row counts are compared
  with those recorded at backup and the user's ``drill.checks`` run on the restored copies;
- command components: their dump is read back (and so authenticated) but not restored, as
  their restore command acts on the live service.

Each part is timed: the sum of the restore times is the restore time objective (RTO) a real
restore should expect. The result is a plain dict (``DrillResult.record()``), stored in the
repository as ``drills/<64 hex>`` by :func:`save_drill`. The scratch directory and every
throwaway server are removed at the end, whatever happens (errors, Ctrl-C, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from safehold.archive import tree
from safehold.archive.entries import DIR, decode_tree
from safehold.archive.restorer import Restorer
from safehold.errors import IntegrityError, SafeholdError
from safehold.ops import drill_databases as databases
from safehold.ops import scratch_servers
from safehold.ops.drill_records import (
    ComponentDrill,
    DrillResult,
    choose_snapshot,
    list_drills,
    save_drill,
)
from safehold.ops.drill_verify import verify_files
from safehold.platform import sources_bridge
from safehold.platform.config import Component, ConfigError, Platform
from safehold.platform.services import Terminated, signals_raise
from safehold.repo.repository import Repository
from safehold.sources import DRILL_READ_BACK, kinds, restore_order

__all__ = [
    "ComponentDrill",
    "Drill",
    "DrillFailed",
    "DrillInterrupted",
    "DrillResult",
    "choose_snapshot",
    "list_drills",
    "save_drill",
]

EXIT_DRILL = 25


class DrillFailed(SafeholdError):
    """drill of snapshot {snapshot} FAILED: {what}"""

    exit_code = EXIT_DRILL


class DrillInterrupted(SafeholdError):
    """{message}"""

    exit_code = 130


# ---------------------------------------------------------------- the drill


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(error).__name__


def _remove_tree(path: str) -> None:
    """Removes a restored tree, also below read-only directories."""

    def retry(function: Callable[[str], object], failed: str, _info: object) -> None:
        try:
            for directory in (os.path.dirname(failed), failed):
                if os.path.isdir(directory) and not os.path.islink(directory):
                    os.chmod(directory, 0o700)
            function(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


class Drill:
    """One drill of one platform snapshot. Create, then call ``run()``."""

    def __init__(
        self,
        repository: Repository,
        platform: Platform,
        snapshot: dict,
        *,
        scratch: str | None = None,
        log: Callable[[str], None] = lambda text: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repository = repository
        repository.prove_from_repository()  # a drill proves the repository, not the caches
        self.platform = platform
        self.snapshot = snapshot
        self.parent = scratch or platform.drill.get("scratch") or None
        self.log = log
        self.clock = clock
        self.recorded = {c["name"]: c for c in snapshot.get("components", [])}
        self.damage: str | None = None
        try:
            root = decode_tree(repository.load_blob(snapshot["tree"]))
        except IntegrityError as error:  # every component fails, and the result is kept
            root, self.damage = [], f"the snapshot's root tree is damaged: {error}"
        self.dirs = {os.fsdecode(e["name"]): e for e in root if e["type"] == DIR}
        self.checks = self._checks()
        self._check_results: dict[int, dict] = {}

    def _checks(self) -> list[dict]:
        """The ``drill.checks`` entries, each with its database resolved. Raises ConfigError
        for a check naming an unknown component or one that is not a database."""
        checks = []
        for position, check in enumerate(self.platform.drill.get("checks", [])):
            where = f"at drill.checks[{position}]"
            try:
                component = self.platform.component(check["component"])
            except ConfigError:
                raise ConfigError(
                    f"{where}.component: no component named {check['component']!r}",
                    file=self.platform.source,
                ) from None
            if not hasattr(sources_bridge.kind(component).module, "query"):
                queried = ", ".join(
                    name for name, kind in kinds().items() if hasattr(kind.module, "query")
                )
                raise ConfigError(
                    f"{where}.component: {component.name} is a {component.type} component; "
                    f"checks run on {queried} components",
                    file=self.platform.source,
                )
            names = list(self.recorded.get(component.name, {}).get("databases", {}))
            database = check.get("database")
            for name in names:  # sqlite: the file's base name is enough
                if database and os.path.basename(name) == database:
                    database = name
            if database is None and len(names) == 1:
                database = names[0]
            checks.append({**check, "database": database})
        return checks

    def run(self) -> DrillResult:
        """Runs the drill; returns its result (failures are in it, not raised). If interrupted,
        cleans up, then raises KeyboardInterrupt (Ctrl-C) or DrillInterrupted (SIGTERM, SIGHUP)."""
        result = DrillResult(
            self.platform.name, self.snapshot["id"], self.snapshot["time"], self.clock()
        )
        began = time.monotonic()
        for name in sorted(set(self.recorded) - {c.name for c in self.platform.components}):
            result.notes.append(f"component {name} is in the snapshot, not in the platform file")
        components = sorted(
            (c for c in self.platform.components if c.name in self.recorded),
            key=lambda c: restore_order(sources_bridge.kind(c), c.settings, c.critical),
        )
        for component in self.platform.components:
            if component.name not in self.recorded:
                result.notes.append(f"component {component.name} is not in this snapshot")
        if self.parent:
            os.makedirs(self.parent, exist_ok=True)
        root = tempfile.mkdtemp(prefix="safehold-drill-", dir=self.parent)
        self.log(f"scratch space: {root}")
        largest = max((c.get("bytes") or 0 for c in self.recorded.values()), default=0)
        free = shutil.disk_usage(root).free
        if free < largest:
            result.notes.append(
                f"the scratch space has {free / 2**20:.0f} MiB free, the largest component "
                f"{largest / 2**20:.0f} MiB: "
                "choose another --scratch if the drill runs out of space"
            )
        try:
            with signals_raise():
                for component in components:
                    result.components.append(self._component(component, root))
        except Terminated as signal_name:
            raise DrillInterrupted(
                f"terminated by {signal_name} during the drill; its scratch space and "
                "throwaway servers were removed"
            ) from None
        finally:
            with scratch_servers.shielded():
                _remove_tree(root)
        result.checks = [
            self._check_results.get(position) or self._not_run(check)
            for position, check in enumerate(self.checks)
        ]
        result.duration = time.monotonic() - began
        return result

    def _not_run(self, check: dict) -> dict[str, Any]:
        """The result of a check that did not run, saying why."""
        names = list(self.recorded.get(check["component"], {}).get("databases", {}))
        if check["component"] not in self.recorded:
            why = f"component {check['component']} is not in this snapshot"
        elif check["database"] is None:
            why = f"name its database (the component has: {', '.join(names) or 'none'})"
        elif check["database"] not in names:
            why = f"database {check['database']} is not in the snapshot"
        else:
            why = f"not run: {check['component']}/{check['database']} did not restore"
        return {
            "name": check.get("name") or check["sql"],
            "component": check["component"],
            "database": check["database"],
            "expected": None,
            "value": None,
            "status": "failed",
            "message": why,
        }

    def _component(self, component: Component, root: str) -> ComponentDrill:
        outcome = ComponentDrill(component.name, component.type)
        record = self.recorded[component.name]
        self.log(f"{component.name}: {component.type}")
        try:
            if self.damage:
                raise SafeholdError(f"not restorable: {self.damage}")
            if record.get("status") == "failed":
                raise SafeholdError(f"not restorable: its backup failed ({record.get('error')})")
            if component.name not in self.dirs:
                raise SafeholdError("not restorable: it is missing from the snapshot")
            kind = sources_bridge.kind(component)
            if kind.files:
                self._files(component, root, outcome)
            elif kind.drill_component is not None:
                kind.drill_component(
                    self.repository,
                    self.dirs[component.name],
                    sources_bridge.source_settings(component),
                    databases.private_directory(root, kind.name, component.name),
                    outcome,
                    self.log,
                )
            elif kind.drill == DRILL_READ_BACK:
                self._command(component, outcome)
            else:
                self._databases(component, root, outcome)
        except SafeholdError as error:
            outcome.failures.append(_one_line(error))
        except OSError as error:
            outcome.failures.append(f"scratch space: {error.strerror or error}")
        if outcome.failures:
            outcome.status = "failed"
        return outcome

    def _files(self, component: Component, root: str, outcome: ComponentDrill) -> None:
        destination = databases.private_directory(root, "files", component.name)
        outcome.restored_into = "scratch directory"
        began = time.monotonic()
        stats = Restorer(self.repository, destination).restore(self.dirs[component.name], "/")
        outcome.restore_seconds = time.monotonic() - began
        for problem in stats.damaged + stats.errors:
            outcome.failures.append(f"{problem['path']}: {problem['message']}")
        began = time.monotonic()
        verdict = verify_files(self.repository, self.dirs[component.name], destination)
        outcome.verify_seconds = time.monotonic() - began
        outcome.files, outcome.bytes = verdict.files, verdict.bytes
        outcome.failures += verdict.failures
        _remove_tree(destination)  # room for the next component

    def _command(self, component: Component, outcome: ComponentDrill) -> None:
        outcome.restored_into = "not restored (read back only)"
        began = time.monotonic()
        for entry in tree.load_tree(self.repository, self.dirs[component.name]["subtree"]):
            size = 0
            with tree.EntryReader(self.repository, entry) as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    size += len(chunk)
            if size != entry.get("size"):
                outcome.failures.append(f"{os.fsdecode(entry['name'])}: {size} bytes read back")
            outcome.bytes += size
        outcome.verify_seconds = time.monotonic() - began
        outcome.notes.append(
            "a command component's dump is read back and authenticated, not restored: its "
            "restore command acts on the live service"
        )

    def _databases(self, component: Component, root: str, outcome: ComponentDrill) -> None:
        record = self.recorded[component.name]
        files = {
            os.fsdecode(e["name"]): e
            for e in tree.load_tree(self.repository, self.dirs[component.name]["subtree"])
        }
        began = time.monotonic()
        place_cm = databases.place_for(
            component, self.platform, root, record, outcome.notes, self.log
        )
        with place_cm as place:
            outcome.setup_seconds = time.monotonic() - began
            outcome.restored_into = place.description
            if place.server is not None:
                server = place.server
                outcome.server = {
                    "kind": server.kind,
                    "version": server.version,
                    "port": server.port,
                    "pid": server.pid,
                    "directory": server.directory,
                }
                module = sources_bridge.kind(component).module
                if sources_bridge.GLOBALS_FILE in files and hasattr(module, "restore_globals"):
                    self.log(f"{component.name}: applying roles ({sources_bridge.GLOBALS_FILE})")
                    outcome.restore_seconds += databases.restore_globals(
                        self.repository, place, files[sources_bridge.GLOBALS_FILE], module
                    )
            for name, dump in record.get("databases", {}).items():
                self._database(component, place, name, dump, files, outcome)
        if outcome.server is not None:
            gone = not os.path.exists(outcome.server["directory"])
            gone = gone and not scratch_servers.alive(outcome.server["pid"])
            outcome.server["removed"] = gone
            if not gone:
                outcome.warnings.append(
                    f"the throwaway server (pid {outcome.server['pid']}, "
                    f"{outcome.server['directory']}) is still there: remove it by hand"
                )

    def _database(  # type: ignore[no-untyped-def]
        self, component: Component, place, name: str, dump: dict, files: dict, outcome
    ) -> None:
        into = place.into(name)
        self.log(f"{component.name}: restoring {dump['file']} into {os.path.basename(into)}")
        try:
            if dump["file"] not in files:
                raise SafeholdError(f"its dump {dump['file']} is not in the snapshot")
            restored = databases.restore_dump(
                self.repository, component, place, name, files[dump["file"]], dump
            )
            outcome.restore_seconds += restored.restore_seconds
            outcome.failures += [f"{name}: {text}" for text in restored.failures]
            outcome.warnings += [f"{name}: {text}" for text in restored.warnings]
            began = time.monotonic()
            for position, check in enumerate(self.checks):
                if check["component"] == component.name and check["database"] == name:
                    self._check_results[position] = databases.run_check(
                        check, component, place, into
                    )
            outcome.verify_seconds += restored.verify_seconds + time.monotonic() - began
            outcome.databases[name] = {
                "into": os.path.basename(into) if place.directory else into,
                "tables": restored.tables,
                "rows": restored.rows,
                "restore_seconds": restored.restore_seconds,
            }
        except SafeholdError as error:
            outcome.failures.append(f"{name}: {_one_line(error)}")
        finally:
            warning = databases.drop_scratch(component, place, into)
            if warning:
                outcome.warnings.append(warning)
