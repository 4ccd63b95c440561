"""Key/value access to a repository location (file://, later sftp:// and s3://), built on borgstore.

The contract every store keeps (docs/format.md, "Storage"):

- ``save(name, data)`` is atomic and durable: once it returns, the object is on stable storage
  under its final name, and no reader ever sees a partial object.
- ``load`` returns exactly what was saved; a missing object raises ``ObjectMissing``.
- objects are immutable: safehold never saves a name twice with different content
  (locks are the one exception: they are deleted and written anew).
- names are lowercase ASCII ``namespace/hex``; the store knows nothing of encryption.

Locks, caching and encryption live above this layer.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from borgstore.backends import errors as backend_errors
from borgstore.backends.posixfs import PosixFS
from borgstore.store import Store as BorgStoreImpl

from safehold.errors import NoSpace, RepositoryExists, StorageError

# Nesting levels per namespace: data/ holds up to millions of packs, so it is spread over
# 256 directories; everything else is small and flat.
NAMESPACES = {
    "meta/": {"levels": [0]},
    "keys/": {"levels": [0]},
    "data/": {"levels": [1]},
    "index/": {"levels": [0]},
    "snapshots/": {"levels": [0]},
    "locks/": {"levels": [0]},
}


class ObjectMissing(KeyError):
    """The named object does not exist in the store."""


class DurablePosixFS(PosixFS):
    """borgstore's posixfs backend with the directory entry made durable as well.

    borgstore writes to a temp file, fsyncs it (do_fsync=True) and renames it; a rename is
    only durable once its directory is fsynced too, which we add here.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, do_fsync=True)

    def store(self, name: str, value: bytes) -> None:  # type: ignore[override]
        super().store(name, value)
        directory = os.open(self._validate_join(name).parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _translate(error: BaseException, location: str, name: str = "") -> Exception:
    """Map a backend or OS error to a safehold error (or ObjectMissing)."""
    if isinstance(error, backend_errors.ObjectNotFound | FileNotFoundError):
        return ObjectMissing(name)
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(location=location)
    if isinstance(error, backend_errors.QuotaExceeded):
        return NoSpace(location=location)
    if isinstance(error, backend_errors.BackendAlreadyExists):
        return RepositoryExists(location=location)
    if isinstance(error, PermissionError):
        return StorageError(f"permission denied on {location} ({name or 'repository'})")
    return StorageError(f"{location}: {error}")


class Store:
    """A repository location. See the module docstring for the contract."""

    def __init__(self, location: str, impl: BorgStoreImpl) -> None:
        self.location = location
        self._impl = impl

    def create(self) -> None:
        """Create the location and its namespaces; RepositoryExists if it already holds anything."""
        self._call(self._impl.create)
        self._call(self._impl.create_levels)  # opens and closes the store itself

    def open(self) -> Store:
        """Start using the store (connects where the backend needs it). Returns self."""
        self._call(self._impl.open)
        return self

    def close(self) -> None:
        """Stop using the store."""
        self._call(self._impl.close)

    def __enter__(self) -> Store:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        """The object's bytes (or ``size`` bytes from ``offset``); ObjectMissing if absent."""
        return self._call(self._impl.load, name, offset=offset, size=size, name_for_errors=name)

    def save(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Write the object atomically and durably under ``name``."""
        self._call(self._impl.store, name, data, name_for_errors=name)

    def delete(self, name: str) -> None:
        """Remove the object; ObjectMissing if absent."""
        self._call(self._impl.delete, name, name_for_errors=name)

    def exists(self, name: str) -> bool:
        """True if the object exists."""
        info = self._call(self._impl.info, name, name_for_errors=name)
        return bool(info.exists)

    def list(self, namespace: str) -> Iterator[tuple[str, int]]:
        """Yield (name, size) of every object in ``namespace`` (e.g. "data"), in no set order."""
        try:
            for info in self._impl.list(namespace):
                yield f"{namespace}/{info.name}", info.size
        except (backend_errors.ObjectNotFound, FileNotFoundError):
            return  # a namespace that was never written to is empty
        except (backend_errors.BackendError, OSError) as error:
            raise _translate(error, self.location, namespace) from error

    def _call(self, function, *args, name_for_errors: str = "", **kwargs):  # type: ignore[no-untyped-def]
        try:
            return function(*args, **kwargs)
        except (backend_errors.BackendError, OSError) as error:
            raise _translate(error, self.location, name_for_errors) from error


def parse_location(location: str) -> str:
    """Return a borgstore URL for a plain path or URL. Raises StorageError for unknown schemes."""
    if "://" not in location:
        return "file://" + str(Path(location).expanduser().absolute())
    scheme = urlparse(location).scheme
    if scheme != "file":
        raise StorageError(f"unsupported repository URL scheme {scheme!r} in {location}")
    return location


def open_store(location: str) -> Store:
    """Return a (not yet opened) Store for a repository location: a path or a file:// URL."""
    url = parse_location(location)
    path = unquote(urlparse(url).path)
    impl = BorgStoreImpl(backend=DurablePosixFS(path), config=NAMESPACES)
    return Store(location, impl)


def location_exists(location: str) -> bool:
    """True if a local repository location exists at all (used to tell 'not found' apart)."""
    url = parse_location(location)
    return Path(unquote(urlparse(url).path)).exists()


def location_is_file(location: str) -> bool:
    """True if a local repository location is a regular file (so certainly no repository)."""
    url = parse_location(location)
    return Path(unquote(urlparse(url).path)).is_file()
