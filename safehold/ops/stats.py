"""Stats: how much each snapshot and each platform component holds, takes and adds.

Answered from the index and the snapshots' trees, never from file data: trees come from the
local tree cache where it has them (else from their packs); blob sizes from the index. Sizes:

- ``size``: what a restore writes (the snapshot's or component's recorded total);
- ``stored``: sealed bytes in packs of every blob it needs, each blob once (trees included);
- ``unique``: sealed bytes of the blobs no other snapshot (component) needs: exactly what
  ``prune`` frees from the packs' blob data once it alone is forgotten (tests/test_stats.py
  forgets and prunes to prove it; pack headers and index files are extra);
- ``added``: sealed bytes of the blobs it was the first (by time) to need; summed per day,
  the growth per day of what the snapshots now in the repository hold.

Memory: prune's flat table of the index (``BlobTable``) plus 9 bytes per index entry; trees
are walked one at a time, and a tree reached again is not walked again (except once, to mark
what is below it as shared), so the cost is about that of one prune's marking, three times.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from safehold.archive.entries import DIR
from safehold.archive.tree import load_tree
from safehold.errors import IntegrityError
from safehold.ops.prune_table import BlobTable
from safehold.repo.repository import Repository
from safehold.repo.snapshots import list_snapshots


@dataclass
class SnapshotStats:
    """One snapshot's figures (sizes in bytes, see the module docstring)."""

    snapshot: dict
    size: int = 0
    unique: int = 0
    added: int = 0


@dataclass
class GroupStats:
    """A platform component across all its snapshots, or the file backups of one host and
    set of paths (``platform`` None)."""

    platform: str | None
    name: str
    snapshots: int = 0
    size: int = 0  # of its newest snapshot
    stored: int = 0
    unique: int = 0


@dataclass
class Stats:
    snapshots: list[SnapshotStats]
    groups: list[GroupStats]
    growth: list[tuple[str, int, int]]  # (day, added bytes, snapshots that day)
    stored: int = 0  # every blob some snapshot needs, once
    unreferenced: int = 0  # indexed blob data no snapshot needs (prune's to free)
    blobs: int = 0
    pack_bytes: int = 0  # the data/ objects as listed
    packs: int = 0
    notes: list[str] = field(default_factory=list)


class _Marks:
    """Which unit (snapshot or group) first needed each blob, and whether another one did
    too; one int32 and one bool per index entry, at the first entry of each blob id."""

    def __init__(self, table: BlobTable) -> None:
        self.table = table
        self.owner = np.full(len(table), -1, dtype=np.int32)
        self.shared = np.zeros(len(table), dtype=bool)
        self.length = table.length.astype(np.int64)

    def positions(self, blob_ids: list[bytes], what: str) -> np.ndarray:
        if not len(self.table):
            raise IntegrityError(f"{what} needs blobs, but the index lists none")
        keys = np.array(blob_ids, dtype="S32")
        starts = np.searchsorted(self.table.ids, keys, "left")
        found = (starts < len(self.table)) & (
            self.table.ids[np.minimum(starts, len(self.table) - 1)] == keys
        )
        if not found.all():
            missing = blob_ids[int(np.flatnonzero(~found)[0])]
            raise IntegrityError(f"{what} needs blob {missing.hex()[:16]}, which is not indexed")
        return np.unique(starts)

    def claim(self, positions: np.ndarray, unit: int) -> int:
        """Mark blobs needed by ``unit``; returns the sealed bytes it is the first to need."""
        owner = self.owner[positions]
        new = positions[owner == -1]
        self.owner[new] = unit
        self.shared[positions[(owner != -1) & (owner != unit)]] = True
        return int(self.length[new].sum())

    def walk(self, repository: Repository, root: bytes, unit: int, what: str) -> int:
        """Claim every blob below tree ``root`` for ``unit``; returns the bytes it added.

        A tree this unit already claimed is not walked again; nor is one already shared (all
        below it is shared); a tree another unit claimed is walked once more, to mark all that
        is below it as shared."""
        added = 0
        stack = [root]
        while stack:
            tree_id = stack.pop()
            [position] = self.positions([tree_id], what)
            owner = int(self.owner[position])
            if owner == unit or self.shared[position]:
                continue
            added += self.claim(np.array([position]), unit)
            entries = load_tree(repository, tree_id)
            data = [blob for entry in entries for blob in entry.get("content") or []]
            if data:
                added += self.claim(self.positions(data, what), unit)
            stack.extend(entry["subtree"] for entry in entries if entry["type"] == DIR)
        return added

    def unique(self, units: int) -> np.ndarray:
        """Sealed bytes per unit of the blobs only that unit needs."""
        alone = (self.owner >= 0) & ~self.shared
        return np.bincount(self.owner[alone], weights=self.length[alone], minlength=units).astype(
            np.int64
        )


