"""Local repositories: a plain path or a file:// URL, on borgstore's posixfs backend."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from borgstore.backends.errors import BackendMustBeOpen, ObjectNotFound
from borgstore.backends.posixfs import TMP_SUFFIX, PosixFS

from safehold.store.base import MiB

# Objects at least this large (packs) leave the page cache once they are on disk.
DROP_FROM_CACHE = 1 * MiB


class DurablePosixFS(PosixFS):
    """borgstore's posixfs backend with the directory entry made durable as well, and packs
    kept out of the page cache.

    borgstore writes to a temp file, fsyncs it (do_fsync=True) and renames it; a rename is
    only durable once its directory is fsynced too, which we add here.

    A pack is written once and read again only by a restore or a check, so once it is on
    disk its pages are dropped from the page cache (``POSIX_FADV_DONTNEED`` after the
    fsync). That keeps a backup from pushing the platform's own working set out of memory,
    and the kernel reuses the same few pages for every pack: on the reference VM, writing
    1.5 GB of packs cost 6-7 s of kernel time when they stayed cached, 0.7 s when dropped.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, do_fsync=True)

    def _write_to_tempfile(self, path, value, suffix=TMP_SUFFIX, do_fsync=False):  # type: ignore[no-untyped-def, override]
        """borgstore's temp-file write (a new temp file in ``path``, removed again if the
        write fails; returns its Path), plus the page-cache drop of large objects."""
        tmp = tempfile.NamedTemporaryFile(suffix=suffix, dir=path, delete=False)  # noqa: SIM115
        try:
            with tmp as handle:
                handle.write(value)
                handle.flush()
                if do_fsync:
                    os.fsync(handle.fileno())
                    if len(value) >= DROP_FROM_CACHE:  # clean pages now: they can go
                        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except BaseException:
            try:
                os.unlink(tmp.name)
            except OSError:
                pass  # the write's own error is the one to report
            raise
        return Path(tmp.name)

    def load_into(self, name: str, offset: int, size: int, buffer: bytearray) -> memoryview:
        """``load`` of ``size`` bytes from ``offset``, read into ``buffer`` (at least ``size``
        long) instead of a new bytes object: a restore reads every pack range into the same
        few buffers, so freed 16 MiB objects do not pile up in the C heap. A view of what
        was read (shorter at the end of the file)."""
        if not self.opened:
            raise BackendMustBeOpen()
        path = self._validate_join(name)
        self._check_permission(name, "r")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(name) from None
        view, done = memoryview(buffer)[:size], 0
        try:
            while done < size:
                count = os.preadv(fd, [view[done:]], offset + done)
                if not count:
                    break
                done += count
        finally:
            os.close(fd)
        return view[:done]

    def store(self, name: str, value: bytes) -> None:  # type: ignore[override]
        super().store(name, value)
        directory = os.open(self._validate_join(name).parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


@dataclass(frozen=True)
class LocalTarget:
    """A repository directory on a local (or locally mounted) file system."""

    location: str
    path: Path
    kind: str = "local"
    pack_size: int = 16 * MiB
    uploads: int = 1
    precreate_levels: bool = True
    catch: tuple[type[BaseException], ...] = ()

    def backend(self) -> DurablePosixFS:
        """The borgstore backend for this directory."""
        return DurablePosixFS(str(self.path))

    def translate(self, error: BaseException, name: str) -> Exception | None:
        """Nothing beyond the common mapping (safehold.store.base.translate_common)."""
        return None

    def temporaries(self) -> Iterator[tuple[str, int, float]]:
        """(relative path, size, age in seconds) of each temp file a write left behind.

        borgstore writes ``<random>.tmp`` next to the object and renames it; a process killed
        in between leaves the temp file, which ``list`` never shows (its name is not valid).
        """
        now = time.time()
        for namespace in self.path.iterdir() if self.path.is_dir() else ():
            if not namespace.is_dir():
                continue
            for directory in (namespace, *(d for d in namespace.iterdir() if d.is_dir())):
                for entry in os.scandir(directory):
                    if entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        relative = os.path.relpath(entry.path, self.path)
                        yield relative, info.st_size, now - info.st_mtime

    def modified_times(self, namespace: str) -> Iterator[tuple[str, float]]:
        """(key, mtime) of every object in ``namespace`` (its level directories included)."""
        top = self.path / namespace
        if not top.is_dir():
            return
        for directory in (top, *(d for d in top.iterdir() if d.is_dir())):
            for entry in os.scandir(directory):
                if entry.name.endswith(".tmp") or not entry.is_file(follow_symlinks=False):
                    continue
                yield entry.name, entry.stat(follow_symlinks=False).st_mtime

    def remove_temporary(self, relative: str) -> None:
        """Remove one temp file found by ``temporaries`` (gone already: fine)."""
        if not relative.endswith(".tmp") or ".." in relative.split(os.sep):
            raise ValueError(f"not a temporary file: {relative}")
        try:
            (self.path / relative).unlink()
        except FileNotFoundError:
            pass

    def exists(self) -> bool:
        """True if anything exists at the path."""
        return self.path.exists()

    def is_file(self) -> bool:
        """True if the path is a regular file (so certainly no repository)."""
        return self.path.is_file()


def file_url(location: str) -> str:
    """The file:// URL of a plain path (made absolute) or of a file:// URL."""
    if "://" not in location:
        return "file://" + str(Path(location).expanduser().absolute())
    return location


def parse(location: str) -> LocalTarget:
    """The target for a plain path or a file:// URL."""
    path = Path(unquote(urlsplit(file_url(location)).path))
    return LocalTarget(location=location, path=path)
