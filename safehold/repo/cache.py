"""The local cache: what this machine keeps of a repository so as not to fetch it again.

- The tree cache: sealed tree blobs, so that a backup reads its parent snapshot's trees (and
  ls, diff and restore find their way through a snapshot) without a round trip to the
  repository per directory. Layout: ``<cache root>/<repository id>/trees/<first two hex
  digits>/<blob id hex>``, each file holding the tree blob exactly as sealed in its pack
  (AES-256-GCM, bound to its type and id): the cache reveals nothing the repository does
  not. A cached tree is trusted no more than one read from a pack: it is decrypted,
  authenticated and checked against its id on every use; a file that fails is removed and
  the tree read from the repository again. Blob ids are keyed hashes of the content, so a
  cached tree never goes stale; ``trim`` (at the end of a prune) removes the trees no
  snapshot needs any more, which every backup after a change leaves behind.
  A tree written by a reader process may carry its table (safehold/archive/treetable.py:
  where each entry lies, sealed too) after the blob: ``<sealed tree><sealed table><table
  length, 4 bytes little-endian><"SHTABLE1">``; ``get`` returns the tree alone.
- The object cache (``ObjectCache``): sealed index files and snapshots by name, authenticated
  on use, dropped when the repository's listing no longer has them.
- Key derivation hints (``kdf_hint``): the salt of the key that last opened a remote location.

Deleting the cache is always safe: it only costs time. ``check``, ``repair`` and ``drill``
never use it (``Repository.prove_from_repository``): they exist to prove what the repository
itself holds.

The cache root is ``$SAFEHOLD_CACHE_DIR``, else ``$XDG_CACHE_HOME/safehold``, else
``~/.cache/safehold``; ``SAFEHOLD_CACHE_DIR=off`` turns the cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from safehold.localfile import write_atomically


def cache_off() -> bool:
    """True when ``SAFEHOLD_CACHE_DIR=off``: no tree, object or key-hint cache is used."""
    return os.environ.get("SAFEHOLD_CACHE_DIR") == "off"


def cache_root() -> Path:
    """The directory of safehold's local state (tree cache, check progress, schedules)."""
    configured = os.environ.get("SAFEHOLD_CACHE_DIR")
    if configured and configured != "off":
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "safehold"


TABLE_MARK = b"SHTABLE1"  # ends a cached tree followed by its table
USED_MARK = "last-used"  # in a repository's cache directory: touched when a command uses it
DAY = 86400.0


def mark_used(directory: Path) -> None:
    """Note that a repository's cache ``directory`` is in use (``safehold cache`` tells caches
    of repositories no longer used by it): the mark's time, written at most once a day."""
    mark = directory / USED_MARK
    try:
        if mark.stat().st_mtime > time.time() - DAY:
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    with contextlib.suppress(OSError):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        mark.touch(mode=0o600)
        os.utime(mark)


def repository_caches() -> list[tuple[Path, float]]:
    """(directory, last used) of each repository's cache under ``cache_root()``: the time of
    its ``USED_MARK``, or for a cache without one (made before it existed) the newest
    modification time of the directory and the folders in it."""
    root = cache_root()
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    caches = []
    for name in names:
        directory = root / name
        if len(name) != 32 or not all(c in "0123456789abcdef" for c in name):
            continue  # not a repository id: the schedule's and dashboard's state
        if not directory.is_dir() or directory.is_symlink():
            continue
        try:
            used = (directory / USED_MARK).stat().st_mtime
        except OSError:
            times = [directory.stat().st_mtime]
            with contextlib.suppress(OSError), os.scandir(directory) as entries:
                times += [e.stat(follow_symlinks=False).st_mtime for e in entries]
            used = max(times)
        caches.append((directory, used))
    return caches


