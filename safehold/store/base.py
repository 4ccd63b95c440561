"""The Store class (one repository location over a borgstore backend) and its error mapping.

Each kind of location (local, sftp, s3) is described by a *target* object with what differs
between them: how to build the borgstore backend, how to map its exceptions to safehold
errors, how to tell whether the location exists, and the recommended pack size and number of
parallel uploads. ``Store`` itself is the same for all of them.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from borgstore.backends import errors as backend_errors
from borgstore.backends._base import BackendBase
from borgstore.store import Store as BorgStoreImpl

from safehold.errors import NoSpace, RepositoryExists, StorageError
from safehold.store.spool import Spooled

MiB = 1024 * 1024

# Nesting levels per namespace: data/ holds up to millions of packs, so it is spread over
# 256 directories (prefixes); everything else is small and flat.
NAMESPACES = {
    "meta/": {"levels": [0]},
    "keys/": {"levels": [0]},
    "data/": {"levels": [1]},
    "index/": {"levels": [0]},
    "snapshots/": {"levels": [0]},
    "drills/": {"levels": [0]},
    "locks/": {"levels": [0]},
}


NAME = re.compile(
    "(?:" + "|".join(re.escape(namespace) for namespace in NAMESPACES) + r")[a-z0-9][a-z0-9_-]*"
)


def check_name(name: str) -> str:
    """``name`` if it is ``namespace/key`` (a known namespace, a lowercase key); else ValueError."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"not a valid object name: {name!r}")
    return name


class ObjectMissing(KeyError):
    """The named object does not exist in the store."""


class TransientStorageError(StorageError):
    """storage error: {message}"""

    # A failure that may go away by itself (a dropped connection, a timeout, a throttled or
    # overloaded server): safehold.store.wrappers.RetryingStore retries these. Any other
    # StorageError is final at once.


class LocationMissing(StorageError):
    """storage error: {message}"""

    # The location itself is not there (no such directory, no such bucket): opening a
    # repository then looks closer to tell "not found" from "not a repository".


class Target(Protocol):
    """What differs between kinds of location (see safehold.store.local, .sftp, .s3)."""

    kind: str  # "local", "sftp", "s3"
    location: str  # as shown in messages: never holds credentials
    pack_size: int  # recommended pack size in bytes
    uploads: int  # recommended number of parallel uploads (each needs its own Store)
    precreate_levels: bool  # create data/00..ff at init (only worth it on a local disk)
    catch: tuple[type[BaseException], ...]  # backend exceptions beyond BackendError/OSError

    def backend(self) -> BackendBase: ...

    def translate(self, error: BaseException, name: str) -> Exception | None: ...

    def exists(self) -> bool: ...

    def is_file(self) -> bool: ...


def one_line(text: object) -> str:
    """``text`` as a single line (error messages are printed on one line)."""
    return " ".join(str(text).split())


def redact(location: str) -> str:
    """``location`` with any password or user:secret pair in a URL replaced by ``***``."""
    if "://" not in location:
        return location
    try:
        parts = urlsplit(location)
    except ValueError:
        return re.sub(r"//[^/]*@", "//***@", location)
    if "@" not in parts.netloc:
        return location
    userinfo, _, host = parts.netloc.rpartition("@")
    if ":" in userinfo or parts.scheme == "s3":
        userinfo = "***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def translate_common(error: BaseException, location: str, name: str = "") -> Exception:
    """Map a borgstore or OS error to a safehold error (or ObjectMissing)."""
    if isinstance(error, backend_errors.ObjectNotFound | FileNotFoundError):
        return ObjectMissing(name)
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(location=location)
    if isinstance(error, backend_errors.QuotaExceeded):
        return NoSpace(location=location)
    if isinstance(error, backend_errors.BackendAlreadyExists):
        return RepositoryExists(location=location)
    if isinstance(error, PermissionError | backend_errors.PermissionDenied):
        return StorageError(f"permission denied on {location} ({name or 'repository'})")
    detail = one_line(error) or type(error).__name__
    return StorageError(f"{location}: {detail}")


