"""Copying snapshots from one repository to another (``safehold copy``).

The two repositories have different master keys, so the same content has different blob ids
in each (keyed BLAKE3 under each id key). A copy walks every snapshot's trees depth first;
each data blob is loaded from the source (decrypted and verified), given its target id, and
stored in the target only if the target lacks it; each tree is rewritten with the target ids
and stored; after a flush (packs, then an index file) the snapshot is written with a new tree
id and ``copied_from`` / ``copied_from_repository`` naming where it came from. Chunks are
copied as they are (not re-chunked with the target's seed), so copies of the same source
deduplicate in the target with each other, not with backups made directly into it.

Memory: an ``IdMap`` (source id -> target id) keeps each target id (32 bytes and a flag) at
the number of its source blob in the source's index (``Index.ordinal``), in an anonymous
mapping sized for the whole index and touched only where set: at most 33 bytes a blob of the
source (33 MiB for a million), never merged or copied, no source id held (before: sorted
arrays of both ids, 64 bytes a pair and twice that while merging). Trees are walked depth
first, holding the entries of the directories on the current path only.
Seeding: before a snapshot is copied, the target copy of its parent (or else of the latest
copied snapshot of the same host and paths) is walked side by side with its source, so the
blobs and whole subtrees it already has are known without reading their data again.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass, field

from safehold.archive.entries import DIR, decode_tree, encode_tree
from safehold.errors import IntegrityError, UsageError
from safehold.repo.format import BLOB_DATA, BLOB_TREE
from safehold.repo.index import Index
from safehold.repo.repository import Repository
from safehold.repo.snapshots import list_snapshots, resolve
from safehold.repo.writer import BlobWriter
from safehold.store import ObjectMissing

COPY_FIELDS_DROPPED = ("id",)


@dataclass
class CopiedSnapshot:
    """One snapshot's outcome: ``target`` is the id in the target (new or found)."""

    source: str
    target: str
    skipped: bool = False
    blobs: int = 0  # data blobs referenced by the snapshot's new trees
    blobs_new: int = 0  # blobs (data and tree) stored in the target
    bytes_read: int = 0  # plaintext bytes loaded from the source
    bytes_added_raw: int = 0
    bytes_added_stored: int = 0


@dataclass
class CopyResult:
    """What ``copy_snapshots`` did, snapshot by snapshot (oldest first)."""

    snapshots: list[CopiedSnapshot] = field(default_factory=list)

    @property
    def copied(self) -> list[CopiedSnapshot]:
        return [item for item in self.snapshots if not item.skipped]

    @property
    def skipped(self) -> list[CopiedSnapshot]:
        return [item for item in self.snapshots if item.skipped]


def select_snapshots(source: Repository, specs: list[str]) -> list[dict]:
    """The source snapshots named by ``specs`` ('latest' or id prefixes), oldest first and
    each once; all snapshots when ``specs`` is empty."""
    if not specs:
        return list_snapshots(source)
    chosen = {snapshot["id"]: snapshot for snapshot in (resolve(source, s) for s in specs)}
    return sorted(chosen.values(), key=lambda snapshot: snapshot["time"])


def existing_copies(source: Repository, target: Repository) -> dict[str, dict]:
    """Source snapshot id -> the target snapshot holding it: a copy made from the source, or
    (copying back) the original that a source snapshot was itself copied from."""
    source_id, target_id = source.config["id"], target.config["id"]
    found: dict[str, dict] = {}
    for snapshot in list_snapshots(target):
        if snapshot.get("copied_from_repository") == source_id and snapshot.get("copied_from"):
            found[snapshot["copied_from"]] = snapshot
    for snapshot in list_snapshots(source):
        if snapshot.get("copied_from_repository") == target_id:
            original = snapshot.get("copied_from")
            if original and target.store.exists("snapshots/" + original):
                found[snapshot["id"]] = target.load_snapshot(original)
    return found


