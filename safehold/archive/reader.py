"""Reading one file into blobs: chunk, id, hand to the writer. Runs in worker threads."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from safehold.crypto import Cipher
from safehold.memcopy import copy_into
from safehold.repo.format import BLOB_DATA
from safehold.repo.writer import BlobWriter

if TYPE_CHECKING:
    from pyfastcdc import FastCDC

_local = threading.local()


class FileChanged(Exception):
    """The file changed while it was being read."""


def find_holes(fd: int, size: int) -> list[list[int]]:
    """Return [[offset, length], ...] of the holes of a sparse file (empty if not sparse)."""
    holes, position = [], 0
    while position < size:
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:  # only a hole remains
                holes.append([position, size - position])
                break
            return []  # SEEK_DATA not supported: treat as dense
        if data > position:
            holes.append([position, data - position])
        position = os.lseek(fd, data, os.SEEK_HOLE)
    os.lseek(fd, 0, os.SEEK_SET)
    return holes


def open_for_reading(path: bytes) -> int:
    """Open without following links and, where permitted, without touching atime."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        return os.open(path, flags)


READ_BUFFER = 16 * 1024 * 1024


def cut_file(
    fd: int, cdc: FastCDC, max_size: int, buffer_size: int = READ_BUFFER
) -> Iterator[memoryview]:
    """The chunks of an open file, cut exactly where a streaming chunker cuts them, as views
    into one reusable buffer per thread (valid until the next chunk is asked for).

    pyfastcdc's own stream chunker allocates a fresh buffer per file and moves the unread
    rest to its front after every chunk while holding the GIL. Here the buffer is filled with
    ``readv`` (no GIL), cut with ``cut_buf``, and only the chunks that had a full
    ``max_size`` window (or reach the end of the file) are taken: a cut never looks further
    than ``max_size`` bytes, so they are the streaming cuts. The rest (under ``max_size``) is
    moved to the front once per buffer, without the GIL (safehold.memcopy).
    """
    if buffer_size < 3 * max_size:
        raise ValueError("the read buffer must hold at least three largest chunks")
    buffer = getattr(_local, "read_buffer", None)
    if buffer is None or len(buffer) != buffer_size:
        buffer = _local.read_buffer = bytearray(buffer_size)
    view = memoryview(buffer)
    filled, eof = 0, False
    while True:
        while not eof and filled < buffer_size:
            count = os.readv(fd, [view[filled:]])
            eof = count == 0
            filled += count
        taken = 0
        for chunk in cdc.cut_buf(view[:filled]):
            if not eof and filled - chunk.offset < max_size:
                break
            yield chunk.data
            taken = chunk.offset + chunk.length
        if eof:
            return
        rest = filled - taken  # under max_size, and taken >= rest: no overlap
        copy_into(buffer, 0, view[taken:filled])
        filled = rest


class FileReader:
    """Chunks files and stores their blobs. One instance is shared by the worker threads."""

    def __init__(self, cipher: Cipher, writer: BlobWriter, chunker: dict) -> None:
        self.cipher = cipher
        self.writer = writer
        self.chunker = chunker

    def _cdc(self) -> FastCDC:
        # A FastCDC object must not be shared between threads.
        cdc = getattr(_local, "cdc", None)
        if cdc is None or getattr(_local, "cdc_owner", None) is not self:
            from pyfastcdc import FastCDC  # 11 ms of imports: not for a backup with nothing to cut

            cdc = _local.cdc = FastCDC(
                self.chunker["avg_size"],
                min_size=self.chunker["min_size"],
                max_size=self.chunker["max_size"],
                seed=self.cipher.master_key.chunker_seed,
            )
            _local.cdc_owner = self
        return cdc

    def _store(self, data: bytes | memoryview) -> bytes:
        blob_id = self.cipher.blob_id(data)
        self.writer.add(BLOB_DATA, blob_id, data)
        return blob_id

    def read_file(self, path: bytes, entry: dict) -> None:
        """Fill entry["content"] (and "holes") from the file; raises OSError or FileChanged."""
        fd = open_for_reading(path)
        try:
            before = os.fstat(fd)
            if before.st_ino != entry["inode"]:
                raise FileChanged("replaced between listing and reading")
            holes = (
                find_holes(fd, before.st_size) if before.st_blocks * 512 < before.st_size else []
            )
            content = []
            size = 0
            if before.st_size < self.chunker["min_size"]:
                data = os.read(fd, self.chunker["min_size"])
                if data:
                    content.append(self._store(data))
                size = len(data)
            else:
                for data in cut_file(fd, self._cdc(), self.chunker["max_size"]):
                    content.append(self._store(data))
                    size += len(data)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        entry["content"] = content
        entry["size"] = size
        if holes:
            entry["holes"] = holes
        if (after.st_mtime_ns, after.st_size) != (
            before.st_mtime_ns,
            before.st_size,
        ) or size != before.st_size:
            raise FileChanged("changed while being read")

    def read_stream(self, stream) -> tuple[list[bytes], int]:  # type: ignore[no-untyped-def]
        """Chunk any binary stream (a database dump's stdout); returns (blob ids, size)."""
        content, size = [], 0
        for chunk in self._cdc().cut_stream(stream):
            content.append(self._store(chunk.data))
            size += chunk.length
        return content, size
