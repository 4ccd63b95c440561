"""Navigating snapshot trees: resolve a path, walk entries recursively."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from safehold.archive.entries import DIR, decode_tree
from safehold.errors import IntegrityError, PathNotInSnapshot
from safehold.repo.repository import Repository, StorePool


def load_tree(repository: Repository, tree_id: bytes) -> list[dict]:
    """A tree's entries; from the local tree cache only while ``repository.use_tree_cache``."""
    return decode_tree(repository.load_tree_blob(tree_id, cached=repository.use_tree_cache))


class TreeLoader:
    """Loads trees ahead of a walk, several at once over a pool of connections (a restore
    from sftp or S3 would otherwise wait one round trip per directory, one after the other).

    ``prefetch`` queues the subtrees of a directory's children as soon as the directory is
    read; ``load`` takes a queued tree (waiting for it) or reads it at once. Every tree is
    authenticated and checked against its id in the worker that reads it, exactly as
    ``load_tree`` does; errors surface from ``load``, in the walk's order. At most ``AHEAD``
    trees are queued or held, so a huge directory does not fill memory with its subtrees.
    """

    AHEAD = 512

    def __init__(self, repository: Repository, readers: StorePool) -> None:
        self.repository = repository
        self.readers = readers
        self._ahead: dict[bytes, Future] = {}
        self._lock = threading.Lock()
        self._pool = (
            ThreadPoolExecutor(readers.size, thread_name_prefix="trees")
            if readers.size > 1
            else None
        )

    def _read(self, tree_id: bytes) -> list[dict]:
        with self.readers.store() as store:
            sealed = self.repository.load_tree_blob(
                tree_id, cached=self.repository.use_tree_cache, store=store
            )
        return decode_tree(sealed)

    def prefetch(self, entries: list[dict]) -> None:
        """Start reading the subtrees of the directories among ``entries``."""
        if self._pool is None:
            return
        with self._lock:
            for entry in entries:
                tree_id = entry.get("subtree") if entry.get("type") == DIR else None
                if tree_id is None or tree_id in self._ahead:
                    continue
                if len(self._ahead) >= self.AHEAD:
                    return
                self._ahead[tree_id] = self._pool.submit(self._read, tree_id)

    def load(self, tree_id: bytes) -> list[dict]:
        """The tree's entries (IntegrityError if it is missing or damaged)."""
        with self._lock:
            future = self._ahead.pop(tree_id, None)
        if future is not None:
            return future.result()
        return self._read(tree_id)

    def close(self) -> None:
        """Stop: queued reads are dropped, running ones finish."""
        with self._lock:
            ahead, self._ahead = self._ahead, {}
        for future in ahead.values():
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def root_entry(tree_id: bytes) -> dict:
    """A synthetic directory entry standing for a snapshot's root."""
    return {"name": b"", "type": DIR, "subtree": tree_id}


def find(repository: Repository, snapshot: dict, path: str) -> dict:
    """Return the entry at absolute ``path`` in the snapshot (the root for '/')."""
    entry = root_entry(snapshot["tree"])
    for part in [p for p in os.fsencode(path).split(b"/") if p]:
        if entry["type"] != DIR:
            raise PathNotInSnapshot(path=path, snapshot=snapshot["id"][:8])
        children = {child["name"]: child for child in load_tree(repository, entry["subtree"])}
        if part not in children:
            raise PathNotInSnapshot(path=path, snapshot=snapshot["id"][:8])
        entry = children[part]
    return entry


def walk(
    repository: Repository,
    entry: dict,
    path: bytes,
    on_error: Callable[[bytes, IntegrityError], None] | None = None,
) -> Iterator[tuple[bytes, dict]]:
    """Yield (path, entry) for ``entry`` and, for directories, everything below it (pre-order).

    Lazily, one tree loaded at a time: what is held is the entries of the directories on the
    current path (an explicit stack, so any depth), never a listing of the whole walk. A tree
    that cannot be read raises IntegrityError; with ``on_error`` it is reported as
    ``on_error(path of its directory, error)`` and the walk goes on beside it."""
    yield path, entry
    stack: list[tuple[bytes, Iterator[dict]]] = []

    def enter(path: bytes, tree_id: bytes) -> None:
        try:
            stack.append((path.rstrip(b"/"), iter(load_tree(repository, tree_id))))
        except IntegrityError as error:
            if on_error is None:
                raise
            on_error(path, error)

    if entry["type"] == DIR:
        enter(path, entry["subtree"])
    while stack:
        base, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            continue
        child_path = base + b"/" + child["name"]
        yield child_path, child
        if child["type"] == DIR:
            enter(child_path, child["subtree"])


class EntryReader(io.RawIOBase):
    """A file entry's content as a readable binary stream, blob by blob (verified), for feeding
    a dump to a restore command without writing it to disk first."""

    def __init__(self, repository: Repository, entry: dict) -> None:
        super().__init__()
        self._repository = repository
        self._blobs = list(entry.get("content") or [])
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:  # type: ignore[no-untyped-def, override]
        while not self._buffer and self._blobs:
            self._buffer = memoryview(self._repository.load_blob(self._blobs.pop(0)))
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count
