"""Stores that wrap a store: retries with backoff, and injected faults for tests.

A wrapper has the interface of ``Store`` and passes every call to the store it wraps, adding
one feature. ``open_store`` wraps remote stores in ``RetryingStore``; tests wrap any store in
``FaultyStore`` (under the RetryingStore, to see retries at work) to make the Nth load, save,
list or delete fail, stall, or see corrupted bytes.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from safehold.errors import StorageError
from safehold.store.base import ObjectMissing, Store, TransientStorageError, one_line
from safehold.store.spool import Spooled

log = logging.getLogger("safehold.store")
T = TypeVar("T")


class StoreWrapper(Store):
    """Passes every call to ``inner``; subclasses override what they add to."""

    def __init__(self, inner: Store) -> None:  # no Store.__init__: nothing of our own to hold
        self.inner = inner

    @property
    def location(self) -> str:  # type: ignore[override]
        return self.inner.location

    @property
    def target(self):  # type: ignore[no-untyped-def,override]
        return self.inner.target

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def recommended_pack_size(self) -> int:
        return self.inner.recommended_pack_size

    @property
    def recommended_uploads(self) -> int:
        return self.inner.recommended_uploads

    def create(self) -> None:
        self.inner.create()

    def open(self) -> Store:
        self.inner.open()
        return self

    def close(self) -> None:
        self.inner.close()

    def recover(self) -> None:
        self.inner.recover()

    def load(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        return self.inner.load(name, offset, size)

    def load_into(self, name: str, offset: int, size: int, buffer: bytearray) -> memoryview:
        return memoryview(self.load(name, offset, size))  # through what the wrapper adds

    def save(self, name: str, data: bytes | bytearray | memoryview | Spooled) -> None:
        self.inner.save(name, data)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def list(self, namespace: str) -> Iterator[tuple[str, int]]:
        return self.inner.list(namespace)

    def modified_times(self, namespace: str) -> dict[str, float]:
        return self.inner.modified_times(namespace)

    def temporaries(self, min_age_locks: float) -> list[tuple[str, int]]:
        return self.inner.temporaries(min_age_locks)

    def remove_temporary(self, relative: str) -> None:
        self.inner.remove_temporary(relative)

    def translate(self, error: BaseException, name: str = "") -> Exception:
        return self.inner.translate(error, name)


# ---------------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: ``attempts`` tries in all, waiting
    ``first_delay`` x 2^n seconds (at most ``max_delay``, less a random part up to half)."""

    attempts: int = 6
    first_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        ceiling = min(self.max_delay, self.first_delay * 2 ** (retry - 1))
        return ceiling * random.uniform(0.5, 1.0)


