"""Repair: rebuild the index from the packs, salvage snapshots that refer to lost data.

``repair index`` (docs/format.md, "Repair"): under the exclusive lock, read every pack, one at
a time; a pack whose BLAKE3 does not match its name or whose header cannot be read is reported
and left out (never deleted). The entries of all good packs' headers become a new set of index
files naming every old index file in ``supersedes``; once they are durable the old index files
are deleted (the order prune uses, so a crash leaves the union of old and new: correct).

``repair snapshots``: under the exclusive lock, every snapshot whose trees cannot all be read,
or that needs a data blob no index lists (or that lives in a pack that is gone), is copied into
a new snapshot without the unreadable subtrees and the files with missing blobs; the new
snapshot records ``repaired_from`` and ``dropped_paths``. The damaged snapshot is deleted only
after the new one is saved. Intact snapshots are not touched. A snapshot object that does not
authenticate (nothing in it can be read) is written again from the local object cache when
that holds an intact copy, and otherwise removed: it names nothing that could be recovered,
and while it exists prune cannot know what it needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from safehold.archive.entries import DIR, FILE, decode_tree, encode_tree
from safehold.crypto import AuthenticationFailed
from safehold.errors import IntegrityError
from safehold.repo.format import BLOB_TREE
from safehold.repo.index import encode_index_file
from safehold.repo.pack import PackMismatch, verified_entries
from safehold.repo.repository import Repository, snapshot_problem
from safehold.repo.writer import BlobWriter
from safehold.store import ObjectMissing

INDEX_FILE_RECORDS = 100_000  # records per new index file (about 4.7 MiB)


# ------------------------------------------------------------------------------ index


@dataclass
class IndexRepair:
    """What ``repair index`` found and did."""

    dry_run: bool = True
    packs: int = 0
    packs_read: int = 0
    blobs: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (pack hex, reason)
    index_files_old: int = 0
    index_files_written: int = 0
    index_files_deleted: int = 0

    def as_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "packs": self.packs,
            "packs_read": self.packs_read,
            "blobs": self.blobs,
            "damaged_packs": [{"pack": pack, "reason": reason} for pack, reason in self.damaged],
            "index_files_old": self.index_files_old,
            "index_files_written": self.index_files_written,
            "index_files_deleted": self.index_files_deleted,
        }


def repair_index(
    repository: Repository,
    *,
    dry_run: bool = False,
    wait: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> IndexRepair:
    """Rebuild the index from the pack headers (see the module docstring).

    Holds one pack and at most INDEX_FILE_RECORDS pending index records in memory. With
    ``dry_run`` every pack is read and checked but nothing is written or deleted.
    """
    report = progress or (lambda message: None)
    result = IndexRepair(dry_run=dry_run)
    repository.require_delete("repair index")  # no-delete mode: exit 26, nothing read
    repository.prove_from_repository()
    with repository.lock(exclusive=True, wait=wait, operation="repair index") as lock:
        old_names = repository.index_names()
        result.index_files_old = len(old_names)
        supersedes = [bytes.fromhex(name.split("/", 1)[1]) for name in old_names]
        pending: list[tuple[bytes, bytes, int, int, int, int]] = []

        def flush() -> None:
            nonlocal pending
            if pending and not dry_run:
                packs, records = encode_index_file(pending)
                repository.save_object(
                    "index/" + os.urandom(32).hex(),
                    {"version": 1, "packs": packs, "records": records, "supersedes": supersedes},
                )
                result.index_files_written += 1
            pending = []

        stored = sorted(repository.store.list("data"))
        result.packs = len(stored)
        for number, (name, _size) in enumerate(stored, 1):
            report(f"reading pack {number} of {len(stored)}")
            pack_hex = name.split("/", 1)[1]
            data = b""  # drop the previous pack before loading the next: one pack in memory
            try:
                data = repository.store.load(name)
            except ObjectMissing:
                continue  # deleted meanwhile (cannot happen under the lock): nothing to list
            result.packs_read += 1
            pack_id = bytes.fromhex(pack_hex)
            try:
                entries = verified_entries(repository.cipher, pack_id, data)
            except PackMismatch as error:
                result.damaged.append((pack_hex, str(error)))
                continue
            except (ValueError, AuthenticationFailed) as error:
                result.damaged.append((pack_hex, f"header unreadable ({error or 'modified'})"))
                continue
            for entry in entries:
                pending.append(entry.index_row(pack_id))
                result.blobs += 1
                if len(pending) >= INDEX_FILE_RECORDS:
                    flush()
        flush()
        if not dry_run:
            lock.ensure_exclusive("repair")
            report("deleting the old index files")
            for name in old_names:
                repository.store.discard(name)
                result.index_files_deleted += 1
    repository._index = None  # the next use loads the new index
    return result


# ------------------------------------------------------------------------------ snapshots


@dataclass
class SnapshotRepair:
    """One damaged snapshot and its replacement (``new_id`` is None in a dry run)."""

    old_id: str
    new_id: str | None
    dropped: list[bytes]


@dataclass
class SnapshotsRepair:
    dry_run: bool = True
    snapshots: int = 0
    repaired: list[SnapshotRepair] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # snapshot objects that do not decrypt
    from_cache: list[str] = field(default_factory=list)  # of those: written again from the cache
    removed: list[str] = field(default_factory=list)  # of those: removed (or would be)

    def as_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "snapshots": self.snapshots,
            "repaired": [
                {
                    "snapshot": item.old_id,
                    "new_snapshot": item.new_id,
                    "dropped": [path.decode("utf-8", "backslashreplace") for path in item.dropped],
                }
                for item in self.repaired
            ],
            "unreadable": self.unreadable,
            "from_cache": self.from_cache,
            "removed": self.removed,
        }


def _unreadable(
    repository: Repository, snapshot_id: str, result: SnapshotsRepair, dry_run: bool
) -> None:
    """A snapshot object that does not authenticate: put back the local cache's intact copy
    (sealed anew: the same snapshot), or remove it."""
    name = "snapshots/" + snapshot_id
    cache = repository.object_cache
    sealed = cache.get(name) if cache is not None else None
    value = None
    if sealed is not None:
        try:
            value = repository._open_object(name, sealed)
        except IntegrityError:
            value = None
    if value is not None and snapshot_problem(value) is None:
        result.from_cache.append(snapshot_id)
        if not dry_run:
            repository.verify_locks()
            repository.save_object(name, value)  # replaces the damaged bytes, same content
        return
    result.removed.append(snapshot_id)
    if not dry_run:
        repository.delete_snapshot(snapshot_id)


class _Salvage:
    """Rebuilds trees without what cannot be read; results are cached per tree id."""

    def __init__(self, repository: Repository, writer: BlobWriter | None) -> None:
        self.repository = repository
        self.index = repository.index
        self.packs = {bytes.fromhex(n.split("/", 1)[1]) for n, _ in repository.store.list("data")}
        self.writer = writer
        # tree id -> (new tree id or None if unreadable, dropped paths relative to the tree)
        self.done: dict[bytes, tuple[bytes | None, list[bytes]]] = {}

    def available(self, blob_id: bytes) -> bool:
        location = self.index.lookup(blob_id)
        return location is not None and location.pack_id in self.packs

    def tree(self, tree_id: bytes) -> tuple[bytes | None, list[bytes]]:
        """(new id of the tree, or None if it cannot be read; paths dropped below it)."""
        if tree_id in self.done:
            return self.done[tree_id]
        try:
            if not self.available(tree_id):
                raise IntegrityError(f"tree {tree_id.hex()[:16]} is not available")
            entries = decode_tree(self.repository.load_blob(tree_id))
        except (IntegrityError, ValueError, KeyError, TypeError):
            self.done[tree_id] = (None, [])
            return None, []
        kept: list[dict] = []
        dropped: list[bytes] = []
        for entry in entries:
            name = entry["name"]
            if entry["type"] == DIR:
                new_id, below = self.tree(entry["subtree"])
                if new_id is None:
                    dropped.append(name)
                    continue
                dropped += [name + b"/" + path for path in below]
                if new_id != entry["subtree"]:
                    entry = dict(entry, subtree=new_id)
            elif entry["type"] == FILE and not all(
                self.available(blob_id) for blob_id in entry.get("content") or []
            ):
                dropped.append(name)
                continue
            kept.append(entry)
        new_id = tree_id
        if dropped:
            data = encode_tree(kept)
            new_id = self.repository.cipher.blob_id(data)
            if self.writer is not None:
                self.writer.add(BLOB_TREE, new_id, data)
        self.done[tree_id] = (new_id, dropped)
        return new_id, dropped


def repair_snapshots(
    repository: Repository,
    *,
    dry_run: bool = False,
    wait: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> SnapshotsRepair:
    """Replace each damaged snapshot by a copy without what cannot be read (module docstring).

    Raises IntegrityError (nothing changed) if an index file cannot be read: then the index
    must be rebuilt first ('safehold repair index'), or readable data would be dropped.
    """
    report = progress or (lambda message: None)
    result = SnapshotsRepair(dry_run=dry_run)
    repository.require_delete("repair snapshots")  # no-delete mode: exit 26, nothing read
    repository.prove_from_repository()
    with repository.lock(exclusive=True, wait=wait, operation="repair snapshots") as lock:
        repository._index = None
        repository.index  # noqa: B018 (load it now: a damaged index file stops us here)
        damaged_index = sorted(name for name in repository.damaged if name.startswith("index/"))
        if damaged_index:
            raise IntegrityError(
                f"{damaged_index[0]} is damaged; nothing was changed: run 'safehold repair "
                "index' first"
            )
        # adopt=False: a pack 'repair index' left out must stay out (its blobs count as lost)
        writer = None if dry_run else BlobWriter(repository, adopt=False)
        try:
            salvage = _Salvage(repository, writer)
            plans: list[tuple[str, dict, bytes, list[bytes]]] = []
            for name in repository.snapshot_names():
                report(f"walking {name}")
                try:
                    snapshot = repository.load_object(name)
                except IntegrityError:
                    result.unreadable.append(name.split("/", 1)[1])
                    continue
                assert isinstance(snapshot, dict)
                result.snapshots += 1
                root = snapshot["tree"]
                new_root, dropped = salvage.tree(root)
                if new_root is None:  # not even the root tree can be read: keep an empty one
                    data = encode_tree([])
                    new_root, dropped = repository.cipher.blob_id(data), [b""]
                    if writer is not None:
                        writer.add(BLOB_TREE, new_root, data)
                if not dropped:
                    continue
                paths = [b"/" + path for path in dropped]
                plans.append((name, snapshot, new_root, paths))
            if writer is not None:
                writer.flush()  # new trees in packs, listed by an index file, before snapshots
        finally:
            if writer is not None:
                writer.close()
        for snapshot_id in result.unreadable:
            _unreadable(repository, snapshot_id, result, dry_run)
            lock.ensure_exclusive("repair")
        for name, snapshot, new_root, paths in plans:
            old_id = name.split("/", 1)[1]
            if dry_run:
                result.repaired.append(SnapshotRepair(old_id, None, paths))
                continue
            copy = dict(snapshot, tree=new_root, repaired_from=old_id, dropped_paths=paths)
            new_id = repository.save_snapshot(copy)
            lock.ensure_exclusive("repair")
            repository.store.discard(name)
            result.repaired.append(SnapshotRepair(old_id, new_id, paths))
    return result
