"""Navigating snapshot trees: resolve a path, walk entries recursively."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

from safehold.archive.entries import DIR, decode_tree
from safehold.errors import PathNotInSnapshot
from safehold.repo.repository import Repository


def load_tree(repository: Repository, tree_id: bytes) -> list[dict]:
    """A tree's entries; from the local tree cache only while ``repository.browsing``."""
    return decode_tree(repository.load_tree_blob(tree_id, cached=repository.browsing))


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


def walk(repository: Repository, entry: dict, path: bytes) -> Iterator[tuple[bytes, dict]]:
    """Yield (path, entry) for ``entry`` and, for directories, everything below it (pre-order)."""
    yield path, entry
    if entry["type"] == DIR:
        for child in load_tree(repository, entry["subtree"]):
            child_path = path.rstrip(b"/") + b"/" + child["name"]
            yield from walk(repository, child, child_path)


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
