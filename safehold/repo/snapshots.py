"""Finding snapshots: list, resolve 'latest' / id prefixes, choose a backup's parent."""

from __future__ import annotations

from safehold.errors import SnapshotNotFound
from safehold.repo.repository import Repository


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
