"""Walking the trees of snapshots: shared by check (verify) and prune (mark what is used).

The walk knows only the tree format (docs/format.md, "Trees"); how a tree blob is found and
loaded, and what "already seen" means, is the caller's business, so check can use the
repository's index and a set while prune uses its own compact table and mark array.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from safehold.archive.entries import DIR
from safehold.errors import IntegrityError


class Seen(Protocol):
    """What the walk needs of its memory of visited trees (a ``set`` will do)."""

    def __contains__(self, tree_id: object) -> bool: ...

    def add(self, tree_id: bytes) -> None: ...


def walk_trees(
    root: bytes,
    load_tree: Callable[[bytes], list[dict]],
    seen: Seen,
    on_error: Callable[[bytes, IntegrityError], None] | None = None,
) -> Iterator[tuple[bytes, list[dict]]]:
    """Yield (tree id, entries) for every tree reachable from ``root`` not yet in ``seen``.

    Depth first; each tree is added to ``seen`` before it is loaded, so sharing ``seen``
    across snapshots visits every tree once. ``load_tree`` returns a tree's entries or raises
    IntegrityError: with ``on_error`` the error is reported and the subtree skipped, without it
    the error propagates (prune must never guess what a tree it cannot read refers to).
    """
    stack = [root]
    while stack:
        tree_id = stack.pop()
        if tree_id in seen:
            continue
        seen.add(tree_id)
        try:
            entries = load_tree(tree_id)
        except IntegrityError as error:
            if on_error is None:
                raise
            on_error(tree_id, error)
            continue
        yield tree_id, entries
        stack.extend(entry["subtree"] for entry in entries if entry["type"] == DIR)


def content_ids(entries: list[dict]) -> Iterator[tuple[dict, bytes]]:
    """Yield (entry, data blob id) for every data blob the entries of one tree list."""
    for entry in entries:
        for blob_id in entry.get("content") or []:
            yield entry, blob_id
