"""Key/value access to a repository location (a path, file://, sftp:// or s3://), on borgstore.

The contract every store keeps, whatever the backend (docs/format.md, "Storage";
tests/test_store_conformance.py checks it against each):

- ``save(name, data)`` is atomic and durable: once it returns, the object is on stable storage
  under its final name, and no reader ever sees a partial object (local and sftp write a temp
  file, fsync it and rename it; an S3 PUT is atomic by itself).
- ``load`` returns exactly what was saved (or the requested range of it); a missing object
  raises ``ObjectMissing``; ``list`` of a namespace never written to is empty.
- objects are immutable: safehold never saves a name twice with different content
  (locks are the one exception: a save replaces them, and they are deleted).
- names are lowercase ASCII ``namespace/hex``; the store knows nothing of encryption.
- failures are safehold errors naming the location (never credentials): ``StorageError``,
  ``NoSpace``, ``RepositoryExists``; ``TransientStorageError`` (a StorageError) marks the
  ones worth retrying, which remote stores do (``safehold.store.wrappers.RetryingStore``).

Locks, caching and encryption live above this layer.
"""

from __future__ import annotations

from safehold.store.lazy import import_borgstore

BorgStoreImpl = import_borgstore().Store

from safehold.errors import StorageError
from safehold.store.base import (
    NAMESPACES,
    LocationMissing,
    ObjectMissing,
    Store,
    Target,
    TransientStorageError,
    redact,
)
from safehold.store.local import DurablePosixFS, file_url
from safehold.store.wrappers import RetryingStore, RetryPolicy, call_with_retries

__all__ = [
    "NAMESPACES",
    "DurablePosixFS",
    "LocationMissing",
    "ObjectMissing",
    "Store",
    "TransientStorageError",
    "location_exists",
    "location_is_file",
    "open_store",
    "parse_location",
    "target",
]

SCHEMES = ("file", "sftp", "s3")
# Used for remote stores and for probing remote locations; tests may swap it.
RETRY_POLICY = RetryPolicy()


def _scheme(location: str) -> str:
    return location.split("://", 1)[0].lower() if "://" in location else "file"


def target(location: str) -> Target:
    """The target (kind, backend, error mapping, probes) for a path or URL.

    The sftp and s3 modules (paramiko, boto3) are imported only when used.
    """
    scheme = _scheme(location)
    if scheme == "file":
        from safehold.store import local

        return local.parse(location)
    if scheme == "sftp":
        from safehold.store import sftp

        return sftp.parse(location)
    if scheme == "s3":
        from safehold.store import s3

        return s3.parse(location)
    raise StorageError(
        f"unsupported repository URL scheme {scheme!r} in {redact(location)}: "
        "use a path, file://, sftp:// or s3://"
    )


def parse_location(location: str) -> str:
    """Return a borgstore-style URL for a plain path or file:// URL (remote URLs unchanged).
    Raises StorageError for unknown schemes or malformed URLs."""
    target(location)
    return file_url(location) if _scheme(location) == "file" else location


def open_store(location: str) -> Store:
    """Return a (not yet opened) Store for a repository location: a path, a file:// URL,
    ``sftp://[user@]host[:port]/path`` or ``s3://BUCKET/PREFIX``. Remote stores retry
    transient failures (RetryingStore)."""
    where = target(location)
    try:
        impl = BorgStoreImpl(backend=where.backend(), config=NAMESPACES)
    except StorageError:
        raise
    except Exception as error:  # building a backend can fail (e.g. an unknown AWS profile)
        raise StorageError(f"{where.location}: {error}") from error
    store = Store(where.location, impl, where)
    if where.kind == "local":
        return store
    return RetryingStore(store, RETRY_POLICY)


def _probe(location: str, question: str) -> bool:
    where = target(location)
    check = where.exists if question == "exists" else where.is_file
    if where.kind == "local":
        return check()
    return call_with_retries(check, "look up the repository", where.location, RETRY_POLICY)


def location_exists(location: str) -> bool:
    """True if the location holds anything at all (used to tell 'not found' apart): locally
    if the path exists; over sftp if the path is a file or a non-empty directory; on S3 if
    any object lies under the prefix."""
    return _probe(location, "exists")


def location_is_file(location: str) -> bool:
    """True if the location is a single file or object (so certainly no repository)."""
    return _probe(location, "is_file")
