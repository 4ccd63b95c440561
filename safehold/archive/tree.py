"""Navigating snapshot trees: resolve a path, walk entries recursively."""

from __future__ import annotations

import os
from collections.abc import Iterator

from safehold.archive.entries import DIR, decode_tree
from safehold.errors import PathNotInSnapshot
from safehold.repo.repository import Repository


def load_tree(repository: Repository, tree_id: bytes) -> list[dict]:
    return decode_tree(repository.load_blob(tree_id))


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
