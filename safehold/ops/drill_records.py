"""What a drill found, where drills are kept, and which snapshot a drill takes.

A drill's result is a plain dict (``DrillResult.record()``): stored, sealed like a snapshot,
as ``drills/<64 hex>`` (docs/format.md), and printed by ``safehold drill --json``.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

from safehold import __version__
from safehold.errors import UsageError
from safehold.platform.config import Platform
from safehold.repo.repository import Repository
from safehold.repo.snapshots import platform_snapshots, resolve
from safehold.store import NAMESPACES

DRILLS = "drills/"


@dataclass
class ComponentDrill:
    """The drill of one component: where it went, how long it took, what was found."""

    name: str
    type: str
    status: str = "passed"
    restored_into: str = ""
    setup_seconds: float = 0.0  # starting a throwaway server: not part of the RTO
    restore_seconds: float = 0.0
    verify_seconds: float = 0.0
    files: int = 0
    bytes: int = 0
    databases: dict = field(default_factory=dict)  # name -> {into, tables, rows, seconds}
    server: dict | None = None  # the throwaway server: kind, version, port, pid, removed
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class DrillResult:
    """A whole drill. ``record()`` is what is stored and what ``--json`` prints."""

    platform: str
    snapshot: str
    snapshot_time: float
    time: float
    duration: float = 0.0
    components: list[ComponentDrill] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(c.status == "failed" for c in self.components) or any(
            c["status"] == "failed" for c in self.checks
        )

    @property
    def rto_seconds(self) -> float:
        """The restore time objective: restore times of all components, one after another."""
        return sum(c.restore_seconds for c in self.components)

    def record(self) -> dict[str, Any]:
        """The drill as a plain dict (msgpack and JSON ready)."""
        return {
            "version": 1,
            "program": f"safehold {__version__}",
            "hostname": socket.gethostname(),
            "platform": self.platform,
            "snapshot": self.snapshot,
            "snapshot_time": self.snapshot_time,
            "time": self.time,
            "duration": self.duration,
            "status": "failed" if self.failed else "passed",
            "rto_seconds": self.rto_seconds,
            "components": [asdict(c) for c in self.components],
            "checks": self.checks,
            "notes": self.notes,
        }


# ---------------------------------------------------------------- choosing and storing


def choose_snapshot(
    repository: Repository,
    platform: Platform,
    spec: str | None = None,
    *,
    random_older: bool = False,
    rng: random.Random | None = None,
) -> tuple[dict, list[str]]:
    """Returns (the snapshot to drill, notes): ``spec`` (an id prefix or ``latest``, the
    default), or with ``random_older`` a random one of the platform's snapshots older than
    the latest (the latest itself if there is no other). Raises UsageError or
    SnapshotNotFound."""
    if spec and random_older:
        raise UsageError("give either a SNAPSHOT or --random-older, not both")
    snapshots = platform_snapshots(repository, platform.name)
    if spec and spec != "latest":
        snapshot = resolve(repository, spec)
        if snapshot.get("platform") != platform.name:
            raise UsageError(f"snapshot {spec} is not a snapshot of platform {platform.name}")
        return snapshot, []
    if not snapshots:
        raise UsageError(f"no snapshot of platform {platform.name} in this repository")
    if random_older and len(snapshots) > 1:
        return (rng or random.SystemRandom()).choice(snapshots[:-1]), []
    notes = ["--random-older: the platform has only one snapshot; drilling it"] * random_older
    return snapshots[-1], notes


def save_drill(repository: Repository, record: dict) -> str | None:
    """Stores a drill record as ``drills/<64 hex>`` (sealed, like snapshots); returns the name,
    or None if this safehold's store has no ``drills/`` namespace yet."""
    if DRILLS not in NAMESPACES:
        return None
    name = DRILLS + os.urandom(32).hex()
    repository.save_object(name, record)
    return name


def list_drills(repository: Repository, platform: str | None = None) -> list[dict]:
    """Returns the stored drill records (of one platform, if given), oldest first, each with
    its ``id``."""
    if DRILLS not in NAMESPACES:
        return []
    found = []
    for name, _size in repository.store.list(DRILLS.rstrip("/")):
        record = repository.load_object(name)
        if isinstance(record, dict) and platform in (None, record.get("platform")):
            found.append(dict(record, id=name.split("/", 1)[1]))
    return sorted(found, key=lambda record: record.get("time", 0))