class IdMap:
    """Source blob id -> target blob id, for data blobs and trees (see the module docstring).

    The target ids sit in one array of 32 bytes per blob of the source's index, at the
    blob's number there (``Index.ordinal``; the source's index is only read during a copy,
    so the numbers stay), with a byte per blob saying whether it is set: no source id is
    held and nothing is merged or copied as the map grows. Both are anonymous mappings, so
    the pages of blobs never mapped cost nothing. A blob the index does not number (not in
    it: a seed's id that the source lacks) goes into a dict."""

    def __init__(self, source_index: Index) -> None:
        self._index = source_index
        count = source_index.ordinal_count()
        self._targets = mmap.mmap(-1, 32 * count) if count else bytearray()
        self._set = mmap.mmap(-1, count) if count else bytearray()
        self._count = 0
        self._others: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return self._count + len(self._others)

    def get(self, source_id: bytes) -> bytes | None:
        number = self._index.ordinal(source_id)
        if number is None:
            return self._others.get(source_id)
        if not self._set[number]:
            return None
        return self._targets[32 * number : 32 * number + 32]

    def __contains__(self, source_id: bytes) -> bool:
        return self.get(source_id) is not None

    def get_many(self, source_ids: list[bytes]) -> list[bytes | None]:
        """``get`` for each of ``source_ids``."""
        return [self.get(source_id) for source_id in source_ids]

    def put(self, source_id: bytes, target_id: bytes) -> None:
        number = self._index.ordinal(source_id)
        if number is None:
            self._others[source_id] = target_id
            return
        self._targets[32 * number : 32 * number + 32] = target_id
        if not self._set[number]:
            self._set[number] = 1
            self._count += 1

    def seed(self, source: Repository, target: Repository, source_tree: bytes, target_tree: bytes):
        """Learn the ids of a snapshot already copied by walking its two trees side by side.
        Anything that does not line up, or is missing from the target, is left out."""
        stack = [(source_tree, target_tree)]
        while stack:
            source_id, target_id = stack.pop()
            if source_id in self or target_id not in target.index:
                continue
            left = decode_tree(source.load_blob(source_id))
            right = decode_tree(target.load_blob(target_id))
            if [(e["name"], e["type"]) for e in left] != [(e["name"], e["type"]) for e in right]:
                continue
            for a, b in zip(left, right, strict=True):
                if a["type"] == DIR:
                    stack.append((a["subtree"], b["subtree"]))
                elif len(a.get("content") or []) == len(b.get("content") or []):
                    for x, y in zip(a.get("content") or [], b.get("content") or [], strict=True):
                        if y in target.index:
                            self.put(x, y)
            # A tree is mapped only once its subtrees were queued: a reader of the map that
            # finds a tree may take its whole subtree as present in the target.
            self.put(source_id, target_id)