def call_with_retries(
    function: Callable[[], T],
    what: str,
    location: str,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``function()``, retried on TransientStorageError; a clear StorageError once all
    ``policy.attempts`` have failed. Other errors pass at once."""
    started = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return function()
        except TransientStorageError as error:
            detail = one_line(error.fields["message"]).removeprefix(f"{location}: ")
            if attempt == policy.attempts:
                elapsed = time.monotonic() - started
                raise StorageError(
                    f"{location}: {what} failed {attempt} times in {elapsed:.0f} s, "
                    f"giving up: {detail}"
                ) from error
            pause = policy.delay(attempt)
            log.warning(
                "safehold: %s: %s failed (%s); retry %d of %d in %.1f s",
                location,
                what,
                detail,
                attempt,
                policy.attempts - 1,
                pause,
            )
            sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


class RetryingStore(StoreWrapper):
    """Retries operations that failed transiently (TransientStorageError), with exponential
    backoff; after the last attempt a StorageError names the operation, the object, the
    location, how often and for how long it was tried, and the last error.

    ``create`` is not retried (a second attempt would find the half-made location taken).
    A ``delete`` retried after a failure that may have deleted the object already counts a
    missing object as success. ``list`` reads the whole listing before yielding, so that a
    retried listing yields no name twice.
    """

    def __init__(
        self,
        inner: Store,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(inner)
        self.policy = policy or RetryPolicy()
        self.sleep = sleep

    def _retry(self, function: Callable[[], T], what: str) -> T:
        first = True

        def attempt() -> T:
            nonlocal first
            if not first:
                self.inner.recover()
            first = False
            return function()

        return call_with_retries(attempt, what, self.location, self.policy, self.sleep)

    def open(self) -> Store:
        self._retry(self.inner.open, "connect")
        return self

    def load(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        return self._retry(lambda: self.inner.load(name, offset, size), f"load {name}")

    def save(self, name: str, data: bytes | bytearray | memoryview | Spooled) -> None:
        self._retry(lambda: self.inner.save(name, data), f"save {name}")

    def exists(self, name: str) -> bool:
        return self._retry(lambda: self.inner.exists(name), f"look up {name}")

    def list(self, namespace: str) -> Iterator[tuple[str, int]]:
        yield from self._retry(lambda: list(self.inner.list(namespace)), f"list {namespace}")

    def delete(self, name: str) -> None:
        failed_before = False

        def attempt() -> None:
            nonlocal failed_before
            try:
                self.inner.delete(name)
            except ObjectMissing:
                if not failed_before:
                    raise
            except TransientStorageError:
                failed_before = True
                raise

        self._retry(attempt, f"delete {name}")


# ---------------------------------------------------------------------------------- faults

KINDS = ("load", "save", "list", "delete")
ACTIONS = ("fail", "stall", "corrupt")


@dataclass(frozen=True)
class Fault:
    """Make calls ``nth`` .. ``nth + count - 1`` (1-based; count None: every call from the
    nth on) of one ``kind`` (load, save, list, delete) misbehave, counting only the calls
    whose object name (namespace, for list) starts with ``match``:

    - ``fail``: raise ``error`` (default: a TransientStorageError) instead of the call;
    - ``stall``: wait ``seconds``, then make the call;
    - ``corrupt``: load returns, and save stores, the data with one bit flipped in its
      middle; list reports the first object one byte short; delete does nothing and
      returns as if it had deleted.
    """

    kind: str
    nth: int = 1
    action: str = "fail"
    count: int | None = 1
    seconds: float = 0.0
    error: Exception | None = None
    match: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.action not in ACTIONS or self.nth < 1:
            raise ValueError(f"bad fault: {self}")

    def hits(self, call: int) -> bool:
        """True if call number ``call`` (1-based) of this kind is one this fault affects."""
        return call >= self.nth and (self.count is None or call < self.nth + self.count)


def flip_bit(data: bytes | bytearray | memoryview | Spooled) -> bytes:
    """``data`` with the lowest bit of its middle byte flipped (empty data stays empty)."""
    changed = bytearray(data)
    if changed:
        changed[len(changed) // 2] ^= 0x01
    return bytes(changed)


class FaultyStore(StoreWrapper):
    """Injects the given faults; ``calls`` counts the calls per kind, ``injected`` lists
    (kind, call number, action) of every fault that struck. Thread-safe."""

    def __init__(
        self, inner: Store, *faults: Fault, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        super().__init__(inner)
        self.faults = list(faults)
        self.sleep = sleep
        self.calls: Counter[str] = Counter()
        self._counts = [0] * len(self.faults)  # matching calls seen, per fault
        self.injected: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()

    def _strike(self, kind: str, name: str) -> str | None:
        """Count a call; do a fail or stall fault; return "corrupt" if the data must be."""
        with self._lock:
            self.calls[kind] += 1
            call, fault = self.calls[kind], None
            for number, candidate in enumerate(self.faults):
                if candidate.kind == kind and name.startswith(candidate.match):
                    self._counts[number] += 1
                    if fault is None and candidate.hits(self._counts[number]):
                        fault = candidate
            if fault is not None:
                self.injected.append((kind, call, fault.action))
        if fault is None:
            return None
        if fault.action == "fail":
            raise fault.error or TransientStorageError(
                f"{self.location}: injected fault: {kind} {name} (call {call})"
            )
        if fault.action == "stall":
            self.sleep(fault.seconds)
            return None
        return "corrupt"

    def load(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        corrupt = self._strike("load", name)
        data = self.inner.load(name, offset, size)
        return flip_bit(data) if corrupt else data

    def save(self, name: str, data: bytes | bytearray | memoryview | Spooled) -> None:
        corrupt = self._strike("save", name)
        self.inner.save(name, flip_bit(data) if corrupt else data)

    def list(self, namespace: str) -> Iterator[tuple[str, int]]:
        corrupt = self._strike("list", namespace)
        for number, (name, size) in enumerate(self.inner.list(namespace)):
            yield name, (size - 1 if corrupt and number == 0 else size)

    def delete(self, name: str) -> None:
        if self._strike("delete", name) is None:
            self.inner.delete(name)