class TreeCache:
    """Sealed tree blobs by id, in one directory. Failures to write are ignored (a cache)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._made: set[Path] = set()  # subdirectories known to exist

    @classmethod
    def for_repository(cls, repository_id: str) -> TreeCache | None:
        """The cache of one repository, or None when turned off."""
        if cache_off():
            return None
        mark_used(cache_root() / repository_id)
        return cls(cache_root() / repository_id / "trees")

    def _path(self, blob_id: bytes) -> Path:
        name = blob_id.hex()
        return self.directory / name[:2] / name

    def get(self, blob_id: bytes) -> bytes | None:
        """The sealed blob, or None if it is not cached (or cannot be read)."""
        return self.get_with_table(blob_id)[0]

    def get_with_table(self, blob_id: bytes) -> tuple[bytes | None, bytes | None]:
        """The sealed blob and its sealed table (None if it has none), or (None, None)."""
        try:
            with open(self._path(blob_id), "rb") as handle:
                data = handle.read()
        except OSError:
            return None, None
        if not data.endswith(TABLE_MARK) or len(data) < len(TABLE_MARK) + 4:
            return data, None
        end = len(data) - len(TABLE_MARK) - 4
        length = int.from_bytes(data[end : end + 4], "little")
        if length > end:
            return data, None  # not a table after all: the blob fails its checks, or passes
        return data[: end - length], data[end - length : end]

    def put(
        self,
        blob_id: bytes,
        sealed: bytes | bytearray | memoryview,
        table: bytes | None = None,
    ) -> None:
        """Keep a sealed tree blob. A backup puts thousands, so a put is one exclusive create
        and a write, each of the 256 subdirectories made once: no temporary name, no rename.
        A file seen half-written (a crash, a reader at the same moment) fails authentication
        like any damaged copy and is dropped (``discard``), costing one read of the tree."""
        path = self._path(blob_id)
        try:
            if path.parent not in self._made:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._made.add(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:
            return  # kept already (FileExistsError), or a read-only disk: work on without
        if table is not None:
            sealed = b"".join((sealed, table, len(table).to_bytes(4, "little"), TABLE_MARK))
        try:
            view = memoryview(sealed)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(path)  # a full disk: leave no torn copy behind
        finally:
            os.close(fd)

    def discard(self, blob_id: bytes) -> None:
        """Remove a cached blob that failed its checks."""
        try:
            self._path(blob_id).unlink()
        except OSError:
            pass

    def trim(self, used: Callable[[list[bytes]], list[bool]]) -> tuple[int, int]:
        """Remove the cached trees ``used`` says no snapshot needs (called by prune, which has
        just marked every tree reachable from a snapshot): otherwise every backup's changed
        directories leave their old trees here for good, and the cache outgrows what the
        repository holds. Goes one subdirectory at a time (nothing per tree of the whole cache
        in memory). Returns (trees removed, their bytes). Failures are ignored (a cache)."""
        removed = removed_bytes = 0
        try:
            subdirectories = sorted(os.listdir(self.directory))
        except OSError:
            return 0, 0
        for subdirectory in subdirectories:
            folder = self.directory / subdirectory
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            ids = {}
            for name in names:
                with contextlib.suppress(ValueError):
                    blob_id = bytes.fromhex(name)
                    if len(blob_id) == 32 and name == blob_id.hex():
                        ids[blob_id] = name
            keys = list(ids)
            for blob_id, needed in zip(keys, used(keys), strict=True):
                if needed:
                    continue
                path = folder / ids[blob_id]
                with contextlib.suppress(OSError):
                    size = path.stat().st_size
                    path.unlink()
                    removed, removed_bytes = removed + 1, removed_bytes + size
        return removed, removed_bytes


class ObjectCache:
    """Sealed index files and snapshots of one repository, by name, exactly as stored
    (``<cache root>/<repository id>/index/<hex>``, ``.../snapshots/<hex>``). These objects
    are written once under random names and never changed, only deleted (forget, prune,
    repair), so a copy is either the object or a leftover of one that is gone: ``retain``
    removes the leftovers whenever the repository's own listing of a namespace is at hand.
    A copy is trusted no more than the object: it is authenticated (bound to its name) on
    every use, and one that fails is removed and the repository read instead. Failures to
    read or write are ignored (a cache)."""

    NAMESPACES = ("index", "snapshots", "dirs")

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def for_repository(cls, repository_id: str) -> ObjectCache | None:
        """The object cache of one repository, or None when the cache is off."""
        if cache_off():
            return None
        mark_used(cache_root() / repository_id)
        return cls(cache_root() / repository_id)

    def _path(self, name: str) -> Path | None:
        namespace, _, key = name.partition("/")
        if namespace not in self.NAMESPACES or not key or "/" in key or key.startswith("."):
            return None
        return self.directory / namespace / key

    def get(self, name: str) -> bytes | None:
        """The sealed object, or None if it is not cached (or cannot be read)."""
        path = self._path(name)
        if path is None:
            return None
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def put(self, name: str, sealed: bytes | bytearray | memoryview) -> None:
        """Keep a sealed object (atomically: a reader never sees half a file)."""
        path = self._path(name)
        if path is None:
            return
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not path.exists():
                write_atomically(path, sealed)
        except OSError:
            pass

    def discard(self, name: str) -> None:
        """Remove a cached object (it failed its checks, or the repository lost it)."""
        path = self._path(name)
        if path is not None:
            try:
                path.unlink()
            except OSError:
                pass

    def retain(self, namespace: str, names: set[str]) -> None:
        """Remove the cached objects of ``namespace`` that are not in ``names`` (the
        repository's listing: what forget, prune or repair deleted, or superseded)."""
        try:
            cached = os.listdir(self.directory / namespace)
        except OSError:
            return
        for key in cached:
            if f"{namespace}/{key}" not in names and not key.startswith("."):
                try:
                    os.unlink(self.directory / namespace / key)
                except OSError:
                    pass


# ---------------------------------------------------------------- key derivation hints

KDF_FIELDS = ("kdf", "salt", "time_cost", "memory_cost", "parallelism")


def _kdf_hint_path(location: str) -> Path | None:
    if cache_off():
        return None
    name = hashlib.sha256(location.encode()).hexdigest()[:32]
    return cache_root() / "kdf" / f"{name}.json"


def kdf_hint(location: str) -> dict | None:
    """The Argon2id salt and parameters of the key that last opened the remote repository at
    ``location`` on this machine (no secret: the key file in the repository holds them in
    the clear), so that safehold.cli.prefetch can start deriving before the connection is up.
    None when there is none or the cache is off."""
    path = _kdf_hint_path(location)
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            hint = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return hint if isinstance(hint, dict) else None


def remember_kdf(location: str, document: dict) -> None:
    """Keep the salt and parameters of the key file that opened ``location`` (see
    ``kdf_hint``); only when they changed. Failures are ignored (a cache)."""
    path = _kdf_hint_path(location)
    if path is None:
        return
    hint = {field: document.get(field) for field in KDF_FIELDS}
    if kdf_hint(location) == hint:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, json.dumps(hint).encode())
    except OSError:
        pass
