"""Bounded lists of what a backup could not read or a restore could not write.

A backup of a million files it may not read, or a restore of a million files onto a target
that refuses them all, must not keep (and, for a backup, write into the snapshot) a million
paths: the first ``PROBLEMS_NAMED`` are kept with their path and message, the others only
counted (``more``); commands print "... and N more" and their ``--json`` has the count."""

from __future__ import annotations

PROBLEMS_NAMED = 1000


class Problems(list):
    """The first PROBLEMS_NAMED problems ({"path", "message"}); ``more`` counts the rest."""

    def __init__(self, kept: list | None = None, more: int = 0) -> None:
        super().__init__()
        self.more = 0
        self.add(kept or [], more)

    def append(self, problem: dict) -> None:  # type: ignore[override]
        if len(self) < PROBLEMS_NAMED:
            super().append(problem)
        else:
            self.more += 1

    def add(self, problems: list, more: int = 0) -> None:
        """Take ``problems`` (kept while there is room) and ``more`` counted elsewhere."""
        for problem in problems:
            self.append(problem)
        self.more += more

    @property
    def total(self) -> int:
        return len(self) + self.more
