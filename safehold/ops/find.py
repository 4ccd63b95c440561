"""Find: which snapshots hold paths matching a pattern, with size and mtime.

The trees of each snapshot are walked lazily, one directory at a time (the entries of the
directories on the current path are all that is held), and matches are yielded as they are
found, so a caller can print them at once. A damaged tree is reported through ``on_error``
and the walk goes on beside it.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from safehold.archive import tree
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
        report = None
        if on_error is not None:
            report = lambda path, error, snapshot=snapshot: on_error(snapshot, path or b"/", error)  # noqa: E731
        walk = tree.walk(repository, tree.root_entry(snapshot["tree"]), b"", report)
        for path, entry in itertools.islice(walk, 1, None):
            mtime = entry.get("mtime", 0)
            if newer_ns is not None and mtime < newer_ns:
                continue
            if older_ns is not None and mtime >= older_ns:
                continue
            if any(pattern.matches(path, entry["name"]) for pattern in patterns):
                yield Match(snapshot, path, entry)
