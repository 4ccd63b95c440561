"""Finding snapshots: list, resolve 'latest' / id prefixes, choose a backup's parent; typed
views of what a snapshot records.

Snapshots stay the dicts the repository stores (docs/format.md, "Snapshots"); code that reads
their fields across modules reads them through :class:`SnapshotRecord` and
:class:`ComponentRecord`, which say once what the fields are and tolerate old or damaged
snapshots (a missing or mistyped field reads as its default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from safehold.errors import SnapshotNotFound
from safehold.repo.repository import Repository


def _typed(value: Any, kind: type, default: Any) -> Any:
    return value if isinstance(value, kind) else default


@dataclass(frozen=True)
class ComponentRecord:
    """What a platform snapshot records about one component (``components[]``)."""

    name: str
    type: str = ""
    status: str = ""
    error: str | None = None
    bytes: int = 0
    critical: bool = True
    databases: dict = field(default_factory=dict)  # dumps: name -> {file, bytes, rows, ...}
    paths: list = field(default_factory=list)  # files: the absolute paths backed up
    details: dict = field(default_factory=dict)  # kind-specific (bucket: per-bucket counts)

    @classmethod
    def from_dict(cls, record: Any) -> ComponentRecord:
        """The record of a ``components[]`` entry (a non-mapping reads as an empty one)."""
        record = record if isinstance(record, dict) else {}
        return cls(
            name=str(record.get("name", "")),
            type=str(record.get("type", "")),
            status=str(record.get("status", "")),
            error=_typed(record.get("error"), str, None),
            bytes=_typed(record.get("bytes"), int, 0),
            critical=_typed(record.get("critical"), bool, True),
            databases=_typed(record.get("databases"), dict, {}),
            paths=_typed(record.get("paths"), list, []),
            details=_typed(record.get("details"), dict, {}),
        )


@dataclass(frozen=True)
class SnapshotRecord:
    """The fields of a snapshot that modules beyond the repository read."""

    id: str
    time: float
    hostname: str = ""
    tags: list = field(default_factory=list)
    paths: list = field(default_factory=list)
    platform: str | None = None
    status: str | None = None
    parent: str | None = None
    components: tuple[ComponentRecord, ...] = ()

    @classmethod
    def from_dict(cls, snapshot: dict) -> SnapshotRecord:
        """The record of a loaded snapshot (its ``id`` set by the repository)."""
        components = _typed(snapshot.get("components"), list, [])
        return cls(
            id=str(snapshot.get("id", "")),
            time=float(_typed(snapshot.get("time"), (int, float), 0.0)),
            hostname=str(snapshot.get("hostname") or ""),
            tags=_typed(snapshot.get("tags"), list, []),
            paths=_typed(snapshot.get("paths"), list, []),
            platform=_typed(snapshot.get("platform"), str, None),
            status=_typed(snapshot.get("status"), str, None),
            parent=_typed(snapshot.get("parent"), str, None),
            components=tuple(ComponentRecord.from_dict(c) for c in components),
        )

    def component(self, name: str) -> ComponentRecord | None:
        """The record of the component ``name``, or None."""
        return next((c for c in self.components if c.name == name), None)


def platform_snapshots(repository: Repository, platform: str, **filters: Any) -> list[dict]:
    """The snapshots of one platform (oldest first), with list_snapshots' filters."""
    return [
        snapshot
        for snapshot in list_snapshots(repository, **filters)
        if SnapshotRecord.from_dict(snapshot).platform == platform
    ]


def list_snapshots(
    repository: Repository,
    *,
    host: str | None = None,
    tags: list[str] | None = None,
    paths: list[str] | None = None,
) -> list[dict]:
    """Return the snapshots (oldest first) that match all the given filters. A damaged one is
    skipped and named in ``repository.damaged`` (the command line warns about it)."""
    result = []
    names = repository.snapshot_names()
    ids = [name.split("/", 1)[1] for name in names]
    for snapshot in repository.load_snapshots(ids, skip_damaged=True):
        if host and snapshot.get("hostname") != host:
            continue
        if tags and not set(tags) <= set(snapshot.get("tags", [])):
            continue
        if paths and sorted(paths) != sorted(snapshot.get("paths", [])):
            continue
        result.append(snapshot)
    return sorted(result, key=lambda snapshot: snapshot["time"])


def resolve(repository: Repository, spec: str, **filters: object) -> dict:
    """Return the snapshot named by ``spec``: 'latest' or a unique hex id prefix (>= 4 chars)."""
    if spec == "latest":
        snapshots = list_snapshots(repository, **filters)  # type: ignore[arg-type]
        if not snapshots:
            raise SnapshotNotFound(spec=spec)
        return snapshots[-1]
    spec = spec.lower()
    if len(spec) < 4 or any(c not in "0123456789abcdef" for c in spec):
        raise SnapshotNotFound(spec=spec)
    matches = [
        name.split("/", 1)[1]
        for name in repository.snapshot_names()
        if name.split("/", 1)[1].startswith(spec)
    ]
    if len(matches) != 1:
        raise SnapshotNotFound(spec=spec)
    return repository.load_snapshot(matches[0])


def split_spec(text: str) -> tuple[str, str]:
    """Split 'SNAPSHOT:/sub/path' into (snapshot spec, path); the path defaults to '/'."""
    spec, _, path = text.partition(":")
    return spec, (path or "/")