def _stored(repository: Repository, table: BlobTable, roots: list[bytes], what: str) -> int:
    """Sealed bytes of every blob below ``roots``, each once."""
    marks = _Marks(table)
    return sum(marks.walk(repository, root, 0, what) for root in roots)


def _group_key(snapshot: dict) -> tuple[str | None, str]:
    paths = ", ".join(snapshot.get("paths") or [])
    return None, f"{snapshot.get('hostname')}: {paths}"


def _component_roots(repository: Repository, snapshot: dict) -> dict[str, bytes]:
    entries = load_tree(repository, snapshot["tree"])
    return {os.fsdecode(e["name"]): e["subtree"] for e in entries if e["type"] == DIR}


def compute_stats(
    repository: Repository,
    *,
    progress: Callable[[str], None] | None = None,
    day_of: Callable[[float], str] = lambda moment: datetime.fromtimestamp(moment).strftime(
        "%Y-%m-%d"
    ),
) -> Stats:
    """Figures for every snapshot and group of the repository (see the module docstring).

    ``day_of`` names the day of an epoch time (default: local date). Raises IntegrityError if
    a tree cannot be read or a snapshot needs a blob the index does not list."""
    report = progress or (lambda message: None)
    report("loading index")
    table = BlobTable.load(repository)
    snapshots = list_snapshots(repository)
    report("walking snapshots")
    marks = _Marks(table)
    results = []
    for number, snapshot in enumerate(snapshots):
        what = "snapshot " + snapshot["id"][:8]
        added = marks.walk(repository, snapshot["tree"], number, what)
        size = int((snapshot.get("summary") or {}).get("bytes_total") or 0)
        results.append(SnapshotStats(snapshot, size=size, added=added))
    for result, unique in zip(results, marks.unique(len(snapshots)), strict=True):
        result.unique = int(unique)
    stats = Stats(results, _groups(repository, table, snapshots), _growth(results, day_of))
    used = marks.owner >= 0
    stats.stored = int(marks.length[used].sum())
    stats.blobs = int(used.sum())
    stats.unreferenced = int(marks.length.sum()) - stats.stored
    listed = list(repository.store.list("data"))
    stats.packs, stats.pack_bytes = len(listed), sum(size for _, size in listed)
    return stats


def _groups(repository: Repository, table: BlobTable, snapshots: list[dict]) -> list[GroupStats]:
    """Per platform component and per file-backup group: stored and unique bytes."""
    groups: dict[tuple[str | None, str], GroupStats] = {}
    roots: dict[tuple[str | None, str], list[bytes]] = {}
    marks = _Marks(table)
    for snapshot in snapshots:
        what = "snapshot " + snapshot["id"][:8]
        if snapshot.get("platform"):
            sizes = {c.get("name"): c.get("bytes", 0) for c in snapshot.get("components") or []}
            parts = [
                ((snapshot["platform"], name), tree_id, sizes.get(name, 0))
                for name, tree_id in _component_roots(repository, snapshot).items()
            ]
        else:
            size = int((snapshot.get("summary") or {}).get("bytes_total") or 0)
            parts = [(_group_key(snapshot), snapshot["tree"], size)]
        for key, tree_id, size in parts:
            group = groups.setdefault(key, GroupStats(key[0], key[1]))
            group.snapshots += 1
            group.size = int(size)
            roots.setdefault(key, []).append(tree_id)
            marks.walk(repository, tree_id, list(groups).index(key), what)
    for group, unique in zip(groups.values(), marks.unique(len(groups)), strict=True):
        group.unique = int(unique)
    for key, group in groups.items():
        group.stored = _stored(repository, table, roots[key], f"{key[0] or ''}/{key[1]}")
    return list(groups.values())


def _growth(
    results: list[SnapshotStats], day_of: Callable[[float], str]
) -> list[tuple[str, int, int]]:
    days: dict[str, list[int]] = {}
    for result in results:
        day = days.setdefault(day_of(result.snapshot["time"]), [0, 0])
        day[0] += result.added
        day[1] += 1
    return [(day, added, count) for day, (added, count) in sorted(days.items())]
