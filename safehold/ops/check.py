"""Checking a repository: structure always, data on request.

Structure: every index file and snapshot decrypts, every tree of every snapshot loads and
every blob it names is indexed, every indexed pack exists and is long enough. Data
(--read-data): each selected pack is read whole, its BLAKE3 must equal its name, its header
must agree with the index, and every blob must decrypt and match its id.
Packs no index lists are reported as notes, not errors (a backup may have been interrupted).
With max_duration, reading stops after the pack during which the time ran out; the packs read
are remembered in check-progress.json in the local cache, and the next such run resumes there.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from safehold.archive.entries import decode_tree
from safehold.crypto import AuthenticationFailed, key_document_problem
from safehold.errors import IntegrityError, UsageError
from safehold.localfile import write_atomically
from safehold.ops.treewalk import content_ids, walk_trees
from safehold.repo.cache import cache_root
from safehold.repo.format import INDEX_RECORD, MARKER_NAME, MARKER_TEXT
from safehold.repo.index import Location
from safehold.repo.pack import pack_id_of, read_header
from safehold.repo.repository import Repository, pack_name, snapshot_problem
from safehold.store import ObjectMissing


@dataclass
class CheckResult:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    snapshots: int = 0
    trees: int = 0
    blobs_referenced: int = 0
    packs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    complete: bool = True  # False: --max-duration stopped reading, the next run resumes
    packs_selected: int = 0  # packs this round of --read-data covers
    packs_done: int = 0  # of those, read by this run or by the runs it resumes

    @property
    def ok(self) -> bool:
        return not self.errors


def parse_subset(text: str) -> tuple[str, float | tuple[int, int]]:
    """Parse --read-data-subset: 'N%' -> ('percent', N); 'n/t' -> ('slice', (n, t))."""
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if 0 < percent <= 100:
                return "percent", percent
        else:
            n, t = (int(part) for part in text.split("/"))
            if 1 <= n <= t:
                return "slice", (n, t)
    except ValueError:
        pass
    raise UsageError(
        f"--read-data-subset takes N% (0 < N <= 100) or n/t (1 <= n <= t), not {text!r}"
    )


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_max_duration(text: str) -> float:
    """Parse --max-duration: a positive number with a unit s, m or h (30s, 10m, 2h)."""
    try:
        seconds = float(text[:-1]) * _DURATION_UNITS[text[-1:]]
        if seconds > 0:
            return seconds
    except (KeyError, ValueError):
        pass
    raise UsageError(f"--max-duration takes a duration such as 30s, 10m or 2h, not {text!r}")


def progress_path(repository: Repository) -> Path:
    """Where --max-duration keeps the packs read so far: the local cache, per repository."""
    return cache_root() / str(repository.config["id"]) / "check-progress.json"


def _load_progress(path: Path, subset: str | None) -> set[bytes]:
    """The packs already read in this round, if the saved round is for the same subset."""
    try:
        state = json.loads(path.read_text())
        if state.get("subset") != (subset or "all"):
            return set()
        return {bytes.fromhex(pack) for pack in state["done"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()  # no progress, or unreadable: start over


def _save_progress(path: Path, subset: str | None, done: set[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"subset": subset or "all", "done": sorted(pack.hex() for pack in done)}
    write_atomically(path, json.dumps(state))


def select_packs(packs: list[bytes], subset: str | None, rng: random.Random) -> list[bytes]:
    """The packs to read for --read-data (all) or --read-data-subset."""
    if subset is None:
        return packs
    kind, value = parse_subset(subset)
    if kind == "slice":
        n, t = value  # type: ignore[misc]
        return [pack for pack in packs if int.from_bytes(pack[:4], "big") % t == n - 1]
    count = max(1, round(len(packs) * value / 100)) if packs else 0  # type: ignore[operator]
    return rng.sample(packs, count)


def check(
    repository: Repository,
    *,
    read_data: bool = False,
    subset: str | None = None,
    rng: random.Random | None = None,
    progress: Callable[[str], None] | None = None,
    max_duration: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CheckResult:
    """Check the repository; returns the findings (never raises for damage it can name).

    With max_duration (seconds), pack reading stops once that much time (by ``clock``) has
    passed since the start, after the current pack; the next run with max_duration resumes.
    """
    if max_duration is not None and not (read_data or subset):
        raise UsageError("--max-duration limits --read-data or --read-data-subset")
    repository.prove_from_repository()  # never the local caches: check proves the repository
    started = clock()
    result = CheckResult()
    report = progress or (lambda message: None)
    _check_meta(repository, result)
    report("loading index")
    index = _load_index(repository, result)
    stored = dict(repository.store.list("data"))
    indexed_packs = set(index.packs)
    pack_ends: dict[bytes, int] = {}
    for _blob_id, location in index.entries():
        end = location.offset + location.length
        pack_ends[location.pack_id] = max(pack_ends.get(location.pack_id, 0), end)
    for pack_id in indexed_packs:
        name = pack_name(pack_id)
        if name not in stored:
            result.errors.append(f"pack {pack_id.hex()} is listed in the index but missing")
        elif stored[name] < pack_ends.get(pack_id, 0):
            result.errors.append(f"pack {pack_id.hex()} is truncated ({stored[name]} bytes)")
    for name in stored:
        if bytes.fromhex(name.split("/", 1)[1]) not in indexed_packs:
            result.notes.append(
                f"{name} is not referenced by any index (interrupted backup?): "
                "harmless, prune removes it"
            )
    result.packs = len(stored)
    report("checking snapshots")
    _check_snapshots(repository, index, result)
    unindexed = sum(1 for n in stored if bytes.fromhex(n.split("/", 1)[1]) not in indexed_packs)
    lacking = ("which is not indexed", "is not in the index")
    if unindexed and any(text in error for error in result.errors for text in lacking):
        result.errors.append(
            f"{unindexed} pack(s) no index file lists, while snapshots need blobs the index "
            "lacks: an index file is missing or damaged; 'safehold repair index' rebuilds the "
            "index from the packs"
        )
    if read_data or subset:
        _read_packs(
            repository,
            index,
            sorted(indexed_packs & {bytes.fromhex(n[5:]) for n in stored}),
            subset,
            rng or random.Random(),
            result,
            report,
            max_duration,
            clock,
            started,
        )
    return result


def _check_meta(repository: Repository, result: CheckResult) -> None:
    """The format marker and every key file: the marker must read as written at init, and
    every key file must be a key document (only the one that opened the repository can be
    proven further without its passphrase)."""
    try:
        marker = repository.store.load(MARKER_NAME)
    except ObjectMissing:
        marker = None
    if marker != MARKER_TEXT:
        result.errors.append(f"{MARKER_NAME} is damaged or missing (it should be {MARKER_TEXT!r})")
    for name, _size in sorted(repository.store.list("keys")):
        try:
            document = json.loads(repository.store.load(name))
            problem = key_document_problem(document)
        except (ObjectMissing, ValueError):
            problem = "not a key document"
        if problem is not None:
            result.errors.append(f"{name} is damaged ({problem})")


def _load_index(repository: Repository, result: CheckResult):  # type: ignore[no-untyped-def]
    from safehold.repo.index import Index

    index = Index()
    for name in repository.index_names():
        try:
            content = repository.load_index_file(name)
        except IntegrityError as error:
            result.errors.append(
                f"{error.fields['message']} and was skipped; "
                "'safehold repair index' rebuilds it from the packs"
            )
            continue
        index.load_file(content["packs"], content["records"])
    index.finish_loading()
    repository._index = index  # the check's view of the index serves the tree walk below
    return index


def _check_snapshots(repository: Repository, index, result: CheckResult) -> None:  # type: ignore[no-untyped-def]
    seen_trees: set[bytes] = set()
    for name in repository.snapshot_names():
        try:
            snapshot = repository.load_object(name)
        except IntegrityError as error:
            result.errors.append(str(error.fields["message"]))
            continue
        problem = snapshot_problem(snapshot)
        if problem is not None:
            result.errors.append(f"{name} is {problem}")
            continue
        result.snapshots += 1

        def report(tree_id: bytes, error: IntegrityError, name: str = name) -> None:
            result.errors.append(f"{name}: tree {tree_id.hex()[:16]}: {error.fields['message']}")

        load = lambda tree_id: decode_tree(repository.load_blob(tree_id))  # noqa: E731
        for _tree_id, entries in walk_trees(snapshot["tree"], load, seen_trees, report):  # type: ignore[index]
            result.trees += 1
            for entry, blob_id in content_ids(entries):
                result.blobs_referenced += 1
                if index.lookup(blob_id) is None:
                    result.errors.append(
                        f"{name}: {entry['name']!r} needs blob {blob_id.hex()[:16]}, "
                        "which is not indexed"
                    )


def _blobs_by_pack(index, packs: set[bytes]) -> dict[bytes, bytearray]:  # type: ignore[no-untyped-def]
    """The blobs the index lists in each of ``packs``, as index-file records back to back
    (49 bytes a blob, no Python object per blob: about the index's own size again at most)."""
    found: dict[bytes, bytearray] = {}
    for blob_id, location in index.entries():
        if location.pack_id in packs:
            records = found.get(location.pack_id)
            if records is None:
                records = found[location.pack_id] = bytearray()
            records += INDEX_RECORD.pack(blob_id, 0, *location[1:])
    return found


def _read_packs(
    repository: Repository,
    index,
    packs: list[bytes],
    subset: str | None,  # type: ignore[no-untyped-def]
    rng: random.Random,
    result: CheckResult,
    report: Callable[[str], None],
    max_duration: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    started: float = 0.0,
) -> None:
    state_path = progress_path(repository) if max_duration is not None else None
    done = _load_progress(state_path, subset) & set(packs) if state_path else set()
    if done and subset is not None and parse_subset(subset)[0] == "percent":
        # A percentage round: sample only what the earlier runs of this round left to read.
        target = len(select_packs(packs, subset, random.Random(0)))
        rest = [pack for pack in packs if pack not in done]
        selected = rng.sample(rest, max(0, min(len(rest), target - len(done))))
    else:
        selected = [pack for pack in select_packs(packs, subset, rng) if pack not in done]
        target = len(done) + len(selected)
    result.packs_selected = target
    result.packs_done = len(done)
    expected = _blobs_by_pack(index, set(selected))
    for number, pack_id in enumerate(selected, 1):
        if max_duration is not None and number > 1 and clock() - started >= max_duration:
            result.complete = False
            break
        report(f"reading pack {number}")
        done.add(pack_id)
        result.packs_done += 1
        try:
            data = repository.store.load(pack_name(pack_id))
        except ObjectMissing:
            continue  # already reported as missing
        result.packs_read += 1
        result.bytes_read += len(data)
        if pack_id_of(data) != pack_id:
            result.errors.append(
                f"pack {pack_id.hex()} is damaged: its content does not match its name"
            )
        try:
            header = {entry.blob_id: entry for entry in read_header(repository.cipher, data)}
        except (ValueError, AuthenticationFailed) as error:
            result.errors.append(f"pack {pack_id.hex()}: header unreadable ({error})")
            header = {}
        for blob_id, _pack, *place in INDEX_RECORD.iter_unpack(expected.pop(pack_id, b"")):
            location = Location(pack_id, *place)
            listed = header.get(blob_id)
            if header and (listed is None or listed.offset != location.offset):
                result.errors.append(
                    f"pack {pack_id.hex()}: header disagrees with the index "
                    f"for blob {blob_id.hex()[:16]}"
                )
            sealed = data[location.offset : location.offset + location.length]
            try:
                repository.open_blob(blob_id, location, sealed)
            except IntegrityError as error:
                result.errors.append(str(error.fields["message"]))
    if state_path is not None:
        if result.complete:
            state_path.unlink(missing_ok=True)  # the round is done: the next run starts over
        else:
            _save_progress(state_path, subset, done)
