"""Comparing two snapshot trees: what was added, removed, modified or had metadata changed."""

from __future__ import annotations

from collections.abc import Iterator

from safehold.archive.entries import DIR
from safehold.archive.tree import load_tree
from safehold.repo.repository import Repository

METADATA_FIELDS = ("mode", "uid", "gid", "mtime", "xattrs", "target", "rdev")


def _children(repository: Repository, entry: dict | None) -> dict[bytes, dict]:
    if entry is None or entry["type"] != DIR:
        return {}
    return {child["name"]: child for child in load_tree(repository, entry["subtree"])}


def diff_entries(
    repository: Repository, old: dict | None, new: dict | None, path: bytes
) -> Iterator[tuple[str, bytes, dict]]:
    """Yield (change, path, entry): '+' added, '-' removed, 'M' content, 'T' type, 'U' metadata.

    Identical subtrees (same tree id) are skipped without being read.
    """
    if old is not None and new is not None:
        if old["type"] != new["type"]:
            yield "T", path, new
        elif old["type"] != DIR and (
            old.get("content") != new.get("content") or old.get("size") != new.get("size")
        ):
            yield "M", path, new
        elif any(old.get(key) != new.get(key) for key in METADATA_FIELDS) and path:
            yield "U", path, new
        if old["type"] == DIR and new["type"] == DIR and old["subtree"] == new["subtree"]:
            return
    elif new is not None:
        yield "+", path, new
    elif old is not None:
        yield "-", path, old
    old_children, new_children = _children(repository, old), _children(repository, new)
    for name in sorted(set(old_children) | set(new_children)):
        yield from diff_entries(
            repository, old_children.get(name), new_children.get(name), path + b"/" + name
        )
