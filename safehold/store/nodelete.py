"""A store that refuses every delete: what a repository in no-delete mode is opened with.

The commands that delete already refuse up front with one clear line (NoDeleteMode, exit 26);
this wrapper is the guarantee below them, so that no code path of safehold deletes anything
from such a repository. It does not look before each save (that would cost a round trip per
object): saves never replace an object because every name safehold writes is new (random, or
the hash of the content), and locks are written in their append-only form
(safehold/store/locks.py). It is a client-side promise only: the protection against a
compromised client is on the server (docs/backends.md).
"""

from __future__ import annotations

from safehold.errors import NoDeleteMode
from safehold.store.base import Store
from safehold.store.wrappers import StoreWrapper


class NoDeleteStore(StoreWrapper):
    """Passes everything to ``inner`` except deletes, which raise NoDeleteMode."""

    def __init__(self, inner: Store, reason: str) -> None:
        super().__init__(inner)
        self.reason = reason

    def delete(self, name: str) -> None:
        raise NoDeleteMode(operation=f"deleting {name}", reason=self.reason)

    def discard(self, name: str) -> None:
        self.delete(name)