class Copier:
    """Copies snapshots from ``source`` to ``target`` through one BlobWriter on the target."""

    def __init__(self, source: Repository, target: Repository, writer: BlobWriter) -> None:
        self.source = source
        self.target = target
        self.writer = writer
        self.ids = IdMap(source.index)
        self._seeded: set[str] = set()
        self._current: CopiedSnapshot | None = None

    def copy_tree(self, root: bytes) -> bytes:
        """Copy a tree and everything below it; return the tree's target id.

        Depth first with an explicit stack (any depth): what is held is the entries of the
        directories on the current path. A directory's file data is copied when it is read,
        its tree stored once all its subdirectories are."""
        known = self.ids.get(root)
        if known is not None:
            return known
        stack = [self._enter(root)]
        while True:
            tree_id, entries, position = stack[-1]
            while position < len(entries):
                entry = entries[position]
                if entry["type"] == DIR:
                    known = self.ids.get(entry["subtree"])
                    if known is None:
                        break  # copied first; this directory resumes here
                    entry["subtree"] = known
                position += 1
            if position < len(entries):
                stack[-1] = (tree_id, entries, position)
                stack.append(self._enter(entries[position]["subtree"]))
                continue
            stack.pop()
            data = encode_tree(entries)
            target_id = self.target.cipher.blob_id(data)
            self._store(BLOB_TREE, target_id, data)
            self.ids.put(tree_id, target_id)
            if not stack:
                return target_id

    def _enter(self, tree_id: bytes) -> tuple[bytes, list[dict], int]:
        """Read a tree and copy the data of its files (their ids looked up all at once)."""
        entries = decode_tree(self.source.load_blob(tree_id))
        files = [entry for entry in entries if entry["type"] != DIR and entry.get("content")]
        known = iter(self.ids.get_many([blob for entry in files for blob in entry["content"]]))
        for entry in files:
            entry["content"] = [self._copy_data(blob, next(known)) for blob in entry["content"]]
        return tree_id, entries, 0

    def _copy_data(self, blob_id: bytes, known: bytes | None) -> bytes:
        """The target id of a data blob (``known``: what the map said before this tree's
        files were copied), copying it unless it is there."""
        assert self._current is not None
        self._current.blobs += 1
        if known is None:  # copied earlier in this tree?
            known = self.ids.get(blob_id)
        if known is not None:
            return known
        data = self.source.load_blob(blob_id)  # verified against its id
        self._current.bytes_read += len(data)
        target_id = self.target.cipher.blob_id(data)
        self._store(BLOB_DATA, target_id, data)
        self.ids.put(blob_id, target_id)
        return target_id

    def _store(self, blob_type: int, blob_id: bytes, data: bytes) -> None:
        stats = self.writer.stats
        raw, stored = stats.bytes_new_raw, stats.bytes_new_stored
        if self.writer.add(blob_type, blob_id, data):
            assert self._current is not None
            self._current.blobs_new += 1
            self._current.bytes_added_raw += stats.bytes_new_raw - raw
            self._current.bytes_added_stored += stats.bytes_new_stored - stored

    def copy_snapshot(self, snapshot: dict, copies: dict[str, dict]) -> CopiedSnapshot:
        """Copy one snapshot (its data, trees, then the snapshot object) and record it in
        ``copies``; the writer is flushed before the snapshot is written."""
        self._current = outcome = CopiedSnapshot(snapshot["id"], "")
        self._seed(snapshot, copies)
        root = self.copy_tree(snapshot["tree"])
        self.writer.flush()
        parent = copies.get(snapshot.get("parent") or "")
        copied = {key: value for key, value in snapshot.items() if key not in COPY_FIELDS_DROPPED}
        copied.update(
            tree=root,
            parent=parent["id"] if parent else None,
            copied_from=snapshot["id"],
            copied_from_repository=self.source.config["id"],
        )
        outcome.target = self.target.save_snapshot(copied)
        copies[snapshot["id"]] = dict(copied, id=outcome.target)
        self._current = None
        return outcome

    def _seed(self, snapshot: dict, copies: dict[str, dict]) -> None:
        candidates = [copies.get(snapshot.get("parent") or "")]
        same = [
            (source_id, copy)
            for source_id, copy in copies.items()
            if copy.get("hostname") == snapshot.get("hostname")
            and copy.get("paths") == snapshot.get("paths")
        ]
        if same:
            candidates.append(max(same, key=lambda pair: pair[1]["time"])[1])
        for copy in candidates:
            if copy is None or copy["id"] in self._seeded:
                continue
            original = copy.get("copied_from")
            if copy.get("copied_from_repository") != self.source.config["id"] or not original:
                continue  # an original in the target (copying back): no source tree to pair
            try:
                source_tree = self.source.load_snapshot(original)["tree"]
            except (ObjectMissing, IntegrityError):  # forgotten or damaged: no seed from it
                continue
            self.ids.seed(self.source, self.target, source_tree, copy["tree"])
            self._seeded.add(copy["id"])
            return


def copy_snapshots(
    source: Repository,
    target: Repository,
    specs: list[str],
    *,
    report: Callable[[CopiedSnapshot], None] | None = None,
) -> CopyResult:
    """Copy the snapshots named by ``specs`` (all when empty) from ``source`` to ``target``,
    skipping those already there, under a shared lock on both repositories.

    Raises UsageError if both are the same repository; storage and integrity errors raise
    (snapshots copied before the error stay complete and valid in the target).
    """
    if source.config["id"] == target.config["id"]:
        raise UsageError("the source and the target are the same repository")
    result = CopyResult()
    with source.lock(), target.lock():
        chosen = select_snapshots(source, specs)
        copies = existing_copies(source, target)
        with BlobWriter(target) as writer:
            copier = Copier(source, target, writer)
            for snapshot in chosen:
                found = copies.get(snapshot["id"])
                if found is not None:
                    outcome = CopiedSnapshot(snapshot["id"], found["id"], skipped=True)
                else:
                    outcome = copier.copy_snapshot(snapshot, copies)
                result.snapshots.append(outcome)
                if report is not None:
                    report(outcome)
    return result
