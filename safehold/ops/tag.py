"""Tag: change the tags of snapshots. Only snapshot metadata is rewritten, never data.

A snapshot object is never modified (docs/format.md): a retagged snapshot is written as a new
``snapshots/<new id>`` with the same content but its tags, and only then is the old object
deleted. A crash in between leaves both, which differ only in their tags (both are valid
snapshots of the same trees; ``safehold snapshots`` shows both, forget may drop either).

It runs under the exclusive lock (as forget: the snapshot list must not change between
reading and replacing), checks before each replacement that the lock is still its own, and is
refused in no-delete mode (exit 26), since it deletes the old object. Tags ``component:NAME``
of platform snapshots name their components and are kept whatever the options say.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from safehold.errors import UsageError
from safehold.repo.repository import Repository
from safehold.repo.snapshots import resolve
from safehold.store import ObjectMissing

RESERVED_PREFIX = "component:"


@dataclass
class Retagged:
    """One snapshot's outcome: its old and new id (equal if nothing changed) and tags."""

    old_id: str
    new_id: str
    tags: list[str]

    @property
    def changed(self) -> bool:
        return self.old_id != self.new_id


def split_tags(values: list[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (None stays None); empty or reserved tags are
    refused."""
    if values is None:
        return None
    tags: list[str] = []
    for value in values:
        for tag in (part.strip() for part in value.split(",")):
            if not tag and value.strip():
                raise UsageError(f"an empty tag in {value!r}")
            if tag.startswith(RESERVED_PREFIX):
                raise UsageError(
                    f"tag {tag!r}: tags starting with {RESERVED_PREFIX!r} name the components "
                    "of platform snapshots and are not changed by tag"
                )
            if tag and tag not in tags:
                tags.append(tag)
    return tags


def new_tags(
    current: list[str], add: list[str], remove: list[str], replace: list[str] | None
) -> list[str]:
    """The tags after the change, sorted; reserved tags of ``current`` always stay."""
    reserved = {tag for tag in current if tag.startswith(RESERVED_PREFIX)}
    result = set(replace) if replace is not None else set(current) - reserved
    result = (result | set(add)) - set(remove)
    return sorted(result | reserved)


def retag(
    repository: Repository,
    specs: list[str],
    *,
    add: list[str],
    remove: list[str],
    replace: list[str] | None,
    wait: float = 0.0,
    on_change: Callable[[Retagged], None] | None = None,
) -> list[Retagged]:
    """Give the snapshots named by ``specs`` their new tags (see the module docstring).

    Raises UsageError without any change requested, NoDeleteMode (26) in no-delete mode,
    RepositoryLocked (14) if another process holds the repository for longer than ``wait``
    seconds or the lock is lost on the way (the snapshots done so far stay done),
    SnapshotNotFound (17) for a spec that names none."""
    if not add and not remove and replace is None:
        raise UsageError("nothing to do: give --add, --remove or --set")
    repository.require_delete("tag")
    results: list[Retagged] = []
    with repository.lock(exclusive=True, wait=wait, operation="tag") as lock:
        snapshots = {}
        for spec in specs:  # all resolved before the first change: a bad spec changes nothing
            snapshot = resolve(repository, spec)
            snapshots[snapshot["id"]] = snapshot
        for old_id, snapshot in snapshots.items():
            tags = new_tags(list(snapshot.get("tags") or []), add, remove, replace)
            if tags == sorted(snapshot.get("tags") or []):
                results.append(Retagged(old_id, old_id, tags))
                continue
            lock.ensure_exclusive("tag")
            value = {key: item for key, item in snapshot.items() if key != "id"}
            value["tags"] = tags
            new_id = repository.save_snapshot(value)
            _carry_dir_table(repository, snapshot, new_id)
            try:
                repository.delete_snapshot(old_id)  # verifies the lock, like the save
            except ObjectMissing:
                pass  # removed meanwhile: the new one stands on its own
            result = Retagged(old_id, new_id, tags)
            results.append(result)
            if on_change is not None:
                on_change(result)
    return results


def _carry_dir_table(repository: Repository, snapshot: dict, new_id: str) -> None:
    """The local cache's directory table belongs to the snapshot's trees, which did not
    change: keep it for the new id, so the next backup still finds its unchanged folders."""
    table = repository.load_dir_table(snapshot)
    if table:
        repository.save_dir_table(new_id, snapshot["tree"], table, superseded=snapshot["id"])
