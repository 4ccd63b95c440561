"""Repository locks: shared (backup, restore, check) and exclusive (prune, key removal).

A lock is an object ``locks/<random hex>`` holding JSON (host, pid, kind, time). Its holder
rewrites it every ``refresh_interval`` seconds; a lock not refreshed for ``stale_after`` seconds
is stale and ignored (and removed by the next locker), so a killed process or a lost host
never wedges a repository. Locks hold no secrets and are the only objects written twice.

Acquisition: write our lock, then list all locks; if a live conflicting lock exists, remove ours
and retry until ``wait`` runs out. Writing before looking means two racing lockers both see each
other and at least one backs off.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable

from safehold.errors import RepositoryLocked
from safehold.store import ObjectMissing, Store

REFRESH_INTERVAL = 60.0
STALE_AFTER = 300.0


class Lock:
    """A held or to-be-held lock. Use as a context manager."""

    def __init__(
        self,
        store: Store,
        *,
        exclusive: bool,
        wait: float = 0.0,
        clock: Callable[[], float] = time.time,
        refresh_interval: float = REFRESH_INTERVAL,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self.store = store
        self.exclusive = exclusive
        self.wait = wait
        self.clock = clock
        self.refresh_interval = refresh_interval
        self.stale_after = stale_after
        self.name = "locks/" + os.urandom(16).hex()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_written: float | None = None  # monotonic time of the last successful write
        self._lapsed = False  # once a gap between writes was long enough to look stale

    def _document(self) -> bytes:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "exclusive": self.exclusive,
                "time": self.clock(),
            }
        ).encode()

    def _conflicts(self) -> list[dict]:
        conflicts = []
        for name, _size in list(self.store.list("locks")):
            if name == self.name:
                continue
            try:
                other = json.loads(self.store.load(name))
            except (ObjectMissing, ValueError):
                continue
            if is_stale(other, self.clock(), self.stale_after):
                try:
                    self.store.delete(name)
                except ObjectMissing:
                    pass
                continue
            if self.exclusive or other.get("exclusive"):
                conflicts.append(other)
        return conflicts

    def acquire(self) -> Lock:
        deadline = time.monotonic() + self.wait
        while True:
            self.store.save(self.name, self._document())
            conflicts = self._conflicts()
            if not conflicts:
                break
            self.store.delete(self.name)
            if time.monotonic() >= deadline:
                holder = conflicts[0]
                kind = (
                    "exclusively" if holder.get("exclusive") else "by a running backup or restore"
                )
                raise RepositoryLocked(
                    f"{kind} (host {holder.get('host')}, pid {holder.get('pid')})"
                )
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        self._last_written = time.monotonic()
        self._thread = threading.Thread(target=self._refresh, name="lock-refresh", daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                self.store.save(self.name, self._document())
            except Exception:
                continue  # the gap grows; verify() notices if it grows too long
            self._note_written()

    def _note_written(self) -> None:
        now = time.monotonic()
        if self._last_written is None or now - self._last_written > self.stale_after / 2:
            self._lapsed = True
        self._last_written = now

    def verify(self) -> None:
        """Raise RepositoryLocked unless this lock was live all along and still exists.

        Call it just before a write that relies on the lock having been respected, e.g. a
        backup's snapshot: if the lock ever went long enough without a refresh to look stale
        to another host, or was removed as stale, an exclusive operation (prune) may have run
        meanwhile and deleted data this process counted on.
        """
        last = self._last_written
        if self._lapsed or last is None or time.monotonic() - last > self.stale_after / 2:
            raise RepositoryLocked(
                "no longer by this process: its lock was not refreshed for minutes, so a prune "
                "may have run; nothing was written: run the command again"
            )
        try:
            self.store.load(self.name)
        except ObjectMissing:
            raise RepositoryLocked(
                "no longer by this process: its lock was removed as stale, so a prune may "
                "have run; nothing was written: run the command again"
            ) from None

    def ensure_exclusive(self, operation: str) -> None:
        """Raise RepositoryLocked unless this lock is still stored, fresh and the only one.

        Exclusive operations call it before each round of deletions: if they stalled so long
        that their lock went stale, a backup may have started meanwhile, so they stop (having
        written everything they need first, the repository is consistent) and are run again.
        """
        others = [name for name, _ in self.store.list("locks") if name != self.name]
        try:
            document = json.loads(self.store.load(self.name))
        except (ObjectMissing, ValueError):
            document = None
        age = self.clock() - document.get("time", 0) if document else None
        if others or age is None or age > self.stale_after / 2:
            raise RepositoryLocked(
                f"by another process: {operation}'s own lock was lost or went stale; it stopped "
                f"before deleting more and the repository is consistent: run {operation} again"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.store.delete(self.name)
        except ObjectMissing:
            pass

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return False


def is_stale(document: dict, now: float, stale_after: float = STALE_AFTER) -> bool:
    """True if a lock's holder is certainly gone: not refreshed for ``stale_after`` seconds, or
    held by a process of this host that no longer exists."""
    if now - document.get("time", 0) > stale_after:
        return True
    same_host = document.get("host") == socket.gethostname()
    return same_host and isinstance(document.get("pid"), int) and _process_gone(document["pid"])


def list_locks(store: Store, now: float) -> list[dict]:
    """Every lock in the store: its document plus ``name``, ``age`` (s) and ``stale``."""
    found = []
    for name, _size in list(store.list("locks")):
        try:
            document = json.loads(store.load(name))
        except (ObjectMissing, ValueError):
            continue
        age = now - document.get("time", 0)
        found.append(dict(document, name=name, age=age, stale=is_stale(document, now)))
    return found
