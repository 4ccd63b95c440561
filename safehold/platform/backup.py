"""One backup of a whole platform: hooks, hot phase, cold phase, one snapshot.

Snapshot layout (docs/format.md, "Platform snapshots"): the root tree holds one directory per
component. A files component's directory mirrors '/' below it (``/storage/opt/k-link/...``);
a database component's directory holds one dump per database (``/database/dms.sql``), plus
``_globals.sql`` for PostgreSQL roles; sqlite and command components hold one file.

Strategies: ``hot`` does everything while the platform runs. ``cold`` stops the services,
copies, starts them. ``hot+cold`` copies file components while running, stops, copies again
with the first copy as parent (only what changed is read), starts: the downtime is the second
pass only. Dumps of databases whose own service is stopped are taken before the stop; all
other dumps are taken inside the cold phase, consistent with the files.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from safehold import __version__
from safehold.archive.archiver import Archiver, Progress
from safehold.archive.entries import DIR, decode_tree
from safehold.errors import IntegrityError, SafeholdError, StorageError
from safehold.platform import sources_bridge
from safehold.platform.config import Component, Platform
from safehold.platform.hooks import run_hooks
from safehold.platform.services import Downtime, ServiceError, stopped
from safehold.repo.repository import Repository
from safehold.repo.snapshots import platform_snapshots
from safehold.repo.writer import BlobWriter
from safehold.secrecy import mask


@dataclass
class ComponentResult:
    """What happened to one component, as recorded in the snapshot."""

    name: str
    type: str
    status: str = "pending"
    phase: str = "hot"
    error: str | None = None
    bytes: int = 0
    duration: float = 0.0
    critical: bool = True
    databases: dict = field(default_factory=dict)
    server_version: str | None = None
    errors: list = field(default_factory=list)  # the first ones named (archive/problems.py)
    errors_more: int = 0  # the others, counted
    paths: list = field(default_factory=list)
    details: dict = field(default_factory=dict)  # kind-specific counts (bucket: per bucket)


@dataclass
class PlatformBackupResult:
    snapshot_id: str
    snapshot: dict
    components: list[ComponentResult]

    @property
    def status(self) -> str:
        failed = [c for c in self.components if c.status == "failed"]
        if any(c.critical for c in failed):
            return "failed"
        if failed or any(c.errors or c.errors_more for c in self.components):
            return "partial"
        return "ok"


def _stopped_service_of(component: Component, services: dict | None) -> bool:
    """True if the component's own service is among those the cold phase stops."""
    if not services:
        return False
    if component.get("stopped_with_services"):
        return True
    via = component.get("via")
    names = [name.split("/")[-1] for name in services.get("stop", [])]
    if isinstance(via, dict):
        if via.get("exec") == "compose":
            return via.get("service") in names
        if via.get("exec") == "kubectl":
            return any(str(via.get("pod", "")).startswith(name) for name in names)
        if via.get("exec") == "docker":
            return via.get("container") in names
    return False


def previous_platform_snapshot(repository: Repository, platform: str, hostname: str) -> dict | None:
    candidates = platform_snapshots(repository, platform, host=hostname)
    return candidates[-1] if candidates else None


