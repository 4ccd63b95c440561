"""Local repositories: a plain path or a file:// URL, on borgstore's posixfs backend."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from borgstore.backends.posixfs import PosixFS

from safehold.store.base import MiB


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
