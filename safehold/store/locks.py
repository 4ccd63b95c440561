"""Repository locks: shared (backup, restore, check) and exclusive (prune, key removal).

A lock is an object ``locks/<random hex>`` holding JSON (host, machine, pid, kind, time). Its
holder rewrites it every ``refresh_interval`` seconds; a lock not refreshed for ``stale_after``
seconds is stale and ignored (and removed by the next locker), so a killed process or a lost
host never wedges a repository. Locks hold no secrets and are the only objects written twice.

A lock is declared stale early, by its pid being gone, only on the very machine, boot and PID
namespace that wrote it (``machine_identity``): hostnames repeat (containers, cloned VMs,
re-created pods) and pids repeat across PID namespaces, so a hostname and a pid alone say
nothing about whether the holder is alive. A holder that finds its lock gone stops
refreshing it (it never writes it again) and ``verify`` refuses to let it commit.

Acquisition: write our lock, then list all locks; if a live conflicting lock exists, remove ours
and retry until ``wait`` runs out. Writing before looking means two racing lockers both see each
other and at least one backs off.

**Append-only form** (no-delete mode, docs/format.md "Locks"): a lock may not be rewritten or
deleted, so each write is a new object ``locks/<lock id>-<13-digit ms time>``; the newest
object of a lock id is its state, and releasing writes one more with ``"released": true``.
The time in the name makes a stale lock recognisable without loading it. Before writing, such a
locker looks first (so waiting for a conflicting lock leaves nothing behind), then writes and
looks again as above; if it must back off it writes its release. Lockers that may delete remove
the objects of finished and stale locks (and the older objects of live ones) as they go.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from safehold.errors import RepositoryLocked
from safehold.store import ObjectMissing, Store

REFRESH_INTERVAL = 60.0
STALE_AFTER = 300.0


@functools.cache
def machine_identity() -> str:
    """This process's machine as a lock records it: a hash of /etc/machine-id, the kernel's
    boot id and the identity of the PID namespace (so another container, a clone, a reboot or
    another PID namespace is another machine). Empty where none of them can be read, in which
    case no lock is ever taken for one of ours by its pid."""
    parts = []
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            with open(path, "rb") as file:
                parts.append(file.read(256).strip())
        except OSError:
            parts.append(b"")
    try:
        namespace = os.stat("/proc/self/ns/pid")
        parts.append(f"pidns:{namespace.st_dev}:{namespace.st_ino}".encode())
    except OSError:
        parts.append(b"")
    if not any(parts):
        return ""
    return hashlib.blake2b(b"\0".join(parts), digest_size=16).hexdigest()


@dataclass
class LockState:
    """One lock as found in the store: all its objects, its newest document, and whether it
    is live (held by a process that refreshes it)."""

    lock_id: str
    names: list[str]  # every object of this lock, oldest first; the last is its current state
    document: dict | None  # the newest object's JSON (None if not loaded: stale by its name)
    live: bool

    @property
    def name(self) -> str:
        return self.names[-1]


def _parse(name: str) -> tuple[str, int | None]:
    """(lock id, write time in ms) of a lock object name; the time is None for the plain form."""
    key = name.split("/", 1)[1]
    lock_id, _, written = key.partition("-")
    return lock_id, int(written) if written.isdigit() else None


def lock_states(
    store: Store, now: float, stale_after: float = STALE_AFTER, mine: str | None = None
) -> list[LockState]:
    """Every lock in the store, plain or append-only, with whether it is live; the lock id
    ``mine`` (the caller's own) is left out, without a load."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name, _size in list(store.list("locks")):
        lock_id, written = _parse(name)
        if lock_id == mine:
            continue
        groups.setdefault(lock_id, []).append((written if written is not None else -1, name))
    states = []
    for lock_id, entries in groups.items():
        entries.sort()
        names = [name for _, name in entries]
        written = entries[-1][0]
        if written >= 0 and now - written / 1000 > stale_after:
            states.append(LockState(lock_id, names, None, live=False))  # stale by its name
            continue
        try:
            document = json.loads(store.load(names[-1]))
        except (ObjectMissing, ValueError):
            continue  # removed meanwhile, or half-visible: not a lock to respect
        if not isinstance(document, dict):
            continue  # not a lock document at all
        live = not document.get("released") and not is_stale(document, now, stale_after)
        states.append(LockState(lock_id, names, document, live))
    return states


class Lock:
    """A held or to-be-held lock. Use as a context manager.

    ``append_only`` (no-delete mode): never overwrite or delete a lock object (module docstring).
    """

    def __init__(
        self,
        store: Store,
        *,
        exclusive: bool,
        wait: float = 0.0,
        clock: Callable[[], float] = time.time,
        refresh_interval: float = REFRESH_INTERVAL,
        stale_after: float = STALE_AFTER,
        append_only: bool = False,
        held: list[Lock] | None = None,
    ) -> None:
        self.store = store
        self.held = held  # while acquired, this lock is in ``held`` (its repository's list)
        self.exclusive = exclusive
        self.wait = wait
        self.clock = clock
        self.refresh_interval = refresh_interval
        self.stale_after = stale_after
        self.append_only = append_only
        self.lock_id = os.urandom(16).hex()
        self.name = "locks/" + self.lock_id  # the current object (append-only: the newest)
        self._written_ms = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_written: float | None = None  # monotonic time of the last successful write
        self._lapsed = False  # once a gap between writes was long enough to look stale
        self._lost = False  # the refresh found the lock removed: never written again

    def _document(self, **extra: object) -> bytes:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "machine": machine_identity(),
                "pid": os.getpid(),
                "exclusive": self.exclusive,
                "time": self.clock(),
                **extra,
            }
        ).encode()

    def _write(self, **extra: object) -> None:
        """Write the lock: rewrite it (plain form) or add its next object (append-only)."""
        if not self.append_only:
            self.store.save(self.name, self._document(**extra))
            return
        written = max(int(self.clock() * 1000), self._written_ms + 1)
        name = f"locks/{self.lock_id}-{written:013d}"
        self.store.save(name, self._document(**extra))
        self.name, self._written_ms = name, written

    def _conflicts(self) -> list[dict]:
        conflicts = []
        for state in lock_states(self.store, self.clock(), self.stale_after, mine=self.lock_id):
            if state.lock_id == self.lock_id:
                continue
            if not state.live:
                self._remove(state.names)
                continue
            self._remove(state.names[:-1])  # a live append-only lock's older objects
            assert state.document is not None
            if self.exclusive or state.document.get("exclusive"):
                conflicts.append(state.document)
        return conflicts

    def _remove(self, names: list[str]) -> None:
        if self.append_only:
            return  # no-delete mode: leftovers stay until a locker that may delete comes along
        for name in names:
            try:
                self.store.delete(name)
            except ObjectMissing:
                pass

    def acquire(self) -> Lock:
        deadline = time.monotonic() + self.wait
        while True:
            conflicts = self._conflicts() if self.append_only else []  # look before writing
            if not conflicts:
                self._write()
                conflicts = self._conflicts()
                if not conflicts:
                    break
                self._withdraw()
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
        if self.held is not None:
            self.held.append(self)
        return self

    def _withdraw(self) -> None:
        """Give the lock up: delete it, or (append-only) write that it is released."""
        if self.append_only:
            self._write(released=True)
            return
        try:
            self.store.delete(self.name)
        except ObjectMissing:
            pass

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                if not self.store.exists(self.name):
                    # Removed as stale by another process, which may have gone on to delete
                    # data we count on: writing it again would hide that. Stop; verify() fails.
                    self._lost = True
                    return
                self._write()
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
        if self._lost:
            raise RepositoryLocked(
                "no longer by this process: its lock was removed by another process (which "
                "took it for stale), so a prune may have run; nothing was written: run the "
                "command again"
            )
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
        Finished append-only locks (released, or stale by their name) do not count.
        """
        now = self.clock()
        others = [  # any other plain lock (as before), or a live append-only one
            state
            for state in lock_states(self.store, now, self.stale_after)
            if state.lock_id != self.lock_id and (state.live or _parse(state.name)[1] is None)
        ]
        try:
            document = json.loads(self.store.load(self.name))
        except (ObjectMissing, ValueError):
            document = None
        age = now - _number(document.get("time")) if isinstance(document, dict) else None
        if others or age is None or age > self.stale_after / 2:
            raise RepositoryLocked(
                f"by another process: {operation}'s own lock was lost or went stale; it stopped "
                f"before deleting more and the repository is consistent: run {operation} again"
            )

    def release(self) -> None:
        if self.held is not None and self in self.held:
            self.held.remove(self)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._withdraw()

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
    held by a process that no longer exists on this very machine, boot and PID namespace (the
    hostname alone proves nothing: see ``machine_identity``; a lock that names no machine, as
    written by safehold before 0.2, goes stale by time only)."""
    if now - _number(document.get("time")) > stale_after:
        return True
    machine = machine_identity()
    same_machine = (
        bool(machine)
        and document.get("machine") == machine
        and document.get("host") == socket.gethostname()
    )
    pid = document.get("pid")
    return same_machine and isinstance(pid, int) and pid > 0 and _process_gone(pid)


def _number(value: object) -> float:
    """A lock document's time as a number (a hostile or damaged one counts as very old)."""
    return float(value) if isinstance(value, int | float) else 0.0


def list_locks(store: Store, now: float) -> list[dict]:
    """Every lock in the store: its newest document plus ``name`` (its newest object),
    ``names`` (all its objects: one, or several in the append-only form), ``age`` (s) and
    ``stale`` (its holder is gone, or it was released: removable)."""
    found = []
    for state in lock_states(store, now):
        if state.document is None:  # append-only, stale by its name: load it for the report
            try:
                document = json.loads(store.load(state.name))
            except (ObjectMissing, ValueError):
                continue
            if not isinstance(document, dict):
                continue
        else:
            document = state.document
        age = now - _number(document.get("time"))
        found.append(
            dict(document, name=state.name, names=state.names, age=age, stale=not state.live)
        )
    return found
