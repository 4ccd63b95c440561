"""What the dashboard reads, and how often: platform files, and per repository its snapshot
and drill documents, kept in memory.

A page view never re-reads a repository. A ``RepositoryView`` answers from memory for
``ttl`` seconds; after that the next view lists the snapshot and drill names (one listing
each) and loads only the documents that are new (through the local object cache, like every
command), dropping the ones that are gone. ``invalidate`` (after a job the dashboard ran)
makes the next view list again at once. All access to one repository goes through one lock:
a store connection is not shared between threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from safehold.errors import SafeholdError, UsageError
from safehold.ops.drill_records import DRILLS
from safehold.platform.config import Platform, load_platform
from safehold.repo.repository import Repository
from safehold.store import NAMESPACES

DEFAULT_TTL = 10.0


class RepositoryView:
    """One repository's snapshots and drills, reloaded when its listings change."""

    def __init__(
        self,
        location: str,
        passphrase: Callable[[], bytes],
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.location = location
        self._passphrase = passphrase
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.RLock()
        self._repository: Repository | None = None
        self._snapshots: dict[str, dict] = {}
        self._drills: dict[str, dict] = {}
        self._sorted: tuple[list[dict], list[dict]] = ([], [])
        self._listed_at: float | None = None
        self.loads = 0  # documents loaded so far (tests and the benchmark read it)

    @contextmanager
    def repository(self) -> Iterator[Repository]:
        """The open repository, for this thread alone while the block runs."""
        with self._lock:
            if self._repository is None:
                self._repository = Repository.open(self.location, self._passphrase)
            yield self._repository

    def documents(self) -> tuple[list[dict], list[dict]]:
        """(snapshots, drills), each oldest first, at most ``ttl`` seconds old."""
        with self._lock:
            now = self._clock()
            if self._listed_at is None or now - self._listed_at >= self.ttl:
                self._refresh()
                self._listed_at = now
            return self._sorted

    def invalidate(self) -> None:
        with self._lock:
            self._listed_at = None

    def _refresh(self) -> None:
        with self.repository() as repository:
            names = [name.split("/", 1)[1] for name in repository.snapshot_names()]
            changed = _sync(
                self._snapshots, names, lambda ids: repository.load_snapshots(ids), self
            )
            drill_names: list[str] = []
            if DRILLS in NAMESPACES:
                drill_names = [
                    name.split("/", 1)[1] for name, _ in repository.store.list(DRILLS.rstrip("/"))
                ]

            def load_drills(ids: list[str]) -> list[dict]:
                loaded = repository.load_objects([DRILLS + i for i in ids])
                return [
                    dict(d, id=i) if isinstance(d, dict) else {"id": i}
                    for i, d in zip(ids, loaded, strict=True)
                ]

            changed |= _sync(self._drills, drill_names, load_drills, self)
        if changed or self._listed_at is None:
            self._sorted = (
                sorted(self._snapshots.values(), key=_time),
                sorted(self._drills.values(), key=_time),
            )

    def close(self) -> None:
        with self._lock:
            if self._repository is not None:
                self._repository.close()
                self._repository = None


def _time(document: dict) -> float:
    return document.get("time", 0.0)


def _sync(
    held: dict[str, dict],
    names: list[str],
    load: Callable[[list[str]], list[dict]],
    view: RepositoryView,
) -> bool:
    """Make ``held`` match ``names``: load the new ones, drop the gone. True if it changed."""
    present = set(names)
    gone = [name for name in held if name not in present]
    for name in gone:
        del held[name]
    new = [name for name in names if name not in held]
    for name, document in zip(new, load(new) if new else [], strict=True):
        held[name] = document
    view.loads += len(new)
    return bool(gone or new)


@dataclass
class PlatformEntry:
    """A platform file the dashboard shows, and the repository view it reads."""

    platform: Platform
    view: RepositoryView
    config_path: str
    key: int = 0  # the view's number in URLs (/r/<key>/...)


@dataclass
class Sources:
    """Everything the dashboard shows: the platforms in --config order, one view per
    repository location (platforms sharing a repository share its view)."""

    platforms: list[PlatformEntry] = field(default_factory=list)
    views: list[RepositoryView] = field(default_factory=list)
    state_dir: Path | None = None

    def platform(self, name: str) -> PlatformEntry | None:
        return next((p for p in self.platforms if p.platform.name == name), None)

    def view(self, key: int) -> RepositoryView | None:
        return self.views[key] if 0 <= key < len(self.views) else None

    def close(self) -> None:
        for view in self.views:
            view.close()


def load_sources(
    configs: list[str],
    passphrase: Callable[[], bytes],
    *,
    repo: str | None = None,
    state_dir: Path | None = None,
    ttl: float = DEFAULT_TTL,
) -> Sources:
    """Load the platform files (ConfigError if one is invalid) and make one view per
    repository. Nothing is read from a repository yet. Raises UsageError."""
    import os

    sources = Sources(state_dir=state_dir)
    by_location: dict[str, RepositoryView] = {}
    for config in configs:
        platform = load_platform(config)
        if sources.platform(platform.name) is not None:
            raise UsageError(f"--config {config}: platform {platform.name} is given twice")
        location = repo or platform.repository or os.environ.get("SAFEHOLD_REPO")
        if not location:
            raise UsageError(
                f"--config {config}: no repository: set `repository:` in the platform file"
            )
        if location not in by_location:
            by_location[location] = RepositoryView(location, passphrase, ttl=ttl)
            sources.views.append(by_location[location])
        view = by_location[location]
        sources.platforms.append(
            PlatformEntry(platform, view, str(Path(config).resolve()), sources.views.index(view))
        )
    return sources


def documents_or_error(view: RepositoryView) -> tuple[list[dict], list[dict], str | None]:
    """(snapshots, drills, None), or ([], [], the error's one line) when the repository
    cannot be read: one unreachable repository must not take the other platforms' cards."""
    try:
        snapshots, drills = view.documents()
    except SafeholdError as error:
        return [], [], str(error)
    return snapshots, drills, None
