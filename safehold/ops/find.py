"""Find: which snapshots hold paths matching a pattern, with size and mtime.

The trees of each snapshot are walked lazily, one directory at a time (the entries of the
directories on the current path are all that is held), and matches are yielded as they are
found, so a caller can print them at once. A damaged tree is reported through ``on_error``
and the walk goes on beside it.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from safehold.archive.entries import DIR
from safehold.archive.tree import load_tree, root_entry
from safehold.errors import IntegrityError, UsageError
from safehold.repo.repository import Repository


@dataclass
class Match:
    """One matching path of one snapshot."""

    snapshot: dict
    path: bytes
    entry: dict


class Pattern:
    """A shell pattern: without '/' it matches an entry's name anywhere (``*.dcm``); with '/'
    the whole absolute path (``/opt/*/db/*``), where ``*`` also matches across '/'."""

    def __init__(self, text: str) -> None:
        if not text:
            raise UsageError("an empty pattern would match nothing: give e.g. '*.dcm'")
        self.text = text
        self._whole = "/" in text
        self._pattern = os.fsencode(text.rstrip("/") if self._whole else text)

    def matches(self, path: bytes, name: bytes) -> bool:
        return fnmatch.fnmatchcase(path if self._whole else name, self._pattern)


def parse_date(text: str) -> float:
    """``2026-11-01``, ``2026-11-01T14:30`` or ``2026-11-01 14:30:15`` (local time) -> epoch."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(
            f"invalid date {text!r}: write YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (local time)"
        ) from None


def find(
    repository: Repository,
    snapshots: Iterable[dict],
    patterns: list[Pattern],
    *,
    newer: float | None = None,
    older: float | None = None,
    on_error: Callable[[dict, bytes, IntegrityError], None] | None = None,
) -> Iterator[Match]:
    """Yield a Match for every entry of ``snapshots`` (in their order, each in walk order) that
    one of ``patterns`` matches and whose mtime is after ``newer`` and before ``older``
    (epoch seconds). Without ``on_error``, a damaged tree raises IntegrityError."""
    newer_ns = None if newer is None else int(newer * 1e9)
    older_ns = None if older is None else int(older * 1e9)
    for snapshot in snapshots:
        for path, entry in _walk(repository, snapshot, on_error):
            mtime = entry.get("mtime", 0)
            if newer_ns is not None and mtime < newer_ns:
                continue
            if older_ns is not None and mtime >= older_ns:
                continue
            if any(pattern.matches(path, entry["name"]) for pattern in patterns):
                yield Match(snapshot, path, entry)


def _walk(
    repository: Repository,
    snapshot: dict,
    on_error: Callable[[dict, bytes, IntegrityError], None] | None,
) -> Iterator[tuple[bytes, dict]]:
    """(path, entry) below the snapshot's root, pre-order, one tree loaded at a time."""
    stack: list[tuple[bytes, Iterator[dict]]] = []

    def enter(path: bytes, tree_id: bytes) -> None:
        try:
            stack.append((path, iter(load_tree(repository, tree_id))))
        except IntegrityError as error:
            if on_error is None:
                raise
            on_error(snapshot, path or b"/", error)

    enter(b"", root_entry(snapshot["tree"])["subtree"])
    while stack:
        base, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            continue
        path = base + b"/" + child["name"]
        yield path, child
        if child["type"] == DIR:
            enter(path, child["subtree"])
