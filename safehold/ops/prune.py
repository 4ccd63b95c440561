"""Prune: delete the data no snapshot needs, repack packs that are mostly unused.

Under the exclusive lock (no backup, restore, check or forget runs meanwhile): mark every blob
reachable from every snapshot, choose one copy of each, then per pack compare used and unused
bytes. In this order, each step durable before the next (docs/format.md, "Prune"):

1. copy the used sealed blobs of the packs chosen for repacking, byte for byte, into new packs;
2. write one new set of index files listing every blob that stays, superseding all old ones;
3. delete the old index files;
4. delete the packs nothing needs any more (empty, repacked, or never indexed).

Then the local tree cache (repo/cache.py) gives up the trees no snapshot needs: each backup
after a change leaves the old trees of its changed directories there, and without this the
cache of a repository backed up daily would grow without bound.

A crash between any two writes leaves a repository whose index covers every snapshot: at
worst duplicate index entries or packs no index lists, which check reports as notes and the
next prune removes.

Memory (docs/performance.md, "Memory at scale"): the BlobTable (50 bytes an index entry) and
temporaries of 8 bytes an entry while planning; freed heap is handed back before repacking.
The repacked blobs' index records are one array of 49 bytes each, made to size; a new pack is
shipped at ``pack.MAX_BLOBS`` blobs (so a pack of tiny blobs does not hold 150,000 Python
objects); the new index files are made one at a time from positions in the table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from safehold.errors import IntegrityError, UsageError
from safehold.ops.prune_table import ENTRY_DTYPE, BlobTable, TreeMarks
from safehold.ops.treewalk import content_ids, walk_trees
from safehold.repo.index_arrays import release_freed_memory
from safehold.repo.pack import MAX_BLOBS, PackBuilder
from safehold.repo.repository import Repository, pack_name, snapshot_problem
from safehold.store.locks import STALE_AFTER, Lock

INDEX_FILE_RECORDS = 65536  # records per new index file (about 3 MiB)
# Packs written less than this long ago are neither deleted nor repacked: defence in depth
# should a backup ever run unseen by the lock (its packs are unreferenced until its snapshot).
KEEP_YOUNG = 4 * 3600.0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_keep_young(text: str) -> float:
    """Parse --keep-young: 0, or a number with a unit s, m, h or d (30m, 4h, 1d) -> seconds."""
    text = text.strip().lower()
    if text == "0":
        return 0.0
    try:
        seconds = float(text[:-1]) * _UNITS[text[-1:]]
        if seconds >= 0:
            return seconds
    except (KeyError, ValueError):
        pass
    raise UsageError(f"--keep-young takes 0 or a duration such as 30m, 4h or 1d, not {text!r}")


@dataclass
class PrunePlan:
    """What prune found and decided; ``done`` is filled in as it carries the plan out."""

    snapshots: int = 0
    blobs_used: int = 0
    packs_total: int = 0
    bytes_total: int = 0
    bytes_used: int = 0  # sealed blobs needed (one copy each)
    bytes_unused: int = 0  # sealed blobs not needed, and packs no index lists
    delete: list[bytes] = field(default_factory=list)  # indexed packs with nothing used
    repack: list[bytes] = field(default_factory=list)
    unindexed: list[bytes] = field(default_factory=list)  # packs no index lists
    temporaries: list[str] = field(default_factory=list)  # temp files of killed writes
    young: list[bytes] = field(default_factory=list)  # would go, but younger than keep_young
    bytes_young: int = 0
    keep_young: float = KEEP_YOUNG
    bytes_temporaries: int = 0
    bytes_delete: int = 0  # file sizes of delete + unindexed
    bytes_repack: int = 0  # file sizes of the packs to repack
    bytes_repack_used: int = 0  # what repacking copies
    bytes_unused_after: int = 0
    dry_run: bool = True
    done: dict[str, int] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.delete or self.repack or self.unindexed or self.temporaries)

    def as_dict(self) -> dict:
        """A JSON-able summary (pack ids in hex)."""
        return {
            "dry_run": self.dry_run,
            "snapshots": self.snapshots,
            "blobs_used": self.blobs_used,
            "packs_total": self.packs_total,
            "bytes_total": self.bytes_total,
            "bytes_used": self.bytes_used,
            "bytes_unused": self.bytes_unused,
            "packs_delete": [p.hex() for p in self.delete],
            "packs_unindexed": [p.hex() for p in self.unindexed],
            "packs_repack": [p.hex() for p in self.repack],
            "packs_young": [p.hex() for p in self.young],
            "bytes_young": self.bytes_young,
            "keep_young": self.keep_young,
            "temporaries": self.temporaries,
            "bytes_temporaries": self.bytes_temporaries,
            "bytes_delete": self.bytes_delete,
            "bytes_repack": self.bytes_repack,
            "bytes_repack_used": self.bytes_repack_used,
            "bytes_unused_after": self.bytes_unused_after,
            "done": self.done,
        }


def prune(
    repository: Repository,
    *,
    max_unused: float | int = 0.05,
    max_repack_size: int | None = None,
    dry_run: bool = False,
    wait: float = 0.0,
    keep_young: float = KEEP_YOUNG,
    progress: Callable[[str], None] | None = None,
    before_changes: Callable[[PrunePlan], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> PrunePlan:
    """Plan and (unless ``dry_run``) carry out a prune; returns the plan with what was done.

    ``max_unused``: a float below 1 is the share of the repository's pack data that may stay
    unused; an int is a number of bytes. ``max_repack_size`` caps the bytes of packs read for
    repacking. Packs written less than ``keep_young`` seconds before ``clock()`` are left as
    they are (the repository's clock: the backend's modification times). Raises
    RepositoryLocked (exit 14) if another process holds the repository
    for longer than ``wait`` seconds, IntegrityError if a tree cannot be read or a snapshot
    needs a blob the index does not list (nothing is changed then).
    """
    report = progress or (lambda message: None)
    young = (keep_young, clock)
    if dry_run:
        return plan_prune(repository, max_unused, max_repack_size, report, young)[0]
    with repository.lock(exclusive=True, wait=wait) as lock:
        plan, table, keep = plan_prune(repository, max_unused, max_repack_size, report, young)
        release_freed_memory()  # the walk's and the plan's temporaries, before repacking
        plan.dry_run = False
        if before_changes is not None:
            before_changes(plan)
        if plan.changes:
            _carry_out(repository, lock, plan, table, keep, report)
        cache = repository.tree_cache
        if cache is not None:
            report("trimming the local tree cache")
            removed, removed_bytes = cache.trim(table.marked)
            plan.done.update(cached_trees_removed=removed, cached_tree_bytes_removed=removed_bytes)
    return plan


# ------------------------------------------------------------------------------ planning


def plan_prune(
    repository: Repository,
    max_unused: float | int,
    max_repack_size: int | None,
    report: Callable[[str], None],
    young: tuple[float, Callable[[], float]] = (KEEP_YOUNG, time.time),
) -> tuple[PrunePlan, BlobTable, np.ndarray]:
    """Mark, choose copies and packs; returns (plan, table, mask of the copies kept).
    ``young``: (seconds, clock): packs written within that time are kept as they are."""
    plan = PrunePlan(keep_young=young[0])
    report("loading index")
    table = BlobTable.load(repository)
    stored = {bytes.fromhex(n.split("/", 1)[1]): size for n, size in repository.store.list("data")}
    report("marking used blobs")
    _mark_snapshots(repository, table, plan)
    packs = len(table.packs)
    pack_of = table.pack.astype(np.int64)
    missing = [table.packs[n] for n in range(packs) if table.packs[n] not in stored]
    if missing:
        raise IntegrityError(
            f"pack {missing[0].hex()} is listed in the index but missing "
            f"({len(missing)} such pack(s)); prune changed nothing: run 'safehold check'"
        )
    # Bytes of blobs per pack, each (pack, offset) once: two index files may list one pack.
    place = (pack_of << 32) | table.offset.astype(np.int64)
    _, first = np.unique(place, return_index=True)
    single = np.zeros(len(table), dtype=bool)
    single[first] = True
    blob_bytes = np.bincount(pack_of[single], weights=table.length[single], minlength=packs)
    keep = _choose_copies(table, pack_of, blob_bytes, single, packs)
    used = np.bincount(pack_of[keep], weights=table.length[keep], minlength=packs)
    unused = blob_bytes - used
    plan.blobs_used = int(keep.sum())
    plan.packs_total = len(stored)
    plan.bytes_total = int(sum(stored.values()))
    plan.bytes_used = int(used.sum())
    too_young = _young_packs(repository, stored, unused, table.packs, young)
    plan.delete = [table.packs[n] for n in range(packs) if used[n] == 0]
    indexed = set(table.packs)
    plan.unindexed = sorted(pack for pack in stored if pack not in indexed)
    plan.young = sorted(p for p in plan.delete + plan.unindexed if p in too_young)
    plan.bytes_young = sum(stored[p] for p in plan.young)
    plan.delete = [p for p in plan.delete if p not in too_young]
    plan.unindexed = [p for p in plan.unindexed if p not in too_young]
    plan.bytes_delete = sum(stored[p] for p in plan.delete + plan.unindexed)
    plan.bytes_unused = int(unused.sum()) + sum(stored[p] for p in plan.unindexed)
    leftovers = repository.store.temporaries(min_age_locks=STALE_AFTER)
    plan.temporaries = [relative for relative, _ in leftovers]
    plan.bytes_temporaries = sum(size for _, size in leftovers)
    allowed = _allowed_unused(max_unused, plan.bytes_used)
    remaining = float(unused[used > 0].sum())
    budget = float("inf") if max_repack_size is None else max_repack_size
    for number in sorted(np.flatnonzero((used > 0) & (unused > 0)), key=lambda n: -unused[n]):
        if remaining <= allowed:
            break
        pack_id = table.packs[number]
        if plan.bytes_repack + stored[pack_id] > budget or pack_id in too_young:
            continue
        plan.repack.append(pack_id)
        plan.bytes_repack += stored[pack_id]
        plan.bytes_repack_used += int(used[number])
        remaining -= unused[number]
    plan.bytes_unused_after = int(remaining)
    return plan, table, keep


def _young_packs(
    repository: Repository,
    stored: dict[bytes, int],
    unused: np.ndarray,
    indexed_packs: list[bytes],
    young: tuple[float, Callable[[], float]],
) -> set[bytes]:
    """The packs prune would touch (unindexed, or with unused blobs) written less than
    ``young[0]`` seconds ago; asks the store for times only when there are such packs."""
    seconds, clock = young
    if seconds <= 0:
        return set()
    indexed = {pack: number for number, pack in enumerate(indexed_packs)}
    candidates = {pack for pack in stored if pack not in indexed or unused[indexed[pack]] > 0}
    if not candidates:
        return set()
    times = repository.store.modified_times("data")
    limit = clock() - seconds
    return {
        pack
        for pack in candidates
        if times.get(pack_name(pack), float("inf")) > limit  # no time known: young
    }


def _allowed_unused(max_unused: float | int, used: int) -> float:
    if isinstance(max_unused, int):
        return float(max_unused)
    if max_unused >= 1:
        return float("inf")
    return used * max_unused / (1 - max_unused)  # so that unused / (used + unused) <= share


def _mark_snapshots(repository: Repository, table: BlobTable, plan: PrunePlan) -> None:
    seen = TreeMarks(table)
    for name in repository.snapshot_names():
        try:
            snapshot = repository.load_object(name)
            problem = snapshot_problem(snapshot)
        except IntegrityError:
            problem = "damaged"
        if problem is not None:  # what it needed is unknown: deleting anything could lose it
            raise IntegrityError(
                f"{name} is {problem}; prune changed nothing: run 'safehold repair snapshots' "
                "(it salvages or removes it), then prune again"
            )
        plan.snapshots += 1
        root = snapshot["tree"]  # type: ignore[index]
        load = lambda tree_id: table.load_tree(repository, tree_id)  # noqa: E731
        for _tree_id, entries in walk_trees(root, load, seen):
            missing = table.mark([blob_id for _entry, blob_id in content_ids(entries)])
            if missing:
                raise IntegrityError(
                    f"{name} needs blob {missing[0].hex()[:16]}, which is not indexed; "
                    "prune changed nothing: run 'safehold check'"
                )


def _choose_copies(
    table: BlobTable, pack_of: np.ndarray, blob_bytes: np.ndarray, single: np.ndarray, packs: int
) -> np.ndarray:
    """One entry per needed blob: the copy in the pack with the largest share of needed
    bytes (so that after an interrupted prune the new, full packs win), ties by pack number."""
    needed = np.flatnonzero(table.used)
    keep = np.zeros(len(table), dtype=bool)
    if not len(needed):
        return keep
    mask = table.used & single
    reach = np.bincount(pack_of[mask], weights=table.length[mask], minlength=packs)
    share = reach / np.maximum(blob_bytes, 1)
    # The table is sorted by id: copies of one blob are neighbours (compared in place, no
    # copy of the needed ids).
    fresh = np.ones(len(table), dtype=bool)
    fresh[1:] = table.ids[1:] != table.ids[:-1]
    group = (np.cumsum(fresh) - 1)[needed]
    del fresh
    order = np.lexsort((pack_of[needed], -share[pack_of[needed]], group))
    firsts = np.concatenate([[True], group[order][1:] != group[order][:-1]])
    keep[needed[order][firsts]] = True
    return keep


# ------------------------------------------------------------------------------ doing


def _carry_out(
    repository: Repository,
    lock: Lock,
    plan: PrunePlan,
    table: BlobTable,
    keep: np.ndarray,
    report: Callable[[str], None],
) -> None:
    done = plan.done
    done.update(packs_written=0, bytes_written=0, blobs_repacked=0, index_files_written=0)
    done.update(index_files_deleted=0, packs_deleted=0, bytes_deleted=0)
    rewrite = bool(plan.delete or plan.repack)
    if rewrite:
        new_entries, new_packs = _repack(repository, plan, table, keep, report)
        report("writing the new index")
        _write_index(repository, plan, table, new_entries, new_packs)
        del new_entries
        lock.ensure_exclusive("prune")
        report("deleting the old index")
        for name in table.index_names:
            repository.store.discard(name)
            done["index_files_deleted"] += 1
    lock.ensure_exclusive("prune")
    report("deleting packs")
    sizes = dict(repository.store.list("data"))
    for pack_id in plan.delete + plan.repack + plan.unindexed:
        name = pack_name(pack_id)
        repository.store.discard(name)
        done["packs_deleted"] += 1
        done["bytes_deleted"] += sizes.get(name, 0)
    done["temporaries_deleted"] = 0
    for relative in plan.temporaries:
        repository.store.remove_temporary(relative)
        done["temporaries_deleted"] += 1


def _repack(
    repository: Repository,
    plan: PrunePlan,
    table: BlobTable,
    keep: np.ndarray,
    report: Callable[[str], None],
) -> tuple[np.ndarray, list[bytes]]:
    """Copy the kept blobs of the packs to repack into new packs; returns their index records
    (ENTRY_DTYPE, 49 bytes each, in one array made to size before the first pack: no Python
    object per blob) and the new packs' ids, which the records number from
    ``len(table.packs)`` on.

    Holds one source pack and the pack being built at a time. Every blob is authenticated and
    checked against its id before it is copied: prune never makes a damaged copy the only one.
    """
    targets = {pack_id: n for n, pack_id in enumerate(table.packs)}
    chosen = np.zeros(len(table.packs), dtype=bool)
    chosen[[targets[pack_id] for pack_id in plan.repack]] = True
    records = np.empty(int(np.count_nonzero(keep & chosen[table.pack])), dtype=ENTRY_DTYPE)
    del chosen
    new_packs: list[bytes] = []
    filled = 0
    pack_size = repository.config["pack_size"]
    # A buffer of a full pack, one largest blob and a header, as the writer's: mapped pages
    # it never fills cost nothing, and it is never grown (a copy of itself) while filled.
    capacity = pack_size + repository.config["chunker"]["max_size"] + pack_size // 4
    builder = PackBuilder(capacity)
    for count, pack_id in enumerate(plan.repack, 1):
        report(f"repacking pack {count} of {len(plan.repack)}")
        positions = np.flatnonzero(keep & (table.pack == targets[pack_id]))
        data = repository.store.load(pack_name(pack_id))
        for position in positions[np.argsort(table.offset[positions])]:
            location = table.location(int(position))
            sealed = data[location.offset : location.offset + location.length]
            blob_id = bytes(table.ids[position]).ljust(32, b"\0")
            repository.open_blob(blob_id, location, sealed)  # raises IntegrityError if damaged
            builder.add(location.blob_type, blob_id, sealed, location.raw_length)
            if len(builder) >= pack_size or len(builder.entries) >= MAX_BLOBS:
                filled = _ship(repository, builder, plan, records, filled, new_packs, table)
                builder = PackBuilder(capacity)
        del data
    filled = _ship(repository, builder, plan, records, filled, new_packs, table)
    assert filled == len(records)
    return records, new_packs


def _ship(
    repository: Repository,
    builder: PackBuilder,
    plan: PrunePlan,
    records: np.ndarray,
    filled: int,
    new_packs: list[bytes],
    table: BlobTable,
) -> int:
    """Store a repacked pack and fill its index records into ``records`` from ``filled`` on
    (its pack numbered after the table's and the new packs before it); returns the position
    after its last record."""
    if not builder.entries:
        return filled
    entries = builder.entries
    pack_id, data = builder.finish(repository.cipher)
    with data:
        repository.store.save(pack_name(pack_id), data)
        plan.done["packs_written"] += 1
        plan.done["bytes_written"] += len(data)
    plan.done["blobs_repacked"] += len(entries)
    rows = records[filled : filled + len(entries)]
    rows["id"] = np.frombuffer(b"".join(e.blob_id for e in entries), dtype="S32")
    rows["pack"] = len(table.packs) + len(new_packs)
    rows["offset"] = [e.offset for e in entries]
    rows["length"] = [e.length for e in entries]
    rows["raw"] = [e.raw_length for e in entries]
    rows["type"] = [e.blob_type for e in entries]
    new_packs.append(pack_id)
    return filled + len(entries)


def _write_index(
    repository: Repository,
    plan: PrunePlan,
    table: BlobTable,
    new_entries: np.ndarray,
    new_packs: list[bytes],
) -> None:
    """Write the index files of everything that stays: all entries of the packs kept (unused
    ones too, so the next prune still sees their unused bytes) and the repacked blobs
    (``new_entries``, numbering ``new_packs`` after the table's packs).

    File by file (``INDEX_FILE_RECORDS`` records each): the rows that stay are positions in
    the table (8 bytes each); each file's records are made from its slice of them (and of the
    repacked ones) alone, so no copy of the whole table is made."""
    numbers = {pack_id: n for n, pack_id in enumerate(table.packs)}
    gone = {numbers[p] for p in plan.delete + plan.repack}
    stays = ~np.isin(table.pack, np.array(sorted(gone), dtype="<u4"))
    rows = np.flatnonzero(stays)
    del stays
    # Each (pack, offset) once, grouped by pack.
    place = (table.pack[rows].astype(np.int64) << 32) | table.offset[rows].astype(np.int64)
    _, first = np.unique(place, return_index=True)
    del place
    rows = rows[first]
    del first
    supersedes = [bytes.fromhex(name.split("/", 1)[1]) for name in table.index_names]
    all_packs = [bytes(p).ljust(32, b"\0") for p in [*table.packs, *new_packs]]
    # The rows kept, then the repacked blobs, cut into files at the same places as if they
    # were one array (the last file of the kept rows is filled up with repacked ones).
    start, total = 0, len(rows) + len(new_entries)
    while start < total:
        end = min(start + INDEX_FILE_RECORDS, total)
        part = rows[start:end]
        extra = new_entries[max(0, start - len(rows)) : max(0, end - len(rows))]
        records = np.empty(len(part) + len(extra), dtype=ENTRY_DTYPE)
        kept = records[: len(part)]
        kept["id"] = table.ids[part]
        kept["pack"] = table.pack[part]
        for name in ("offset", "length", "raw", "type"):
            kept[name] = getattr(table, name)[part]
        records[len(part) :] = extra
        used, local = np.unique(records["pack"], return_inverse=True)
        records["pack"] = local.reshape(-1)
        repository.save_object(
            "index/" + os.urandom(32).hex(),
            {
                "version": 1,
                "packs": [all_packs[n] for n in used.tolist()],
                "records": records.tobytes(),
                "supersedes": supersedes,
            },
        )
        plan.done["index_files_written"] += 1
        start = end
