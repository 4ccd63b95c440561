"""Restoring a platform, in its own order: stop, databases, files, start, hooks.

Three modes:
- live (default): the components go back where they came from. Databases are dropped and
  recreated from their dumps; a files component's paths are first moved aside to
  ``<path>.safehold-<time>`` (nothing is deleted), then restored with owners, modes, times.
  The services the cold phase stops are stopped for the files (database services stay up:
  dumps are restored through them) and always started again; then after_restore hooks run.
- ``target``: everything is written below a directory (dumps as .sql files); nothing live is
  touched.
- ``to_database``: one database component's dump goes into another database name.

The platform file is the authority on what a live restore writes: the paths a files component
names and the databases a database component names (``sources_bridge.dump_refusal``), never
what the snapshot records. A component whose snapshot records anything else (a path or a
database the platform file does not name) is refused and reported; the others are restored.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

from safehold.archive import tree
from safehold.archive.entries import DIR, decode_tree
from safehold.archive.restorer import Restorer
from safehold.errors import SafeholdError
from safehold.platform import sources_bridge
from safehold.platform.config import ConfigError, Platform
from safehold.platform.hooks import run_hooks
from safehold.platform.services import stopped
from safehold.repo.repository import Repository
from safehold.sources import restore_order, source_module


@dataclass
class RestoreOutcome:
    restored: list[str] = field(default_factory=list)
    moved_aside: list[tuple[str, str]] = field(default_factory=list)
    row_mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    downtime: float = 0.0


class PlatformRestore:
    """Restores (parts of) one platform snapshot. ``plan()`` says what ``run()`` would do."""

    def __init__(
        self,
        repository: Repository,
        platform: Platform,
        snapshot: dict,
        *,
        component: str | None = None,
        to_database: str | None = None,
        database: str | None = None,
        target: str | None = None,
        kind_options: dict | None = None,
        log: Callable[[str], None] = lambda text: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repository = repository
        self.platform = platform
        self.snapshot = snapshot
        self.to_database = to_database
        self.database = database
        self.target = target
        self.kind_options = dict(kind_options or {})  # e.g. bucket: to_bucket, delete_extra
        self.log = log
        self.clock = clock
        components = snapshot.get("components")
        self.recorded = {
            c["name"]: c
            for c in (components if isinstance(components, list) else [])
            if isinstance(c, dict) and isinstance(c.get("name"), str)
        }
        self.dirs = {
            os.fsdecode(e["name"]): e
            for e in decode_tree(repository.load_blob(snapshot["tree"]))
            if e["type"] == DIR
        }
        names = (
            [component]
            if component
            else [c.name for c in platform.components if c.name in self.dirs]
        )
        for name in names:
            platform.component(name)  # ConfigError for an unknown name
            if name not in self.dirs:
                raise ConfigError(
                    f"snapshot {snapshot['id'][:8]} holds no component {name!r}",
                    file=platform.source,
                )
        self.components = sorted(
            (platform.component(n) for n in names),
            key=lambda c: restore_order(sources_bridge.kind(c), c.settings, c.critical),
        )
        self.refused = {
            c.name: reason for c in self.components if (reason := self._refusal(c)) is not None
        }
        if to_database and (
            len(self.components) != 1 or not sources_bridge.kind(self.components[0]).databases
        ):
            raise ConfigError(
                "--to-database needs --component naming one postgres or mysql component",
                file=platform.source,
            )

        elsewhere = [key for key in ("to_bucket", "to_endpoint") if self.kind_options.get(key)]
        if elsewhere and (
            len(self.components) != 1
            or sources_bridge.kind(self.components[0]).restore_component is None
        ):
            raise ConfigError(
                f"--{elsewhere[0].replace('_', '-')} needs --component naming one bucket component",
                file=platform.source,
            )

    def _refusal(self, component) -> str | None:  # type: ignore[no-untyped-def]
        """Why the snapshot's record of ``component`` must not steer a live restore, or None."""
        recorded = self.recorded.get(component.name, {})
        kind_ = sources_bridge.kind(component)
        if not isinstance(recorded, dict):
            return "the snapshot's record of it is not readable"
        if kind_.files:
            named = {os.path.abspath(p) for p in component.get("paths") or []}
            paths = recorded.get("paths", [])
            if not isinstance(paths, list):
                return "the snapshot's list of paths is not readable"
            extra = [p for p in paths if p not in named]
            if extra:
                return (
                    f"the snapshot records path {extra[0]!r}, which the platform file does not "
                    "name for this component"
                )
            return None
        if kind_.module is None:
            return None  # a kind with its own layout (bucket) writes what the platform names
        databases = recorded.get("databases", {})
        if not isinstance(databases, dict):
            return "the snapshot's list of databases is not readable"
        for name, record in databases.items():
            reason = sources_bridge.dump_refusal(component, name, record)
            if reason is not None:
                return f"the snapshot records {reason}"
        return None

    def _files_paths(self, component) -> list[str]:  # type: ignore[no-untyped-def]
        """The paths a live restore of a files component writes: those the platform file
        names that the snapshot holds."""
        recorded = self.recorded.get(component.name, {}).get("paths", [])
        return [
            path
            for path in (os.path.abspath(p) for p in component.get("paths") or [])
            if path in recorded
        ]

    @property
    def live(self) -> bool:
        elsewhere = self.kind_options.get("to_bucket") or self.kind_options.get("to_endpoint")
        return self.target is None and self.to_database is None and not elsewhere

    def plan(self) -> list[str]:
        """Human-readable steps, in order."""
        steps = []
        services = self.platform.services if self.live else None
        if self.live:
            steps += [f"run hook: {h}" for h in self.platform.hooks.get("before_restore", [])]
        if services:
            steps.append(f"stop services: {', '.join(self._services_to_stop())}")
        for component in self.components:
            if self.target is None and component.name in self.refused:
                steps.append(f"{component.name}: REFUSED: {self.refused[component.name]}")
                continue
            if self.target is not None:
                steps.append(
                    f"{component.name}: write to {os.path.join(self.target, component.name)}"
                )
            elif sources_bridge.kind(component).files:
                for path in self._files_paths(component):
                    steps.append(
                        f"{component.name}: move {path} aside, restore it from the snapshot"
                    )
            elif sources_bridge.kind(component).restore_component is not None:
                steps.append(f"{component.name}: restore it ({component.type})")
            else:
                if self.live and hasattr(sources_bridge.kind(component).module, "restore_globals"):
                    steps.append(
                        f"{component.name}: apply roles and grants ({sources_bridge.GLOBALS_FILE})"
                    )
                for filename, name in self._dumps(component):
                    into = self.to_database or name
                    steps.append(
                        f"{component.name}: replace {component.type} database {into} "
                        f"with {filename}"
                    )
        if services:
            steps.append(f"start services: {', '.join(reversed(self._services_to_stop()))}")
        if self.live:
            steps += [f"run hook: {h}" for h in self.platform.hooks.get("after_restore", [])]
        return steps

    def _services_to_stop(self) -> list[str]:
        services = self.platform.services or {}
        hosting = {
            c.get("via", {}).get("service")
            for c in self.components
            if not sources_bridge.kind(c).files and isinstance(c.get("via"), dict)
        }
        return [name for name in services.get("stop", []) if name not in hosting]

    def _dumps(self, component) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
        """(file in the snapshot, database name) of the dumps to restore, as the backup recorded."""
        recorded = self.recorded.get(component.name, {}).get("databases", {})
        result = [
            (record["file"], name)
            for name, record in recorded.items()
            if not self.database or name == self.database
        ]
        if self.database and not result:
            raise ConfigError(
                f"component {component.name} holds no database {self.database!r} "
                f"(it has: {', '.join(recorded) or 'none'})",
                file=self.platform.source,
            )
        if self.to_database and len(result) != 1:
            names = ", ".join(name for _, name in result)
            raise ConfigError(
                f"component {component.name} holds several databases ({names}): "
                "choose one with --database",
                file=self.platform.source,
            )
        return result

    # ---------------------------------------------------------------- running

    def run(self) -> RestoreOutcome:
        outcome = RestoreOutcome()
        if self.target is not None:
            for component in self.components:
                self._extract(component, outcome)
            return outcome
        if self.live:
            run_hooks(self.platform.hooks, "before_restore", log=self.log)
        services = self.platform.services if self.live else None
        context = (
            stopped(
                {**services, "stop": self._services_to_stop()},
                sources_bridge.service_runner(services),
                log=self.log,
            )
            if services
            else nullcontext()
        )
        # A database whose own server the services' stop command stops is restored first,
        # while it runs; the rest inside the stop.
        early = [
            c
            for c in self.components
            if services
            and (c.get("stopped_with_services") or sources_bridge.kind(c).before_stop)
            and c.name not in self.refused
        ]
        for name, reason in self.refused.items():
            outcome.problems.append(
                f"{name}: not restored: {reason} (the platform file decides what a restore "
                "writes; look at the snapshot with --target)"
            )
        for component in early:
            if sources_bridge.kind(component).restore_component is not None:
                self._restore_own(component, outcome)
            else:
                self._restore_dumps(component, outcome)
        with context as downtime:
            for component in self.components:
                if component in early or component.name in self.refused:
                    continue
                if sources_bridge.kind(component).files:
                    self._restore_files(component, outcome)
                elif sources_bridge.kind(component).restore_component is not None:
                    self._restore_own(component, outcome)
                else:
                    self._restore_dumps(component, outcome)
        outcome.downtime = getattr(downtime, "seconds", 0.0)
        if self.live:
            run_hooks(self.platform.hooks, "after_restore", log=self.log)
        return outcome

    def _extract(self, component, outcome: RestoreOutcome) -> None:  # type: ignore[no-untyped-def]
        destination = os.path.join(self.target, component.name)  # type: ignore[arg-type]
        stats = Restorer(self.repository, destination).restore(self.dirs[component.name], "/")
        self._collect(component.name, stats, outcome)

    def _collect(self, name: str, stats, outcome: RestoreOutcome) -> None:  # type: ignore[no-untyped-def]
        for problem in stats.damaged + stats.errors:
            outcome.problems.append(f"{name}: {problem['path']}: {problem['message']}")
        if stats.damaged.more or stats.errors.more:
            outcome.problems.append(
                f"{name}: ... and {stats.damaged.more + stats.errors.more} more files not restored"
            )
        outcome.problems += [f"{name}: exists, not replaced: {p}" for p in stats.skipped_paths]
        if stats.skipped_unnamed:
            outcome.problems.append(
                f"{name}: ... and {stats.skipped_unnamed} more existing paths not replaced"
            )
        if name not in outcome.restored:
            outcome.restored.append(name)

    def _restore_own(self, component, outcome: RestoreOutcome) -> None:  # type: ignore[no-untyped-def]
        """A kind that restores itself (a bucket): its hook gets the component's directory."""
        restore = sources_bridge.kind(component).restore_component
        result = restore(  # type: ignore[misc]
            self.repository,
            self.dirs[component.name],
            sources_bridge.source_settings(component),
            self.kind_options,
            self.log,
        )
        outcome.problems += [f"{component.name}: {problem}" for problem in result.problems]
        outcome.notes += [f"{component.name}: {note}" for note in result.notes]
        outcome.restored.append(component.name)

    def _restore_dumps(self, component, outcome: RestoreOutcome) -> None:  # type: ignore[no-untyped-def]
        module = source_module(component.type)
        target = sources_bridge.target_for(component, self.platform.services)
        settings = sources_bridge.source_settings(component)
        files = {
            os.fsdecode(e["name"]): e
            for e in tree.load_tree(self.repository, self.dirs[component.name]["subtree"])
        }
        restore_globals = getattr(module, "restore_globals", None)
        if self.live and restore_globals and sources_bridge.GLOBALS_FILE in files:
            self.log(f"{component.name}: restoring roles ({sources_bridge.GLOBALS_FILE})")
            with tree.EntryReader(self.repository, files[sources_bridge.GLOBALS_FILE]) as stream:
                restore_globals(settings, target, stream)
        for filename, name in self._dumps(component):
            into = self.to_database
            self.log(f"{component.name}: restoring {filename}" + (f" into {into}" if into else ""))
            with tree.EntryReader(self.repository, files[filename]) as stream:
                module.restore(settings, target, name, stream, into=into)
            self._compare_rows(component, module, target, settings, name, into, outcome)
        outcome.restored.append(component.name)

    def _compare_rows(self, component, module, target, settings, name, into, outcome) -> None:  # type: ignore[no-untyped-def]
        record = self.recorded.get(component.name, {}).get("databases", {}).get(name, {})
        if record.get("rows") is None or not hasattr(module, "row_counts"):
            return
        actual = module.row_counts(settings, target, into or name)
        for table, count in sorted(record["rows"].items()):
            if actual.get(table) != count:
                message = (
                    f"{component.name}/{into or name}.{table}: {actual.get(table)} rows, "
                    f"{count} recorded at backup"
                )
                if record.get("rows_exact"):
                    outcome.row_mismatches.append(message)
                else:
                    outcome.notes.append(
                        message + " (counted after the dump, so writes during "
                        "the backup can explain it)"
                    )

    def _restore_files(self, component, outcome: RestoreOutcome) -> None:  # type: ignore[no-untyped-def]
        subtree_root = tree.root_entry(self.dirs[component.name]["subtree"])
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.clock()))
        for path in self._files_paths(component):
            entry = tree.find(
                self.repository, {"tree": subtree_root["subtree"], "id": self.snapshot["id"]}, path
            )
            if os.path.lexists(path):
                aside = f"{path}.safehold-{stamp}"
                try:
                    os.rename(path, aside)
                except OSError as error:
                    raise SafeholdError(
                        f"cannot move {path} aside to {aside} before restoring: "
                        f"{error.strerror}; nothing was changed"
                    ) from None
                outcome.moved_aside.append((path, aside))
                self.log(f"{component.name}: moved {path} to {aside}")
            if entry["type"] == DIR:
                stats = Restorer(self.repository, path).restore(entry, path, root_metadata=True)
            else:
                stats = Restorer(self.repository, os.path.dirname(path)).restore(entry, path)
            self._collect(component.name, stats, outcome)