class PlatformBackup:
    """Runs one platform backup. Create, then call ``run()``."""

    def __init__(
        self,
        repository: Repository,
        platform: Platform,
        *,
        tags: list[str] | None = None,
        log: Callable[[str], None] = lambda text: None,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repository = repository
        self.platform = platform
        self.tags = list(platform.tags) + list(tags or [])
        self.log = log
        self.progress = progress
        self.clock = clock
        self.hostname = platform.hostname or socket.gethostname()
        self.results = {
            c.name: ComponentResult(c.name, c.type, critical=c.critical)
            for c in platform.components
        }
        self.entries: dict[str, dict] = {}
        self.downtime: Downtime | None = None
        self.start_failure: ServiceError | None = None  # services not started again

    def run(self) -> PlatformBackupResult:
        run_hooks(self.platform.hooks, "before_backup", log=self.log)
        started = self.clock()
        with self.repository.lock():
            parent = previous_platform_snapshot(self.repository, self.platform.name, self.hostname)
            parent_trees = self._component_trees(parent)
            with BlobWriter(self.repository) as writer:
                known = self.repository.load_dir_table(parent) if parent else None
                with Archiver(
                    self.repository, writer, progress=self.progress, known_dirs=known
                ) as archiver:
                    self._phases(archiver, parent_trees)
                    root = archiver.store_directory(
                        "",
                        list(self.entries.values()),
                        mtime_ns=0,
                        previous=parent["tree"] if parent else None,
                    )
                    root = root["subtree"]
                writer.flush()
            snapshot = self._snapshot(root, parent, started, writer)
            snapshot_id = self.repository.save_snapshot(snapshot)  # verifies the lock first
            self.repository.save_dir_table(
                snapshot_id, root, archiver.new_dirs, superseded=parent["id"] if parent else None
            )
        if self.start_failure is not None:
            raise ServiceError(
                f"{self.start_failure} (the backup itself is complete: snapshot "
                f"{snapshot_id[:8]} holds the data copied while they were stopped)"
            )
        result = PlatformBackupResult(
            snapshot_id, dict(snapshot, id=snapshot_id), list(self.results.values())
        )
        run_hooks(self.platform.hooks, "after_backup", log=self.log)
        return result

    # ---------------------------------------------------------------- phases

    def _phases(self, archiver: Archiver, parent_trees: dict[str, bytes]) -> None:
        strategy, services = self.platform.strategy, self.platform.services
        files = [c for c in self.platform.components if sources_bridge.kind(c).files]
        dumps = [c for c in self.platform.components if c not in files]
        early = [
            c
            for c in dumps
            if strategy != "hot"
            and (sources_bridge.kind(c).before_stop or _stopped_service_of(c, services))
        ]
        late = [c for c in dumps if c not in early]
        for component in early:
            self._component(archiver, component, parent_trees, "hot")
        if strategy == "hot":
            for component in files + late:
                self._component(archiver, component, parent_trees, "hot")
            return
        if strategy == "hot+cold":
            for component in files:
                self._component(archiver, component, parent_trees, "hot")
            # The hot copy is the parent of the cold pass: only what changed since is read. Its
            # trees must be readable, so the pack they sit in is written out first.
            archiver.writer.flush()
            # The cold pass may take the hot pass's directories as known; but only the cold
            # pass's own go into the snapshot's table (a hot tree the cold pass replaced is
            # in no snapshot, and the next prune deletes it).
            archiver.known_dirs = {**archiver.known_dirs, **archiver.new_dirs}
            archiver.new_dirs = {}
            parent_trees = {
                **parent_trees,
                **{
                    c.name: self.entries[c.name]["subtree"] for c in files if c.name in self.entries
                },
            }
        runner = sources_bridge.service_runner(services)  # type: ignore[arg-type]
        copied = False
        try:
            with stopped(services, runner, log=self.log) as downtime:  # type: ignore[arg-type]
                self.downtime = downtime
                for component in files + late:
                    self._component(archiver, component, parent_trees, "cold")
                copied = True
        except ServiceError as error:
            if not copied:
                raise  # stopping failed, or the cold phase itself: no snapshot of it
            # Only starting again failed: what was copied while the services were stopped is
            # consistent, so the snapshot is written first and the error raised after it.
            self.start_failure = error
            self.log(f"{error}; the snapshot is written all the same")

    def _component(
        self, archiver: Archiver, component: Component, parent_trees: dict[str, bytes], phase: str
    ) -> None:
        result = self.results[component.name]
        result.phase, result.status, result.error = phase, "running", None
        began = time.monotonic()
        self.log(f"{component.name}: {component.type} ({phase})")
        before = archiver.stats.bytes_total
        named_before, errors_before = len(archiver.stats.errors), archiver.stats.errors.total
        try:
            entry = sources_bridge.kind(component).backup(
                archiver,
                sources_bridge.source_settings(component),
                sources_bridge.target_for(component, self.platform.services),
                parent_trees.get(component.name),
                result,
            )
        except (StorageError, IntegrityError):
            raise  # the repository itself failed: nothing else can be saved either
        except (SafeholdError, OSError) as error:
            result.status, result.error = "failed", _one_line(error)
            self.log(f"{component.name}: FAILED: {result.error}")
            return
        finally:
            result.duration = time.monotonic() - began
        self.entries[component.name] = entry
        result.bytes = archiver.stats.bytes_total - before
        result.errors = archiver.stats.errors[named_before:]
        result.errors_more = archiver.stats.errors.total - errors_before - len(result.errors)
        result.status = "ok"

    # ---------------------------------------------------------------- snapshot

    def _component_trees(self, snapshot: dict | None) -> dict[str, bytes]:
        if snapshot is None:
            return {}
        entries = decode_tree(self.repository.load_tree_blob(snapshot["tree"], cached=True))
        return {os.fsdecode(e["name"]): e["subtree"] for e in entries if e["type"] == DIR}

    def _snapshot(
        self, root: bytes, parent: dict | None, started: float, writer: BlobWriter
    ) -> dict:
        results = list(self.results.values())
        paths = [
            path
            for c in self.platform.components
            if sources_bridge.kind(c).files
            for path in c.get("paths")
        ]
        status = PlatformBackupResult("", {}, results).status
        return {
            "version": 1,
            "time": started,
            "hostname": self.hostname,
            "username": _username(),
            "paths": paths,
            "tags": sorted(set(self.tags) | {f"component:{c.name}" for c in results}),
            "tree": root,
            "parent": parent["id"] if parent else None,
            "program": f"safehold {__version__}",
            "excludes": [],
            "platform": self.platform.name,
            "strategy": self.platform.strategy,
            "status": status,
            "downtime": asdict(self.downtime) if self.downtime else None,
            "components": [asdict(c) for c in results],
            "summary": {
                "duration": self.clock() - started,
                "bytes_total": sum(c.bytes for c in results),
                "bytes_added_raw": writer.stats.bytes_new_raw,
                "bytes_added_stored": writer.stats.bytes_new_stored,
                "errors": [e for c in results for e in c.errors],
                "errors_more": sum(c.errors_more for c in results),
                "warnings": [],
            },
        }


def _one_line(error: BaseException) -> str:
    text = mask(str(error)).strip().splitlines()  # stored in the snapshot: no secret in it
    return text[0] if text else type(error).__name__


def _username() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
