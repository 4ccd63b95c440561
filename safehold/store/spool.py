"""Objects kept in an unnamed temporary file on their way to a remote store.

A pack for an sftp or S3 location is filled, waits for an upload connection, and then takes
that long to send: seconds in all, for 32 MiB, with several packs on their way at once. In
memory each would cost its size in RSS all that time (and paramiko and botocore take bytes
only: a second copy). Packs for a remote location are therefore built in an unnamed temporary
file in the temporary directory (``TMPDIR``; restic does the same with its packs): blobs are
written into it at their place (``write_at``), and the upload reads it back in blocks, as many
times as it is retried. Its pages are the kernel's page cache, which the kernel can write out
and drop under memory pressure, and the file is gone once closed, or when the process dies.
The bytes are sealed blobs and a sealed header: nothing in them is readable without the
repository's key.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from collections.abc import Iterator

import blake3

from safehold.errors import NoSpace, StorageError

BLOCK = 1024 * 1024  # read back a block at a time
DIGEST_BLOCK = 4 * BLOCK  # ... or, for BLAKE3 (threaded), four


def _failed(error: OSError, directory: str | None) -> StorageError:
    where = f"the temporary directory {directory or tempfile.gettempdir()}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(location=where)
    return StorageError(
        f"cannot write a pack to {where} (set TMPDIR to another one): {error.strerror or error}"
    )


class Spooled:
    """The bytes of one object in an unnamed temporary file, until ``close``. ``size`` is
    its length: set by ``of``, or by the writer of the places (``write_at``)."""

    def __init__(self, directory: str | None = None) -> None:
        """A new, empty file in ``directory`` (default: the temporary directory); NoSpace or
        StorageError if none can be made there."""
        self._directory = directory
        try:
            self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (close())
        except OSError as error:
            raise _failed(error, directory) from error
        self.size = 0

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview, directory: str | None = None) -> Spooled:
        """A new file holding ``data``."""
        spooled = cls(directory)
        try:
            spooled.write_at(0, data)
        except BaseException:
            spooled.close()
            raise
        spooled.size = memoryview(data).nbytes
        return spooled

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset`` (threads may write different places at once)."""
        view = memoryview(data).cast("B")
        fd, done = self._file.fileno(), 0
        try:
            while done < len(view):
                done += os.pwrite(fd, view[done:], offset + done)
        except OSError as error:
            raise _failed(error, self._directory) from error

    def __len__(self) -> int:
        return self.size

    def blocks(self, size: int = BLOCK) -> Iterator[bytes]:
        """The bytes from the start, in blocks of ``size`` (each call starts again)."""
        fd = self._file.fileno()
        for offset in range(0, self.size, size):
            block = os.pread(fd, min(size, self.size - offset), offset)
            if not block:
                raise OSError(f"spooled object ends at {offset} of {self.size} bytes")
            yield block

    def digest(self) -> bytes:
        """BLAKE3 of the bytes (a pack's id)."""
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        for block in self.blocks(DIGEST_BLOCK):
            hasher.update(block)
        return hasher.digest()

    def reader(self) -> io.RawIOBase:
        """A new readable, seekable file object over the bytes (at position 0), for a client
        that reads a body itself (botocore)."""
        return _Reader(self._file.fileno(), self.size)

    def value(self) -> bytes:
        """All the bytes in memory, for code that takes nothing else."""
        return b"".join(self.blocks())

    def close(self) -> None:
        """Remove the file (again: harmless)."""
        self._file.close()


class _Reader(io.RawIOBase):
    """Reads a spooled object's file by position (pread), leaving the file itself alone:
    several readers may be in use at once, e.g. a retried upload's and an abandoned one's."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd, self._size, self._position = fd, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        left = max(0, self._size - self._position)
        size = left if size is None or size < 0 else min(size, left)
        if not size:
            return b""
        block = os.pread(self._fd, size, self._position)
        self._position += len(block)
        return block

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def,override]
        block = self.read(len(buffer))
        buffer[: len(block)] = block
        return len(block)