class Store:
    """A repository location. See the contract in the docstring of ``safehold.store``."""

    def __init__(self, location: str, impl: BorgStoreImpl, target: Target | None = None) -> None:
        self.location = location
        self.target = target
        self._impl = impl
        self._catch: tuple[type[BaseException], ...] = (
            backend_errors.BackendError,
            OSError,
            EOFError,
            *(target.catch if target else ()),
        )

    @property
    def kind(self) -> str:
        """The kind of location: "local", "sftp" or "s3"."""
        return self.target.kind if self.target else "local"

    @property
    def recommended_pack_size(self) -> int:
        """Pack size (bytes) suited to this backend: 16 MiB on a local disk, 32 MiB remote."""
        return self.target.pack_size if self.target else 16 * MiB

    @property
    def recommended_uploads(self) -> int:
        """How many packs to upload at once; each parallel upload needs its own Store
        (``open_store`` again): borgstore runs one operation at a time per Store."""
        return self.target.uploads if self.target else 1

    def create(self) -> None:
        """Create the location and its namespaces; RepositoryExists if it already holds anything."""
        self._call(self._impl.create)
        if self.target is None or self.target.precreate_levels:
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

    def recover(self) -> None:
        """Get ready to retry after a transient failure: re-establish the backend's connection
        where it keeps one (sftp); nothing for the others."""
        recover = getattr(self._impl.backend, "recover", None)
        if recover is not None:
            with self._impl._lock:  # no other thread sees the connection half-replaced
                self._call(recover)

    def load(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        """The object's bytes (or ``size`` bytes from ``offset``); ObjectMissing if absent."""
        check_name(name)
        return self._call(self._impl.load, name, offset=offset, size=size, name_for_errors=name)

    def load_into(self, name: str, offset: int, size: int, buffer: bytearray) -> memoryview:
        """``size`` bytes from ``offset`` of the object as a view: read into ``buffer`` (at
        least ``size`` long) where the backend can (local), else a view of ``load``'s bytes.
        ObjectMissing if absent."""
        reader = getattr(self._impl.backend, "load_into", None)
        if reader is None:
            return memoryview(self.load(name, offset, size))
        check_name(name)
        return self._call(  # type: ignore[no-any-return]
            lambda: reader(self._impl.find(name), offset, size, buffer), name_for_errors=name
        )

    def save(self, name: str, data: bytes | bytearray | memoryview | Spooled) -> None:
        """Write the object atomically and durably under ``name`` (replacing an existing one).
        ``data`` may be ``Spooled`` (in a temporary file): remote backends read it from there,
        as often as they are retried."""
        if isinstance(data, Spooled) and self.kind == "local":
            data = data.value()
        self._call(self._impl.store, check_name(name), data, name_for_errors=name)

    def delete(self, name: str) -> None:
        """Remove the object; ObjectMissing if absent."""
        self._call(self._impl.delete, check_name(name), name_for_errors=name)

    def discard(self, name: str) -> None:
        """Remove the object if it is there (a retried cleanup finds it gone: same outcome)."""
        try:
            self.delete(name)
        except ObjectMissing:
            pass

    def exists(self, name: str) -> bool:
        """True if the object exists."""
        info = self._call(self._impl.info, check_name(name), name_for_errors=name)
        return bool(info.exists)

    def list(self, namespace: str) -> Iterator[tuple[str, int]]:
        """Yield (name, size) of every object in ``namespace`` (e.g. "data"), in no set order."""
        try:
            for info in self._impl.list(namespace):
                yield f"{namespace}/{info.name}", info.size
        except (backend_errors.ObjectNotFound, FileNotFoundError):
            return  # a namespace that was never written to is empty
        except self._catch as error:
            raise self.translate(error, namespace) from error

    def modified_times(self, namespace: str) -> dict[str, float]:
        """name -> when the object was last written (seconds since the epoch, as the backend's
        clock says) for every object in ``namespace``: prune keeps young packs by it. A
        backend that cannot tell raises StorageError (prune then deletes nothing young or
        old only with ``--keep-young 0``)."""
        find = getattr(self.target, "modified_times", None)
        if find is None:
            raise StorageError(f"{self.location}: cannot tell when objects were written")
        try:
            return {f"{namespace}/{name}": when for name, when in find(namespace)}
        except self._catch as error:
            raise self.translate(error, namespace) from error

    def temporaries(self, min_age_locks: float) -> list[tuple[str, int]]:
        """Temp files that killed writes left behind, as (relative path, size).

        Only meaningful under the exclusive lock (nobody else is writing then), except in
        locks/, where others may be announcing themselves: there only temp files older than
        ``min_age_locks`` seconds count. Backends without temp files (s3) or without a way to
        find them (sftp, for now) report none.
        """
        find = getattr(self.target, "temporaries", None)
        if find is None:
            return []
        try:
            return [
                (relative, size)
                for relative, size, age in find()
                if not relative.startswith("locks") or age > min_age_locks
            ]
        except OSError as error:
            raise self.translate(error, "temporaries") from error

    def remove_temporary(self, relative: str) -> None:
        """Remove one temp file reported by ``temporaries``."""
        try:
            self.target.remove_temporary(relative)  # type: ignore[union-attr]
        except OSError as error:
            raise self.translate(error, relative) from error

    def translate(self, error: BaseException, name: str = "") -> Exception:
        """The safehold error (or ObjectMissing) for a backend exception."""
        if isinstance(error, backend_errors.ObjectNotFound):
            return ObjectMissing(name)
        specific = self.target.translate(error, name) if self.target else None
        translated = specific or translate_common(error, self.location, name)
        if (
            isinstance(error, backend_errors.BackendDoesNotExist)
            and type(translated) is StorageError
        ):
            return LocationMissing(translated.fields["message"])
        return translated

    def _call(self, function: Callable[..., Any], *args: Any, name_for_errors: str = "", **kw: Any):
        try:
            return function(*args, **kw)
        except self._catch as error:
            raise self.translate(error, name_for_errors) from error
